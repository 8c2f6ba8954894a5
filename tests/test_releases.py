"""Public releases by name (io/releases.py): ids checked before anything is fetched, each
resolving to its repo folder and the model and hook it belongs to; the releases' own layouts
(the fixtures of tests/test_library_files.py) loaded by name from a Hub cache built offline;
Gemma Scope's canonical choice; the command that fetches what the cache lacks."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import cache_repo
from safetensors.torch import load_file

from saelab import SAE, cli
from saelab.io import hub, releases
from saelab.io.hub import HubError
from saelab.io.releases import RELEASES, ReleaseError, canonical_folder, resolve
from saelab.sources import sae_source

DATA = Path(__file__).parent / "data"
GEMMA = DATA / "gemma_scope" / "gemma-scope-2b-pt-res"
GEMMA_ID = "layer_12/width_16k/average_l0_82"
LLAMA = DATA / "llama_scope" / "Llama3_1-8B-Base-LXR-8x"


@pytest.mark.parametrize("name", RELEASES)
def test_every_release_resolves_its_example(name):
    release = RELEASES[name]
    files = [f"{release.example.rsplit('/', 1)[0]}/average_l0_{l0}/params.npz" for l0 in (9, 90)]
    if release.canonical:
        prefix = release.folder.format(**release.match(release.example))
        folder = canonical_folder(release, prefix, files)
        repo_id, meta = release.repo_id, {"model": release.model}
    else:
        repo_id, folder, meta = resolve(name, release.example)
    assert repo_id == release.repo_id and folder and meta["model"] == release.model
    assert release.model.count("/") == 1


@pytest.mark.parametrize(
    "name, sae_id, pattern",
    [
        (
            "gemma-scope-2b-pt-res",
            "layer_12/width_16k",
            "no SAE id 'layer_12/width_16k'.*look like",
        ),
        ("gemma-scope-2b-pt-res", "layer_40/width_16k/average_l0_82", "layer 40 is not a layer"),
        ("llama_scope_lxr_8x", "l15m_8x", "ids look like 'l15r_8x'"),
        ("llama_scope_lxr_8x", None, "holds many SAEs: pass sae_id, e.g. 'l15r_8x'"),
    ],
)
def test_an_id_the_release_does_not_hold_is_refused_before_any_fetch(name, sae_id, pattern):
    with pytest.raises(ReleaseError, match=pattern):
        SAE.from_pretrained(name, sae_id=sae_id)


def test_the_canonical_sae_has_the_l0_closest_to_100():
    release = RELEASES["gemma-scope-9b-pt-att-canonical"]
    files = [f"layer_27/width_16k/average_l0_{l0}/params.npz" for l0 in (18, 33, 64, 136, 306)]
    files += [f"layer_5/width_16k/average_l0_{l0}/params.npz" for l0 in (50, 98, 150)]
    files += [f"layer_6/width_16k/average_l0_{l0}/params.npz" for l0 in (80, 120)]
    assert canonical_folder(release, "layer_27/width_16k", files).endswith("average_l0_136")
    assert canonical_folder(release, "layer_5/width_16k", files).endswith("average_l0_98")
    with pytest.raises(ReleaseError, match="l0_80 and average_l0_120 are equally close to 100"):
        canonical_folder(release, "layer_6/width_16k", files)
    with pytest.raises(ReleaseError, match="no folder layer_3/width_16k/average_l0_"):
        canonical_folder(release, "layer_3/width_16k", files)


def test_a_release_loads_by_name_from_the_cache_with_its_model_and_hook(offline_hub):
    cache_repo(offline_hub, "google/gemma-scope-2b-pt-res", GEMMA)
    sae = SAE.from_pretrained("gemma-scope-2b-pt-res", sae_id=GEMMA_ID)
    data = load_file(str(DATA / "gemma_scope" / "codes.safetensors"))
    torch.testing.assert_close(sae.encode(data["x"]), data["codes"], rtol=1e-5, atol=1e-5)
    meta = sae.cfg.metadata
    assert (meta["release"], meta["repo_id"], meta["folder"]) == (
        "gemma-scope-2b-pt-res", "google/gemma-scope-2b-pt-res", GEMMA_ID
    )  # fmt: skip
    assert (meta["model"], meta["layer"], meta["site"]) == ("google/gemma-2-2b", 12, "resid_post")
    cache_repo(offline_hub, "fnlp/Llama3_1-8B-Base-LXR-8x", LLAMA)
    llama = SAE.from_pretrained("llama_scope_lxr_8x", sae_id="l15r_8x")
    assert (llama.cfg.metadata["layer"], llama.cfg.metadata["folder"]) == (
        15, "Llama3_1-8B-Base-L15R-8x"
    )  # fmt: skip
    sae, files, out = sae_source(f"gemma-scope-2b-pt-res/{GEMMA_ID}")
    assert files.name == "average_l0_82" and out == Path(
        "runs/hub/gemma-scope-2b-pt-res--layer_12--width_16k--average_l0_82"
    )


def test_canonical_resolves_through_the_repo_listing(offline_hub, monkeypatch):
    cache_repo(offline_hub, "google/gemma-scope-2b-pt-res", GEMMA)
    with pytest.raises(HubError, match="needs the Hub .*hf download google/gemma-scope-2b-pt-res"):
        SAE.from_pretrained("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical")
    listing = [f"layer_12/width_16k/average_l0_{l0}/params.npz" for l0 in (22, 82, 176)]
    monkeypatch.setattr(hub, "list_files", lambda repo_id, what: listing)
    sae = SAE.from_pretrained("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical")
    assert sae.cfg.metadata["folder"] == GEMMA_ID
    assert sae.cfg.metadata["release"] == "gemma-scope-2b-pt-res-canonical"


def test_offline_a_release_not_in_the_cache_fails_with_the_command_that_fetches_it(
    offline_hub, tmp_path
):
    with pytest.raises(
        HubError, match=f"hf download google/gemma-scope-2b-pt-res --include '{GEMMA_ID}/\\*'"
    ):
        SAE.from_pretrained("gemma-scope-2b-pt-res", sae_id=GEMMA_ID)
    other = tmp_path / "other" / "layer_3" / "width_16k" / "average_l0_50"
    shutil.copytree(GEMMA / GEMMA_ID, other)
    cache_repo(offline_hub, "google/gemma-scope-2b-pt-res", tmp_path / "other")
    with pytest.raises(HubError, match="cached SAE folders: layer_3/.*hf download"):
        SAE.from_pretrained("gemma-scope-2b-pt-res", sae_id=GEMMA_ID)


def test_saelab_releases_lists_them(capsys):
    cli.main(["releases"])
    out = capsys.readouterr().out
    assert all(name in out for name in RELEASES)
    cli.main(["releases", "llama_scope"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + sum("llama_scope" in n for n in RELEASES)
    assert releases.table()[0].split()[:2] == ["release", "repo"]


SAELENS_PYTHON = os.environ.get("SAELAB_SAELENS_PYTHON")
DIRECTORY = """import json
from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
print(json.dumps({k: [v.repo_id, v.saes_map] for k, v in get_pretrained_saes_directory().items()}))
"""


@pytest.mark.skipif(not SAELENS_PYTHON, reason="SAELAB_SAELENS_PYTHON (sae-lens 6.54) not set")
def test_the_registry_agrees_with_saelens_own_list():
    run = subprocess.run([SAELENS_PYTHON, "-c", DIRECTORY], capture_output=True, text=True)
    theirs = json.loads(run.stdout)
    checked = 0
    for name, release in RELEASES.items():
        if name not in theirs:
            continue
        repo_id, saes = theirs[name]
        assert repo_id == release.repo_id and release.example in saes, name
        for sae_id, folder in saes.items():
            if release.canonical:  # their choice is ours among the release's folders
                base = theirs[name.removesuffix("-canonical")][1].values()
                prefix = release.folder.format(**release.match(sae_id))
                files = [f"{f}/params.npz" for f in base]
                assert canonical_folder(release, prefix, files) == folder, (name, sae_id)
            else:
                assert resolve(name, sae_id)[1] == folder, (name, sae_id)
            checked += 1
    assert checked > 3000  # 3,181 with sae-lens 6.54
