"""saelab transcoders as a circuit-tracer transcoder set (io/circuit_tracer.py): the files
against an independent re-implementation of circuit-tracer 0.5's loader and transcoder (always),
against circuit-tracer's own code when SAELAB_CIRCUIT_TRACER_PYTHON names a python with
circuit-tracer 0.5.0 installed, the command line, and the sets it refuses."""

import os
import subprocess

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import randomize
from safetensors.torch import load_file, save_file

from saelab import SAE, SAEConfig
from saelab.cli import main
from saelab.errors import SaelabError
from saelab.io.circuit_tracer import export_transcoder_set

D, H = 8, 24
RULES = {"relu": {}, "jumprelu": {"k": 4}, "batchtopk": {"k": 4}, "matryoshka": {"k": 4}}


def transcoder(arch, layer, skip=True, site="mlp_in", model="org/model", **extra):
    settings = {**RULES.get(arch, {"k": 4}), **extra}
    if arch == "matryoshka":
        settings["matryoshka_widths"] = [6, 12, 24]
    cfg = SAEConfig(arch=arch, d_in=D, d_sae=H, d_out=D, skip=skip, input_scale=2.0,
                    output_scale=0.5, **settings,
                    metadata={"model": model, "layer": layer, "site": site,
                              "target_layer": layer, "target_site": "mlp_out"})  # fmt: skip
    sae = randomize(SAE(cfg, seed=layer), seed=layer)
    with torch.no_grad():
        if skip:
            sae.W_skip.normal_(0, 0.2)
        if arch in ("batchtopk", "matryoshka"):
            sae.threshold.fill_(0.3)
    return sae.eval()


def their_transcoder(path, x):
    """circuit-tracer 0.5's load_relu_transcoder and SingleLayerTranscoder, re-implemented:
    pre = F.linear(x, W_enc, b_enc); a JumpReLU pre * (pre > threshold) when the file has
    activation_function.threshold, else relu; out = f @ W_dec + b_dec + x @ W_skip^T."""
    t = load_file(str(path))
    pre = F.linear(x, t["W_enc"], t["b_enc"])
    threshold = t.get("activation_function.threshold")
    f = torch.relu(pre) if threshold is None else pre * (pre > threshold)
    out = f @ t["W_dec"] + t["b_dec"]
    if "W_skip" in t:
        out = out + x @ t["W_skip"].T
    return f, out


def test_a_set_of_transcoders_computes_in_circuit_tracer_what_it_computes_in_saelab(tmp_path):
    saes = [transcoder(arch, layer) for layer, arch in enumerate(RULES)]
    export_transcoder_set(saes, tmp_path / "set")
    config = yaml.safe_load((tmp_path / "set" / "config.yaml").read_text())
    assert config["model_kind"] == "transcoder_set" and config["model_name"] == "org/model"
    assert (config["feature_input_hook"], config["feature_output_hook"]) == (
        "mlp.hook_in",
        "mlp.hook_out",
    )
    x = torch.randn(40, D) * 3
    for layer, sae in enumerate(saes):
        f, out = their_transcoder(tmp_path / "set" / f"layer_{layer}.safetensors", x)
        with torch.no_grad():
            assert (sae.encode(x) > 0).sum() > 0
            torch.testing.assert_close(f, sae.encode(x), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out, sae(x), rtol=1e-5, atol=1e-5)


def test_no_skip_path_writes_no_w_skip_and_resid_mid_is_its_hook(tmp_path):
    saes = [transcoder("relu", layer, skip=False, site="resid_mid") for layer in range(2)]
    export_transcoder_set(saes, tmp_path / "set", model_name="other/model")
    config = yaml.safe_load((tmp_path / "set" / "config.yaml").read_text())
    assert (config["feature_input_hook"], config["model_name"]) == ("hook_resid_mid", "other/model")
    assert "W_skip" not in load_file(str(tmp_path / "set" / "layer_1.safetensors"))


@pytest.mark.parametrize(
    "saes, pattern",
    [
        (lambda: [transcoder("topk", 0)], "relu or jumprelu codes: a topk transcoder"),
        (lambda: [transcoder("relu", 0), transcoder("relu", 2)], "layers 1 have none"),
        (lambda: [transcoder("relu", 0), transcoder("relu", 0)], "two transcoders for layer 0"),
        (lambda: [transcoder("relu", 0, site="resid_pre")], "read mlp_in or resid_mid"),
        (lambda: [transcoder("relu", 0), transcoder("relu", 1, site="resid_mid")],
         "differ in site"),
        (lambda: [transcoder("relu", 0), transcoder("relu", 1, skip=False)], "differ in skip"),
        (lambda: [transcoder("relu", 0, model="builtin:smollm2-135m")], "HuggingFaceTB/SmolLM2"),
        (lambda: [SAE(SAEConfig(arch="relu", d_in=D, d_sae=H))], "this is an autoencoder"),
        (lambda: [], "no transcoders"),
    ],
)  # fmt: skip
def test_sets_circuit_tracer_cannot_load_are_refused_by_name(saes, pattern, tmp_path):
    with pytest.raises(SaelabError, match=pattern):
        export_transcoder_set(saes(), tmp_path / "set")
    assert not (tmp_path / "set" / "config.yaml").exists()


def test_saelab_export_writes_a_set_from_a_folder_of_runs(tmp_path, capsys):
    for layer in range(3):
        transcoder("jumprelu", layer).save(tmp_path / "sweep" / f"layers.{layer}.mlp_in")
    main(["export", str(tmp_path / "sweep"), "--format", "circuit_tracer", "--out",
          str(tmp_path / "set")])  # fmt: skip
    assert "3 transcoders (layers 0-2)" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == [
        "config.yaml",
        "layer_0.safetensors",
        "layer_1.safetensors",
        "layer_2.safetensors",
    ]
    main(["export", str(tmp_path / "sweep" / "layers.1.mlp_in"), "--format", "saelens",
          "--out", str(tmp_path / "saelens")])  # fmt: skip
    assert (tmp_path / "saelens" / "sae_weights.safetensors").is_file()
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path / "sweep"), "--format", "saelens", "--out", "x"])
    assert "--format saelens writes one SAE; got 3" in capsys.readouterr().err


CIRCUIT_TRACER_PYTHON = os.environ.get("SAELAB_CIRCUIT_TRACER_PYTHON")
LOAD_WITH_CIRCUIT_TRACER = """
import sys, torch
from safetensors.torch import load_file, save_file
from circuit_tracer.utils.caching import load_transcoders_from_cache
tset, _ = load_transcoders_from_cache("set", cache_dir=sys.argv[1], device=torch.device("cpu"))
x = load_file(sys.argv[2])["x"]
out = {}
with torch.no_grad():
    for layer, tc in enumerate(tset):
        out[f"codes{layer}"] = tc.encode(x).contiguous()
        out[f"outputs{layer}"] = tc(x).contiguous()
save_file(out, sys.argv[3])
"""


@pytest.mark.skipif(
    not CIRCUIT_TRACER_PYTHON,
    reason="set SAELAB_CIRCUIT_TRACER_PYTHON to a python with circuit-tracer 0.5.0 to load the "
    "export with circuit-tracer's own code",
)
def test_circuit_tracer_loads_the_set_with_its_own_code(tmp_path):
    saes = [transcoder(arch, layer) for layer, arch in enumerate(RULES)]
    export_transcoder_set(saes, tmp_path / "cache" / "set")
    x = torch.randn(32, D, generator=torch.Generator().manual_seed(2)) * 3
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    args = [tmp_path / "cache", tmp_path / "x.safetensors", tmp_path / "out.safetensors"]
    subprocess.run([CIRCUIT_TRACER_PYTHON, "-c", LOAD_WITH_CIRCUIT_TRACER, *map(str, args)],
                   check=True)  # fmt: skip
    theirs = load_file(str(tmp_path / "out.safetensors"))
    with torch.no_grad():
        for layer, sae in enumerate(saes):
            torch.testing.assert_close(theirs[f"codes{layer}"], sae.encode(x), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(theirs[f"outputs{layer}"], sae(x), rtol=1e-5, atol=1e-5)
