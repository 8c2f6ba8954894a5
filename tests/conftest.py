import pytest
import torch

from saelab import SAE, SAEConfig


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make_sae(arch="topk", d_in=16, d_sae=64, k=4, **kw) -> SAE:
    if arch in ("relu", "topafa"):
        k = None
    cfg = SAEConfig(arch=arch, d_in=d_in, d_sae=d_sae, k=k, input_scaling=kw.pop("input_scaling", "none"), **kw)
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
    from saelab.sae.batchtopk import update_threshold

    sae.train()
    with torch.no_grad():
        update_threshold(sae, sae.loss(x).smallest_active)
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
