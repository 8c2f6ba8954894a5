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


@pytest.mark.parametrize(
    "folder, arch, skip",
    [("v6_jumprelu_skip_transcoder", "jumprelu", True), ("v6_transcoder", "relu", False)],
)
def test_saelens_transcoders_load_with_equal_codes_and_outputs(folder, arch, skip):
    sae = SAE.load_any(DATA / folder)
    x = load_file(str(DATA / folder / "x.safetensors"))["x"]
    want = load_file(str(DATA / folder / "codes.safetensors"))
    assert (sae.cfg.arch, sae.cfg.d_out, sae.cfg.skip) == (arch, 12, skip)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), want["codes"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae(x), want["outputs"], rtol=1e-5, atol=1e-5)


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
        ({"activation": "groupmax"}, "sparsify activation 'groupmax' is not supported"),
        ({"skip_connection": True}, "autoencoders with a skip connection are not supported"),
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
    in `python`, and compare the codes with saelab's (a transcoder's outputs too)."""
    export(sae, tmp_path / "sae", fmt)
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(2))
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    args = [tmp_path / "sae", tmp_path / "x.safetensors", tmp_path / "codes.safetensors"]
    subprocess.run([python, "-c", script, *map(str, args)], check=True)
    theirs = load_file(str(tmp_path / "codes.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(theirs["codes"], sae.encode(x), rtol=1e-5, atol=1e-5)
        if sae.cfg.is_transcoder:
            torch.testing.assert_close(theirs["outputs"], sae(x), rtol=1e-5, atol=1e-5)


def perturbed(cfg: SAEConfig) -> SAE:
    """A new SAE of cfg in eval mode, every tensor moved off its initialisation (batchtopk:
    with a threshold), so an export that drops or misplaces one shows."""
    sae = SAE(cfg, seed=0)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
        if cfg.arch == "batchtopk":
            sae.threshold.fill_(0.05)
    return sae.eval()


SAELENS_PYTHON = os.environ.get("SAELAB_SAELENS_PYTHON")
LOAD_WITH_SAELENS = """
import sys, torch
from safetensors.torch import load_file, save_file
from sae_lens import SAE
sae = SAE.load_from_disk(sys.argv[1])
x = load_file(sys.argv[2])["x"]
with torch.no_grad():
    extra = {"outputs": sae(x).contiguous()} if hasattr(sae.cfg, "d_out") else {}
    save_file({"codes": sae.encode(x).contiguous(), **extra}, sys.argv[3])
"""


@pytest.mark.skipif(
    not SAELENS_PYTHON,
    reason="set SAELAB_SAELENS_PYTHON to a python with sae-lens 6.54 (the environment of "
    "tests/data/saelens/make.py) to load saelab's exports with SAELens's own loader",
)
@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu", "gated"])
def test_saelens_own_loader_reads_the_export_with_equal_codes(tmp_path, arch):
    settings = {"k": 3} if arch in ("topk", "batchtopk", "jumprelu") else {}
    sae = perturbed(SAEConfig(arch=arch, d_in=8, d_sae=24, input_scaling="none", **settings))
    assert_their_loader_agrees(sae, "saelens", SAELENS_PYTHON, LOAD_WITH_SAELENS, tmp_path)


@pytest.mark.skipif(not SAELENS_PYTHON, reason="SAELAB_SAELENS_PYTHON (sae-lens 6.54) not set")
@pytest.mark.parametrize(
    "arch, skip", [("relu", False), ("relu", True), ("jumprelu", True), ("batchtopk", False)]
)
def test_saelens_own_loader_reads_exported_transcoders_with_equal_outputs(tmp_path, arch, skip):
    settings = {"k": 3} if arch in ("batchtopk", "jumprelu") else {}
    cfg = SAEConfig(arch=arch, d_in=8, d_sae=24, input_scaling="none", d_out=6, skip=skip,
                    metadata={"target_layer": 3, "target_site": "mlp_out"}, **settings)  # fmt: skip
    sae = perturbed(cfg)
    assert_their_loader_agrees(sae, "saelens", SAELENS_PYTHON, LOAD_WITH_SAELENS, tmp_path)
    loaded = SAE.load_any(tmp_path / "sae")  # and back: the same transcoder
    assert (loaded.cfg.d_out, loaded.cfg.skip, loaded.cfg.metadata["target_site"]) == (
        6, skip, "mlp_out"
    )  # fmt: skip


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


def test_sparsify_groupmax_is_refused_by_name():
    with pytest.raises(SAEFormatError, match="activation 'groupmax'"):
        SAE.load_any(SPARSIFY / "groupmax")


@pytest.mark.parametrize("folder, skip", [("transcoder", False), ("skip_transcoder", True)])
def test_sparsify_transcoders_load_as_transcoders_with_equal_codes_and_outputs(folder, skip):
    sae = SAE.load_any(SPARSIFY / folder)
    x = load_file(str(SPARSIFY / folder / "x.safetensors"))["x"]
    want = load_file(str(SPARSIFY / folder / "codes.safetensors"))
    assert (sae.cfg.d_out, sae.cfg.skip) == (16, skip)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), want["codes"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae(x), want["outputs"], rtol=1e-5, atol=1e-5)


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
extra = {"outputs": sae(x).sae_out.detach().float().contiguous()} if sae.cfg.transcode else {}
save_file({"codes": codes, **extra}, sys.argv[3])
"""


@pytest.mark.skipif(
    not SPARSIFY_PYTHON,
    reason="set SAELAB_SPARSIFY_PYTHON to a python with eai-sparsify 1.3.3 (the environment of "
    "tests/data/sparsify/make.py) to load saelab's exports with sparsify's own loader",
)
@pytest.mark.parametrize("d_out, skip", [(None, False), (8, False), (8, True)])
def test_sparsify_own_loader_reads_the_export_with_equal_codes(tmp_path, d_out, skip):
    sae = SAE(
        SAEConfig(arch="topk", d_in=8, d_sae=24, k=3, input_scaling="none", d_out=d_out,
                  skip=skip),
        seed=0,
    )  # fmt: skip
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.1)
        sae.encoder_bias.normal_(0, 0.1)
        if skip:
            sae.W_skip.normal_(0, 0.2)
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


@pytest.mark.parametrize(
    "folder, codes, skip",
    [
        (GEMMA_SCOPE / "gemma-scope-2b-pt-transcoders" / "layer_12" / "width_16k" / "average_l0_82",
         GEMMA_SCOPE / "transcoder_codes.safetensors", False),
        (GEMMA_SCOPE_2 / "transcoder" / "layer_7_width_16k_l0_medium_affine",
         GEMMA_SCOPE_2 / "skip_transcoder_codes.safetensors", True),
    ],
)  # fmt: skip
def test_gemma_scope_transcoders_equal_saelens_own_loaders(folder, codes, skip):
    sae = SAE.load_any(folder)
    data = load_file(str(codes))
    assert (sae.cfg.d_out, sae.cfg.skip) == (256, skip)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(data["x"]), data["codes"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae(data["x"]), data["outputs"], rtol=1e-5, atol=1e-4)
    meta = sae.cfg.metadata
    if skip:  # Gemma Scope 2 names the modules: the MLP's input and output
        assert (meta["model"], meta["layer"], meta["site"], meta["target_site"]) == (
            "google/gemma-3-1b-pt", 7, "mlp_in", "mlp_out"
        )  # fmt: skip
    else:
        assert (meta["model"], meta["layer"]) == ("google/gemma-2-2b", 12)
        assert "site" not in meta


def test_gemma_scope_2_cross_layer_transcoders_are_refused_by_name(tmp_path):
    folder = tmp_path / "clt" / "layer_7_clt"
    shutil.copytree(GEMMA_SCOPE_2 / "resid_post" / "layer_7_width_16k_l0_medium", folder)
    with pytest.raises(SAEFormatError, match="cross-layer transcoder"):
        SAE.load_any(folder)


LLAMA_SCOPE = Path(__file__).parent / "data" / "llama_scope"
LLAMA_FOLDER = LLAMA_SCOPE / "Llama3_1-8B-Base-LXR-8x" / "Llama3_1-8B-Base-L15R-8x"


def lm_saes_llama_scope(folder: Path, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, reconstruction) of a Llama Scope folder as lm-saes at the release computes them
    (src/lm_saes/sae.py, 2024-11: standardize_parameters_of_dataset_activation_scaling, then
    transform_to_unit_decoder_norm, then hidden_pre.where(hidden_pre > jump_relu_threshold))."""
    hp = json.loads((folder / "hyperparams.json").read_text())
    t = {k: v.float() for k, v in load_file(str(folder / "checkpoints/final.safetensors")).items()}
    f_in = hp["d_model"] ** 0.5 / hp["dataset_average_activation_norm"]["in"]
    f_out = hp["d_model"] ** 0.5 / hp["dataset_average_activation_norm"]["out"]
    enc_w, enc_b = t["encoder.weight"], t["encoder.bias"] / f_in
    dec_w, dec_b = t["decoder.weight"] * f_in / f_out, t["decoder.bias"] / f_out
    norm = torch.norm(dec_w, p=2, dim=0)
    dec_w, enc_w, enc_b = dec_w / norm, enc_w * norm[:, None], enc_b * norm
    hidden_pre = torch.nn.functional.linear(x, enc_w, enc_b)
    codes = hidden_pre.where(hidden_pre > hp["jump_relu_threshold"], 0)
    return codes, torch.nn.functional.linear(codes, dec_w, dec_b)


def test_llama_scope_loads_as_lm_saes_reads_it_and_agrees_with_saelens():
    sae = SAE.load_any(LLAMA_FOLDER)
    data = load_file(str(LLAMA_SCOPE / "codes.safetensors"))
    codes, recons = lm_saes_llama_scope(LLAMA_FOLDER, data["x"])
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(data["x"]), codes, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae(data["x"]), recons, rtol=1e-5, atol=1e-5)
        # SAELens's loader: the same latents and reconstruction, codes in normalised units
        # (times f = sqrt(d_model) / norm) and without the bfloat16 decoder's norms n
        n = load_file(str(LLAMA_FOLDER / "checkpoints/final.safetensors"))["decoder.weight"]
        n = n.float().norm(dim=0)
        theirs = data["codes"] / (16**0.5 / 5.0) * n
        torch.testing.assert_close(sae.encode(data["x"]), theirs, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(sae(data["x"]), data["recons"], rtol=1e-5, atol=1e-5)
    meta = sae.cfg.metadata
    assert (sae.cfg.arch, meta["model"], meta["layer"], meta["site"]) == (
        "jumprelu", "meta-llama/Llama-3.1-8B", 15, "resid_post"
    )  # fmt: skip


def test_llama_scope_with_decoder_norms_and_topk_as_lm_saes(tmp_path):
    folder = tmp_path / "Llama3_1-8B-Base-L3M-8x"
    shutil.copytree(LLAMA_FOLDER, folder)
    weights = folder / "checkpoints" / "final.safetensors"
    t = load_file(str(weights))
    t["decoder.weight"] = (t["decoder.weight"].float() * torch.linspace(0.5, 2, 48)).bfloat16()
    save_file(t, str(weights))
    hp = json.loads((folder / "hyperparams.json").read_text())
    hp["dataset_average_activation_norm"] = {"in": 3.0, "out": 3.0}
    hp["hook_point_in"] = hp["hook_point_out"] = "blocks.3.hook_mlp_out"
    (folder / "hyperparams.json").write_text(json.dumps(hp))
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(2)) * 2
    codes, recons = lm_saes_llama_scope(folder, x)
    sae = SAE.load_any(folder)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), codes, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae(x), recons, rtol=1e-5, atol=1e-5)
    assert (sae.cfg.metadata["layer"], sae.cfg.metadata["site"]) == (3, "mlp_out")
    hp.update(act_fn="topk", jump_relu_threshold=0.0)  # before the release's conversion
    (folder / "hyperparams.json").write_text(json.dumps(hp))
    assert (SAE.load_any(folder).cfg.arch, SAE.load_any(folder).cfg.k) == ("topk", 5)
    for change, pattern in (
        ({"norm_activation": "token-wise"}, "norm_activation 'token-wise' is not supported"),
        ({"use_glu_encoder": True}, "GLU encoder"),
        ({"act_fn": "jumprelu", "jump_relu_threshold": -0.1}, "jump_relu_threshold -0.1 < 0"),
    ):
        (folder / "hyperparams.json").write_text(json.dumps({**hp, **change}))
        with pytest.raises(SaelabError, match=pattern):
            SAE.load_any(folder)


def test_a_llama_scope_transcoder_loads_as_one_as_lm_saes_reads_it(tmp_path):
    folder = tmp_path / "Llama3_1-8B-Base-L3TC-8x"
    shutil.copytree(LLAMA_FOLDER, folder)
    hp = json.loads((folder / "hyperparams.json").read_text())
    hp.update(hook_point_out="blocks.3.hook_mlp_out", hook_point_in="blocks.3.ln2.hook_normalized")
    hp["dataset_average_activation_norm"] = {"in": 4.0, "out": 0.5}
    (folder / "hyperparams.json").write_text(json.dumps(hp))
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(2)) * 2
    codes, outputs = lm_saes_llama_scope(folder, x)
    sae = SAE.load_any(folder)
    assert sae.cfg.is_transcoder and sae.cfg.metadata["target_site"] == "mlp_out"
    assert "site" not in sae.cfg.metadata  # TransformerLens's ln2.hook_normalized: not mlp_in
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), codes, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae(x), outputs, rtol=1e-5, atol=1e-5)


def write_llamascopium(folder: Path, act_fn: str, norm: str, spelling: str = "current") -> dict:
    """A Llamascopium SAE directory as its save_pretrained writes one (models/
    sparse_dictionary.py: config.json from the config's model_dump, sae_weights.safetensors from
    full_state_dict); lm_saes of 2025 spells the tensors encoder.weight etc."""
    hook = "blocks.6.hook_resid_post"
    g = torch.Generator().manual_seed(3)
    t = {
        "W_E": torch.randn(16, 48, generator=g) * 0.3,
        "b_E": torch.randn(48, generator=g) * 0.1,
        "W_D": torch.randn(48, 16, generator=g) * torch.linspace(0.2, 1.5, 48)[:, None],
        "b_D": torch.randn(16, generator=g) * 0.5,
        f"dataset_average_activation_norm.{hook}": torch.tensor(2.5),
    }
    if act_fn == "jumprelu":
        t["activation_function.log_jumprelu_threshold"] = torch.randn(48, generator=g) * 0.3
    if spelling == "lm_saes 2025":
        renames = {
            "W_E": "encoder.weight",
            "b_E": "encoder.bias",
            "W_D": "decoder.weight",
            "b_D": "decoder.bias",
            "activation_function.log_jumprelu_threshold": "log_jumprelu_threshold",
        }
        t = {renames.get(k, k): (v.T if k in ("W_E", "W_D") else v) for k, v in t.items()}
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in t.items()}, str(folder / "sae_weights.safetensors"))
    cfg = {
        "sae_type": "sae",
        "d_model": 16,
        "expansion_factor": 3,
        "hook_point_in": hook,
        "hook_point_out": hook,
        "use_decoder_bias": True,
        "act_fn": act_fn,
        "norm_activation": norm,
        "sparsity_include_decoder_norm": True,
        "top_k": 5,
        "use_glu_encoder": False,
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    return t


def llamascopium_encode(t: dict, x: torch.Tensor, act_fn: str, norm: str):
    """(codes, reconstruction) as Llamascopium's SparseAutoEncoder.encode / decode give them on
    normalise_activations(x) (x * sqrt(d_model) / norm for dataset-wise), denormalised after."""
    f = 16**0.5 / 2.5 if norm == "dataset-wise" else 1.0
    hidden_pre = (x * f) @ t["W_E"] + t["b_E"]
    n = torch.norm(t["W_D"], p=2, dim=1)
    scores = hidden_pre * n
    if act_fn == "jumprelu":
        scores = scores * scores.gt(t["activation_function.log_jumprelu_threshold"].exp())
    else:  # topk: x * x.gt(0), then the top k
        scores = scores * scores.gt(0)
        keep = scores.topk(5, dim=-1).indices
        scores = torch.zeros_like(scores).scatter(-1, keep, scores.gather(-1, keep))
    codes = scores / n
    return codes, (codes @ t["W_D"] + t["b_D"]) / f


@pytest.mark.parametrize(
    "act_fn, norm, spelling",
    [
        ("jumprelu", "dataset-wise", "current"),
        ("jumprelu", "inference", "current"),
        ("topk", "dataset-wise", "current"),
        ("jumprelu", "dataset-wise", "lm_saes 2025"),
    ],
)
def test_llamascopium_codes_equal_its_encode(tmp_path, act_fn, norm, spelling):
    t = write_llamascopium(tmp_path / "sae", act_fn, norm, spelling)
    t = write_llamascopium(tmp_path / "current", act_fn, norm)  # the reference's names
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(4)) * 3
    codes, recons = llamascopium_encode(t, x, act_fn, norm)
    sae = SAE.load_any(tmp_path / "sae")
    with torch.no_grad():
        if act_fn == "topk":  # folded: codes times the decoder norms, the same reconstruction
            codes = codes * torch.norm(t["W_D"], dim=1)
        torch.testing.assert_close(sae.encode(x), codes, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae(x), recons, rtol=1e-5, atol=1e-5)
    assert (sae.cfg.metadata["layer"], sae.cfg.metadata["site"]) == (6, "resid_post")
    assert sae.cfg.input_scaling == ("expected_norm" if norm == "dataset-wise" else "none")


@pytest.mark.parametrize(
    "change, pattern",
    [
        ({"sae_type": "crosscoder"}, "sae_type 'crosscoder' is not supported"),
        ({"act_fn": "batchtopk"}, "no threshold for inference"),
        ({"norm_activation": "batch-wise"}, "norm_activation 'batch-wise' is not supported"),
        (
            {"hook_point_out": "blocks.7.hook_mlp_out", "apply_decoder_bias_to_pre_encoder": True},
            "transcoder that subtracts its output bias",
        ),
    ],
)
def test_llamascopium_files_saelab_cannot_read_are_refused_by_name(tmp_path, change, pattern):
    write_llamascopium(tmp_path / "sae", "jumprelu", "dataset-wise")
    cfg = json.loads((tmp_path / "sae" / "config.json").read_text())
    (tmp_path / "sae" / "config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(SaelabError, match=pattern):
        SAE.load_any(tmp_path / "sae")


OPENAI = Path(__file__).parent / "data" / "openai" / "gpt2-small"


@pytest.mark.parametrize(
    "release, arch, site",
    [("resid_post_mlp_v5_32k/autoencoders/6", "topk", "resid_post"),
     ("resid_delta_mlp/autoencoders/3", "relu", "mlp_out")],
)  # fmt: skip
def test_openai_codes_equal_their_own(release, arch, site):
    sae = SAE.load_any(OPENAI / f"{release}.pt")
    data = load_file(str(OPENAI / f"{release}.codes.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(data["x"]), data["codes"], rtol=1e-5, atol=1e-5)
        # theirs maps back with std where saelab's per_token uses std + 1e-5
        torch.testing.assert_close(sae(data["x"]), data["recons"], rtol=1e-4, atol=1e-4)
    meta = sae.cfg.metadata
    assert (sae.cfg.arch, meta["model"], meta["site"]) == (arch, "openai-community/gpt2", site)


def test_an_openai_file_with_an_unknown_entry_or_activation_is_refused(tmp_path):
    state = torch.load(OPENAI / "resid_post_mlp_v5_32k/autoencoders/6.pt", weights_only=True)
    torch.save({**state, "optimizer_step": 3}, tmp_path / "a.pt")
    with pytest.raises(SAEFormatError, match="does not understand: optimizer_step"):
        SAE.load_any(tmp_path / "a.pt")
    torch.save({**state, "activation": "Identity"}, tmp_path / "b.pt")
    with pytest.raises(SaelabError, match="activation 'Identity' is not supported"):
        SAE.load_any(tmp_path / "b.pt")
    (tmp_path / "c.pt").write_bytes(b"not a pickle")
    with pytest.raises(SAEFormatError, match="not a torch state dict"):
        SAE.load_any(tmp_path / "c.pt")


def test_a_llamascopium_transcoder_loads_as_one(tmp_path):
    t = write_llamascopium(tmp_path / "tc", "jumprelu", "dataset-wise")
    cfg = json.loads((tmp_path / "tc" / "config.json").read_text())
    cfg["hook_point_out"] = "blocks.6.hook_mlp_out"
    (tmp_path / "tc" / "config.json").write_text(json.dumps(cfg))
    norms = {**t, "dataset_average_activation_norm.blocks.6.hook_mlp_out": torch.tensor(0.8)}
    save_file(
        {k: v.contiguous() for k, v in norms.items()},
        str(tmp_path / "tc" / "sae_weights.safetensors"),
    )
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(4)) * 3
    codes, recons = llamascopium_encode(t, x, "jumprelu", "dataset-wise")  # divides by f_in
    outputs = recons * (16**0.5 / 2.5) / (16**0.5 / 0.8)  # the output's own scale, f_out
    sae = SAE.load_any(tmp_path / "tc")
    assert sae.cfg.is_transcoder and sae.cfg.input_scaling == "none"
    assert (sae.cfg.metadata["target_layer"], sae.cfg.metadata["target_site"]) == (6, "mlp_out")
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), codes, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae(x), outputs, rtol=1e-5, atol=1e-5)
