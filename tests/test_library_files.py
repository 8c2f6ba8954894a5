"""Other libraries' SAE directories written by their own code, with the codes their own
encoders gave (tests/data/saelens/make.py: SAELens 6.54, or for the layouts SAELens 6 no longer
writes, by hand in that layout and read back by SAELens's loader; tests/data/sparsify/make.py:
sparsify 1.3.3). saelab must give the same codes, or refuse by name what it cannot read: the
silent misreads of the pre-6 TopK layout, rescale_acts_by_decoder_norm, JumpReLU thresholds at
or below 0 and sparsify's transcoders and groupmax each had one. With SAELAB_SAELENS_PYTHON,
SAELAB_SPARSIFY_PYTHON or SAELAB_DICTIONARY_LEARNING_PYTHON set, saelab's exports are loaded by
that library's own loader."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from saelab import SAE, SAEConfig
from saelab.errors import SaelabError
from saelab.eval.full import full_evaluation, summary_lines
from saelab.io.external import export
from saelab.io.format import SAEFormatError

DATA = Path(__file__).parent / "data" / "saelens"
SPARSIFY = Path(__file__).parent / "data" / "sparsify"
LAYOUTS = {  # folder: the saelab architecture it loads as
    "pre6_topk": "topk",
    "pre6_topk_no_architecture": "topk",
    "pre6_relu_bool_norm": "relu",
    "v6_topk_rescaled": "topk",
    "v6_jumprelu_metadata": "jumprelu",
    "v6_standard_expected_average": "relu",
    "v6_gated_no_b_dec_input": "gated",
}


@pytest.mark.parametrize("folder, arch", LAYOUTS.items())
def test_codes_equal_saelens_own(folder, arch):
    sae = SAE.load_any(DATA / folder)
    x = load_file(str(DATA / folder / "x.safetensors"))["x"]
    want = load_file(str(DATA / folder / "codes.safetensors"))["codes"]
    assert sae.cfg.arch == arch
    torch.testing.assert_close(sae.encode(x), want, rtol=1e-5, atol=1e-5)


def test_the_model_and_hook_are_read_from_saelens_6_metadata():
    meta = SAE.load_any(DATA / "v6_jumprelu_metadata").cfg.metadata
    assert (meta["model_name"], meta["hook_name"]) == ("gpt2", "blocks.8.hook_resid_pre")
    meta = SAE.load_any(DATA / "v6_standard_expected_average").cfg.metadata
    assert meta["saelens_normalize_activations"] == "expected_average_only_in"


def test_a_rescaled_topk_loads_with_unit_decoder_rows():
    sae = SAE.load_any(DATA / "v6_topk_rescaled")
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(sae.cfg.d_sae))


@pytest.mark.parametrize(
    "change, pattern",
    [
        ({"transcode": True}, "sparsify transcoders \\(transcode: true\\) are not supported"),
        ({"activation": "groupmax"}, "sparsify activation 'groupmax' is not supported"),
        ({"skip_connection": True}, "skip connection"),
    ],
)
def test_sparsify_layouts_it_cannot_read_are_refused_by_name(tmp_path, change, pattern):
    export(
        SAE(SAEConfig(arch="topk", d_in=8, d_sae=16, k=2, input_scaling="none")),
        tmp_path,
        "sparsify",
    )
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(SAEFormatError, match=pattern):
        SAE.load_any(tmp_path)


def test_a_tensor_saelab_does_not_understand_is_refused_by_name(tmp_path):
    shutil.copytree(DATA / "pre6_topk", tmp_path / "sae")
    weights = tmp_path / "sae" / "sae_weights.safetensors"
    save_file({**load_file(str(weights)), "scaling_factor": torch.full((48,), 2.0)}, str(weights))
    with pytest.raises(SAEFormatError, match="does not understand .*: scaling_factor"):
        SAE.load_any(tmp_path / "sae")
    save_file({**load_file(str(weights)), "scaling_factor": torch.ones(48)}, str(weights))
    SAE.load_any(tmp_path / "sae")  # ones: the identity, nothing lost


def test_the_hook_point_goes_both_ways(tmp_path):
    cfg = SAEConfig(
        arch="topk", d_in=8, d_sae=16, k=2, input_scaling="none",
        metadata={"model": "gpt2", "layer": 8, "site": "resid_pre"},
    )  # fmt: skip
    export(SAE(cfg, seed=0), tmp_path, "saelens")
    written = json.loads((tmp_path / "cfg.json").read_text())
    assert (written["model_name"], written["hook_name"]) == ("gpt2", "blocks.8.hook_resid_pre")
    meta = SAE.load_any(tmp_path).cfg.metadata
    assert (meta["model"], meta["layer"], meta["site"]) == ("gpt2", 8, "resid_pre")
    meta = SAE.load_any(DATA / "v6_jumprelu_metadata").cfg.metadata
    assert (meta["model"], meta["layer"], meta["site"]) == ("gpt2", 8, "resid_pre")


def assert_their_loader_agrees(sae, fmt: str, python: str, script: str, tmp_path) -> None:
    """Export `sae` as `fmt`, encode the same inputs with `script` (the library's own loader)
    in `python`, and compare the codes with saelab's."""
    export(sae, tmp_path / "sae", fmt)
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(2))
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    args = [tmp_path / "sae", tmp_path / "x.safetensors", tmp_path / "codes.safetensors"]
    subprocess.run([python, "-c", script, *map(str, args)], check=True)
    theirs = load_file(str(tmp_path / "codes.safetensors"))["codes"]
    torch.testing.assert_close(theirs, sae.encode(x), rtol=1e-5, atol=1e-5)


SAELENS_PYTHON = os.environ.get("SAELAB_SAELENS_PYTHON")
LOAD_WITH_SAELENS = """
import sys, torch
from safetensors.torch import load_file, save_file
from sae_lens import SAE
sae = SAE.load_from_disk(sys.argv[1])
x = load_file(sys.argv[2])["x"]
with torch.no_grad():
    save_file({"codes": sae.encode(x).contiguous()}, sys.argv[3])
"""


@pytest.mark.skipif(
    not SAELENS_PYTHON,
    reason="set SAELAB_SAELENS_PYTHON to a python with sae-lens 6.54 (the environment of "
    "tests/data/saelens/make.py) to load saelab's exports with SAELens's own loader",
)
@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu", "gated"])
def test_saelens_own_loader_reads_the_export_with_equal_codes(tmp_path, arch):
    settings = {"k": 3} if arch in ("topk", "batchtopk", "jumprelu") else {}
    sae = SAE(SAEConfig(arch=arch, d_in=8, d_sae=24, input_scaling="none", **settings), seed=0)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
        if arch == "batchtopk":
            sae.threshold.fill_(0.05)
    sae.eval()
    assert_their_loader_agrees(sae, "saelens", SAELENS_PYTHON, LOAD_WITH_SAELENS, tmp_path)


def test_an_untrained_dictionary_learning_batchtopk_says_so_at_load_time(tmp_path):
    sae = SAE(SAEConfig(arch="batchtopk", d_in=8, d_sae=16, k=2, input_scaling="none"), seed=0)
    export(sae, tmp_path, "dictionary_learning")  # no threshold yet: written as -1, as theirs
    with pytest.warns(UserWarning, match="no inference threshold .* cannot encode in eval mode"):
        loaded = SAE.load_any(tmp_path)
    with pytest.raises(SaelabError, match="no inference threshold"):
        loaded.encode(torch.randn(4, 8))


def test_codes_equal_sparsify_own():
    sae = SAE.load_any(SPARSIFY / "topk")
    x = load_file(str(SPARSIFY / "topk" / "x.safetensors"))["x"]
    want = load_file(str(SPARSIFY / "topk" / "codes.safetensors"))["codes"]
    torch.testing.assert_close(sae.encode(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "folder, pattern",
    [("transcoder", "transcoders \\(transcode: true\\)"), ("groupmax", "activation 'groupmax'")],
)
def test_sparsify_files_saelab_cannot_read_are_refused_by_name(folder, pattern):
    with pytest.raises(SAEFormatError, match=pattern):
        SAE.load_any(SPARSIFY / folder)


SPARSIFY_PYTHON = os.environ.get("SAELAB_SPARSIFY_PYTHON")
LOAD_WITH_SPARSIFY = """
import sys, torch
from safetensors.torch import load_file, save_file
from sparsify import SparseCoder
sae = SparseCoder.load_from_disk(sys.argv[1])
x = load_file(sys.argv[2])["x"]
with torch.no_grad():
    acts, indices, _ = sae.encode(x)
codes = torch.zeros(len(x), sae.num_latents).scatter_(1, indices, acts.float())
save_file({"codes": codes}, sys.argv[3])
"""


@pytest.mark.skipif(
    not SPARSIFY_PYTHON,
    reason="set SAELAB_SPARSIFY_PYTHON to a python with eai-sparsify 1.3.3 (the environment of "
    "tests/data/sparsify/make.py) to load saelab's exports with sparsify's own loader",
)
def test_sparsify_own_loader_reads_the_export_with_equal_codes(tmp_path):
    sae = SAE(SAEConfig(arch="topk", d_in=8, d_sae=24, k=3, input_scaling="none"), seed=0)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.1)
        sae.encoder_bias.normal_(0, 0.1)
    sae.eval()
    assert_their_loader_agrees(sae, "sparsify", SPARSIFY_PYTHON, LOAD_WITH_SPARSIFY, tmp_path)


DICTIONARY_LEARNING_PYTHON = os.environ.get("SAELAB_DICTIONARY_LEARNING_PYTHON")
LOAD_WITH_DICTIONARY_LEARNING = """
import json, sys, torch
from pathlib import Path
from safetensors.torch import load_file, save_file
from dictionary_learning.dictionary import AutoEncoder, GatedAutoEncoder, JumpReluAutoEncoder
from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE
from dictionary_learning.trainers.top_k import AutoEncoderTopK
classes = [AutoEncoder, GatedAutoEncoder, JumpReluAutoEncoder, BatchTopKSAE,
           MatryoshkaBatchTopKSAE, AutoEncoderTopK]
folder = Path(sys.argv[1])
name = json.loads((folder / "config.json").read_text())["trainer"]["dict_class"]
ae = {c.__name__: c for c in classes}[name].from_pretrained(str(folder / "ae.pt"))
with torch.no_grad():
    save_file({"codes": ae.encode(load_file(sys.argv[2])["x"])}, sys.argv[3])
"""


@pytest.mark.skipif(
    not DICTIONARY_LEARNING_PYTHON,
    reason="set SAELAB_DICTIONARY_LEARNING_PYTHON to a python with dictionary-learning 0.1.0 to "
    "load saelab's exports with dictionary_learning's own from_pretrained",
)
@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "matryoshka", "jumprelu", "gated"])
def test_dictionary_learning_own_loader_reads_the_export_with_equal_codes(tmp_path, arch):
    settings = {"k": 3} if arch in ("topk", "batchtopk", "matryoshka", "jumprelu") else {}
    sae = SAE(SAEConfig(arch=arch, d_in=8, d_sae=24, input_scaling="none", **settings), seed=0)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.1)
        sae.encoder_bias.normal_(0, 0.1)
        if arch in ("batchtopk", "matryoshka"):
            sae.threshold.fill_(0.05)
    sae.eval()
    assert_their_loader_agrees(
        sae,
        "dictionary_learning",
        DICTIONARY_LEARNING_PYTHON,
        LOAD_WITH_DICTIONARY_LEARNING,
        tmp_path,
    )


def test_a_loaded_decoder_that_is_not_unit_norm_is_kept_and_reported(tmp_path):
    sae = SAE.load_any(DATA / "v6_jumprelu_metadata")  # rows of norm 0.5..2, as SAELens saved
    saved = load_file(str(DATA / "v6_jumprelu_metadata" / "sae_weights.safetensors"))["W_dec"]
    torch.testing.assert_close(sae.W_dec.detach(), saved)
    results = full_evaluation(sae, torch.randn(512, 16), tmp_path)
    assert 0.45 < results["decoder_norm_min"] < 0.6 and 1.9 < results["decoder_norm_max"] <= 2.0
    assert any("decoder rows are not unit norm" in line for line in summary_lines(results))


GEMMA_SCOPE = Path(__file__).parent / "data" / "gemma_scope"
GEMMA_FOLDER = GEMMA_SCOPE / "gemma-scope-2b-pt-res" / "layer_12" / "width_16k" / "average_l0_82"


def test_gemma_scope_codes_equal_saelens_own_loader():
    sae = SAE.load_any(GEMMA_FOLDER)
    data = load_file(str(GEMMA_SCOPE / "codes.safetensors"))
    torch.testing.assert_close(sae.encode(data["x"]), data["codes"], rtol=1e-5, atol=1e-5)
    meta = sae.cfg.metadata
    assert (sae.cfg.arch, meta["model"], meta["layer"], meta["site"]) == (
        "jumprelu", "google/gemma-2-2b", 12, "resid_post"
    )  # fmt: skip


def test_a_gemma_scope_file_with_lower_case_names_or_an_unknown_array(tmp_path):
    with np.load(GEMMA_FOLDER / "params.npz") as data:
        arrays = {key: data[key] for key in data.files}
    folder = tmp_path / "gemma-scope-9b-it-mlp" / "layer_3"
    folder.mkdir(parents=True)
    renamed = {("w_" + k[2:] if k.startswith("W_") else k): v for k, v in arrays.items()}
    np.savez(folder / "params.npz", **renamed)
    sae = SAE.load_any(folder)
    data = load_file(str(GEMMA_SCOPE / "codes.safetensors"))
    torch.testing.assert_close(sae.encode(data["x"]), data["codes"], rtol=1e-5, atol=1e-5)
    assert sae.cfg.metadata["model"] == "google/gemma-2-9b-it"
    assert "site" not in sae.cfg.metadata  # Gemma's mlp_out hook is after its post-MLP norm
    np.savez(folder / "params.npz", **arrays, log_feature_sparsity=np.zeros(64, np.float32))
    with pytest.raises(SAEFormatError, match="does not understand .*: log_feature_sparsity"):
        SAE.load_any(folder)


GEMMA_SCOPE_2 = GEMMA_SCOPE / "gemma-scope-2-1b-pt"


def test_gemma_scope_2_codes_equal_saelens_own_loader():
    sae = SAE.load_any(GEMMA_SCOPE_2 / "resid_post" / "layer_7_width_16k_l0_medium")
    data = load_file(str(GEMMA_SCOPE_2 / "codes.safetensors"))
    torch.testing.assert_close(sae.encode(data["x"]), data["codes"], rtol=1e-5, atol=1e-5)
    meta = sae.cfg.metadata
    assert (meta["model"], meta["layer"], meta["site"]) == ("google/gemma-3-1b-pt", 7, "resid_post")


def test_gemma_scope_2_transcoders_are_refused_by_name(tmp_path):
    folder = tmp_path / "transcoder" / "layer_7_width_16k_l0_medium_affine"
    shutil.copytree(GEMMA_SCOPE_2 / "resid_post" / "layer_7_width_16k_l0_medium", folder)
    with pytest.raises(SAEFormatError, match="is a Gemma Scope transcoder"):
        SAE.load_any(folder)
    plain = tmp_path / "resid_post" / "layer_7"
    shutil.copytree(GEMMA_SCOPE_2 / "resid_post" / "layer_7_width_16k_l0_medium", plain)
    cfg = json.loads((plain / "config.json").read_text())
    (plain / "config.json").write_text(json.dumps({**cfg, "hf_hook_point_out": "x"}))
    with pytest.raises(SAEFormatError, match="is a Gemma Scope transcoder"):
        SAE.load_any(plain)
