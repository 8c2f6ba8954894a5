"""SAELens directories written by SAELens 6.54's own code (or, for the layouts SAELens 6 no
longer writes, by hand in that layout and read back by SAELens's loader), with the codes
SAELens's own SAE.load_from_disk(...).encode(x) gave: tests/data/saelens/make.py. saelab must
give the same codes: the silent misreads of the pre-6 TopK layout, rescale_acts_by_decoder_norm,
and JumpReLU thresholds at or below 0 each had one."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from saelab import SAE, SAEConfig
from saelab.io.external import export
from saelab.io.format import SAEFormatError

DATA = Path(__file__).parent / "data" / "saelens"
LAYOUTS = {  # folder: the saelab architecture it loads as
    "pre6_topk": "topk",
    "pre6_topk_no_architecture": "topk",
    "pre6_relu_bool_norm": "relu",
    "v6_topk_rescaled": "topk",
    "v6_jumprelu_metadata": "jumprelu",
    "v6_standard_expected_average": "relu",
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
    export(sae, tmp_path / "sae", "saelens")
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(2))
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    args = [tmp_path / "sae", tmp_path / "x.safetensors", tmp_path / "codes.safetensors"]
    subprocess.run([SAELENS_PYTHON, "-c", LOAD_WITH_SAELENS, *map(str, args)], check=True)
    theirs = load_file(str(tmp_path / "codes.safetensors"))["codes"]
    torch.testing.assert_close(theirs, sae.encode(x), rtol=1e-5, atol=1e-5)
