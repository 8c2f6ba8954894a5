"""The Hugging Face Hub without network: a Hub cache built in a temporary directory (the layout
huggingface_hub reads with HF_HUB_OFFLINE=1) holding a saelab, a SAELens and a sparsify SAE,
loaded with from_pretrained and through `saelab eval hf://...`; push_to_hub against a stand-in
for the Hub API that keeps what it is sent; bad repos."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cache_repo, cli_error, make_sae, randomize

from saelab import SAE, cli
from saelab.io.external import export
from saelab.io.format import SAEFormatError
from saelab.io.hub import HubError, model_card, parse_uri

D, H = 8, 32


def _saes():
    topk = randomize(
        make_sae("topk", d_in=D, d_sae=H, k=4, metadata={"model": "tiny", "layer": 1})
    ).eval()
    lens = randomize(make_sae("relu", d_in=D, d_sae=H, seed=2), seed=2).eval()
    return topk, lens


def test_from_pretrained_reads_each_layout_from_the_cache(offline_hub, tmp_path):
    topk, lens = _saes()
    repo = tmp_path / "repo"
    topk.save(repo / "saelab")
    export(lens, repo / "blocks.1.hook_resid_post", "saelens")
    export(topk, repo / "layers.1", "sparsify")
    cache_repo(offline_hub, "org/saes", repo)
    topk.save(tmp_path / "single")
    cache_repo(offline_hub, "org/single", tmp_path / "single")
    x = torch.randn(30, D)
    for sae_id, original in (
        ("saelab", topk),
        ("blocks.1.hook_resid_post", lens),
        ("layers.1", topk),
    ):
        loaded = SAE.from_pretrained("org/saes", sae_id=sae_id)
        torch.testing.assert_close(loaded.encode(x), original.encode(x))
        torch.testing.assert_close(
            SAE.from_pretrained(f"hf://org/saes/{sae_id}").encode(x), original.encode(x)
        )
    torch.testing.assert_close(SAE.from_pretrained("org/single").encode(x), topk.encode(x))
    torch.testing.assert_close(
        SAE.from_pretrained(str(tmp_path / "single")).encode(x), topk.encode(x)
    )
    assert parse_uri("hf://org/saes/a/b") == ("org/saes", "a/b")


def test_eval_and_report_take_hub_uris(offline_hub, tmp_path, monkeypatch, capsys):
    topk, lens = _saes()
    topk.save(tmp_path / "repo" / "saelab")
    export(lens, tmp_path / "repo" / "blocks.1.hook_resid_post", "saelens")
    export(topk, tmp_path / "repo" / "layers.1", "sparsify")
    cache_repo(offline_hub, "org/saes", tmp_path / "repo")
    np.save(
        tmp_path / "acts.npy", np.random.default_rng(0).normal(size=(3000, D)).astype(np.float32)
    )
    monkeypatch.chdir(tmp_path)
    for sae_id, arch in (
        ("saelab", "topk"),
        ("blocks.1.hook_resid_post", "relu"),
        ("layers.1", "topk"),
    ):
        cli.main(
            [
                "eval",
                f"hf://org/saes/{sae_id}",
                "--activations",
                str(tmp_path / "acts.npy"),
                "--no-progress",
            ]
        )
        out = tmp_path / "runs" / "hub" / f"org--saes--{sae_id}"
        assert json.loads((out / "eval.json").read_text())["n_tokens"] == 3000
        assert f"{arch} d_in=8 d_sae=32" in capsys.readouterr().out
    assert not list((offline_hub).rglob("eval.json"))  # nothing is written into the cache


def test_bad_repos_give_clear_errors(offline_hub, tmp_path, capsys):
    with pytest.raises(HubError, match="not in the local Hugging Face cache.*HF_HUB_OFFLINE=1"):
        SAE.from_pretrained("org/missing")
    topk, _ = _saes()
    topk.save(tmp_path / "repo" / "saelab")
    (tmp_path / "repo" / "notes").mkdir()
    (tmp_path / "repo" / "notes" / "cfg.json").write_text("{}")
    (tmp_path / "repo" / "pickled").mkdir()
    shutil.copy(
        tmp_path / "repo" / "saelab" / "cfg.json", tmp_path / "repo" / "pickled" / "cfg.json"
    )
    torch.save({"W_enc": torch.zeros(D, H)}, tmp_path / "repo" / "pickled" / "sae.safetensors")
    cache_repo(offline_hub, "org/repo", tmp_path / "repo")
    with pytest.raises(
        HubError, match="has no folder blocks.9; its cached SAE folders: notes, pickled, saelab"
    ):
        SAE.from_pretrained("org/repo", sae_id="blocks.9")
    with pytest.raises(
        HubError, match="org/repo holds 3 SAEs in folders, none at its root: pass one as sae_id"
    ):
        SAE.from_pretrained("org/repo")  # the root of a repo of many SAEs
    with pytest.raises(SAEFormatError, match="not an SAE directory saelab can read"):
        SAE.from_pretrained("org/repo", sae_id="notes")
    with pytest.raises(SAEFormatError, match="pickle/torch.save file.*refusing"):
        SAE.from_pretrained("org/repo", sae_id="pickled")
    error = cli_error(capsys, ["eval", "hf://org/missing", "--activations", "x.npy"])
    assert "not in the local Hugging Face cache" in error
    assert "hf://ORG/NAME" in cli_error(capsys, ["eval", "hf://org", "--activations", "x.npy"])
    assert "needs the Hugging Face Hub" in cli_error(
        capsys, ["push", str(tmp_path / "repo" / "saelab"), "org/new"]
    )
    assert "ORG/NAME" in cli_error(
        capsys, ["push", str(tmp_path / "repo" / "saelab"), "just-a-name"]
    )


class StandInHub:
    """The parts of huggingface_hub.HfApi that push_to_hub calls, keeping repos in a folder."""

    def __init__(self, root: Path):
        self.root, self.calls = root, []

    def create_repo(self, repo_id, private=False, exist_ok=False):
        self.calls.append(("create_repo", repo_id, private))
        (self.root / repo_id).mkdir(parents=True, exist_ok=True)

    def upload_folder(self, repo_id, folder_path, path_in_repo="", commit_message=""):
        self.calls.append(("upload_folder", repo_id, path_in_repo, commit_message))
        shutil.copytree(folder_path, self.root / repo_id / path_in_repo, dirs_exist_ok=True)
        return f"https://hub.example/{repo_id}/commit/1"

    def file_exists(self, repo_id, filename):
        return (self.root / repo_id / filename).is_file()

    def upload_file(self, path_or_fileobj, path_in_repo, repo_id, commit_message=""):
        self.calls.append(("upload_file", repo_id, path_in_repo))
        shutil.copy(path_or_fileobj, self.root / repo_id / path_in_repo)


def test_push_to_hub_then_from_pretrained_round_trips(offline_hub, tmp_path):
    topk, _ = _saes()
    run = tmp_path / "run"
    topk.save(run)
    (run / "eval.json").write_text(json.dumps({"nmse": 0.125, "l0": 4.0, "n_tokens": 1000}))
    (run / "zf_plot.png").write_bytes(b"\x89PNG fake")
    (run / "eval_results").mkdir()
    (run / "eval_results" / "absorption.json").write_text("{}")
    hub = StandInHub(tmp_path / "remote")
    url = SAE.load(run).push_to_hub(
        "org/pushed", sae_id="blocks.1.hook_resid_post", private=True, run=run, api=hub
    )
    assert url == "https://hub.example/org/pushed/commit/1"
    assert hub.calls[0] == ("create_repo", "org/pushed", True)
    assert hub.calls[1][:3] == ("upload_folder", "org/pushed", "blocks.1.hook_resid_post")
    assert hub.calls[2] == ("upload_file", "org/pushed", "README.md")  # the repo had no card yet
    folder = tmp_path / "remote" / "org" / "pushed" / "blocks.1.hook_resid_post"
    assert {p.name for p in folder.iterdir()} >= {
        "cfg.json",
        "sae.safetensors",
        "eval.json",
        "zf_plot.png",
        "eval_results",
        "README.md",
    }
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: saelab\n") and "| nmse | 0.1250 |" in card
    assert (
        'SAE.from_pretrained("org/pushed", sae_id="blocks.1.hook_resid_post")' in card
        and "layer: 1" in card
    )
    cache_repo(offline_hub, "org/pushed", tmp_path / "remote" / "org" / "pushed")
    back = SAE.from_pretrained("hf://org/pushed/blocks.1.hook_resid_post")
    x = torch.randn(20, D)
    torch.testing.assert_close(back.encode(x), topk.encode(x))


def test_model_card_of_an_sae_without_a_run():
    sae = make_sae(
        "batchtopk",
        d_in=D,
        d_sae=H,
        k=4,
        metadata={"model": "HuggingFaceTB/SmolLM2-135M", "layer": 3},
    )
    card = model_card(sae, None, "org/x")
    assert "base_model: HuggingFaceTB/SmolLM2-135M" in card and "- batchtopk" in card
    assert "Held-out metrics" not in card and 'SAE.from_pretrained("org/x")' in card


def test_without_network_the_cache_is_used_and_a_miss_says_so(offline_hub, tmp_path, monkeypatch):
    import saelab.io.hub as hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr(
        hub, "_reachable", lambda timeout=3.0: False
    )  # as on a machine without network
    topk, _ = _saes()
    topk.save(tmp_path / "single")
    cache_repo(offline_hub, "org/single", tmp_path / "single")
    x = torch.randn(5, D)
    torch.testing.assert_close(SAE.from_pretrained("org/single").encode(x), topk.encode(x))
    with pytest.raises(
        HubError,
        match="not in the local Hugging Face cache and the Hub cannot be reached "
        r"\(no network\)",
    ):
        SAE.from_pretrained("org/elsewhere")
    with pytest.raises(HubError, match="is not reachable"):
        topk.push_to_hub("org/single")


def test_gemma_scope_from_the_hub_cache_knows_its_model_and_hook(offline_hub, tmp_path):
    release = Path(__file__).parent / "data" / "gemma_scope" / "gemma-scope-2b-pt-res"
    cache_repo(offline_hub, "google/gemma-scope-2b-pt-res", release)
    sae = SAE.from_pretrained(
        "google/gemma-scope-2b-pt-res", sae_id="layer_12/width_16k/average_l0_82"
    )
    meta = sae.cfg.metadata
    assert (meta["model"], meta["layer"], meta["site"]) == ("google/gemma-2-2b", 12, "resid_post")
    with pytest.raises(HubError, match="holds 1 SAEs in folders.*layer_12/width_16k/average_l0_82"):
        SAE.from_pretrained("google/gemma-scope-2b-pt-res")
