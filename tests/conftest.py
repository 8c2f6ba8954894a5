import shutil
from pathlib import Path

import pytest
import torch

from saelab import SAE, SAEConfig


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """The folder the bad-input tests run in (tests/bad_world.py)."""
    from bad_world import build_world

    return build_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make_sae(arch="topk", d_in=16, d_sae=64, k=4, **kw) -> SAE:
    """A small SAE; settings the architecture does not take (k for relu, aux_k for jumprelu)
    are dropped, so one call serves every architecture."""
    from saelab.sae.architecture import setting_names
    from saelab.sae.registry import architecture

    takes = set(setting_names(architecture(arch).settings))
    settings = {key: value for key, value in {"k": k, **kw}.items() if key in takes}
    if arch == "jumprelu" and settings.get("l0_coefficient") is not None:
        settings.pop("k", None)
    cfg = SAEConfig(
        arch=arch,
        d_in=d_in,
        d_sae=d_sae,
        input_scaling=kw.get("input_scaling", "none"),
        input_scale=kw.get("input_scale", 1.0),
        metadata=kw.get("metadata"),
        **settings,
    )
    return SAE(cfg, seed=0)


def randomize(sae: SAE, seed: int = 1) -> SAE:
    """Give every parameter random values (biases included) so tests exercise all terms."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
    return sae


def estimate_threshold(sae: SAE, x: torch.Tensor) -> SAE:
    """What one training step does to a batchtopk threshold (the loss's smallest kept value,
    then the trainer's update), without changing the parameters; returns sae in eval mode."""
    from saelab.sae.batchtopk import smallest_active, update_threshold

    sae.train()
    with torch.no_grad():
        update_threshold(sae, smallest_active(sae.loss(x).code))
    return sae.eval()


def cli_error(capsys, argv: list[str]) -> str:
    """Run the command line expecting a clean failure: exit status 2, no traceback, and a
    `saelab...: error: ...` line on stderr, which is returned."""
    from saelab import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("saelab") and ": error: " in line]
    assert len(lines) == 1, err
    return lines[0]


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_repo(cache: Path, repo_id: str, folder: Path) -> None:
    """Put `folder`'s files into the Hub cache as repo_id's main revision."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(folder, repo / "snapshots" / COMMIT, dirs_exist_ok=True)


@pytest.fixture()
def offline_hub(tmp_path, monkeypatch):
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads both at import; a process that imported it earlier keeps the old values
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    return cache
