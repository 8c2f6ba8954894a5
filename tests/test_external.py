"""SAELens and sparsify directories, written by the tests in each format's documented layout,
checked against each library's own forward formula computed in numpy."""

import json

import numpy as np
import pytest
import torch
from conftest import estimate_threshold, make_sae, randomize
from safetensors.torch import save_file

from saelab import SAE
from saelab.io.external import detect_format, export
from saelab.io.format import SAEFormatError

D, H = 8, 24


def _weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(D, H, generator=g),
        "b_enc": torch.randn(H, generator=g) * 0.1,
        "W_dec": torch.randn(H, D, generator=g),
        "b_dec": torch.randn(D, generator=g) * 0.1,
    }


def _write_saelens(path, cfg, tensors):
    path.mkdir()
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(path / "sae_weights.safetensors"))


def _np(t):
    return t.numpy().astype(np.float64)


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_saelens_standard(tmp_path, apply_b_dec):
    w = _weights()
    _write_saelens(
        tmp_path / "s",
        {
            "architecture": "standard",
            "d_in": D,
            "d_sae": H,
            "apply_b_dec_to_input": apply_b_dec,
            "normalize_activations": "none",
            "hook_name": "blocks.3.hook_resid_pre",
        },
        w,
    )
    x = torch.randn(10, D)
    sae_in = _np(x) - (_np(w["b_dec"]) if apply_b_dec else 0)
    f = np.maximum(sae_in @ _np(w["W_enc"]) + _np(w["b_enc"]), 0)
    sae = SAE.load_any(tmp_path / "s")
    assert detect_format(tmp_path / "s") == "saelens" and sae.cfg.arch == "relu"
    np.testing.assert_allclose(sae.encode(x).detach().numpy(), f, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        sae(x).detach().numpy(), f @ _np(w["W_dec"]) + _np(w["b_dec"]), rtol=1e-4, atol=1e-4
    )


def test_saelens_topk_jumprelu_and_layer_norm(tmp_path):
    w = _weights(1)
    _write_saelens(
        tmp_path / "t",
        {
            "architecture": "topk",
            "d_in": D,
            "d_sae": H,
            "k": 3,
            "normalize_activations": "layer_norm",
        },
        w,
    )
    x = torch.randn(10, D) * 5 + 2
    xn = _np(x)
    mu, sd = xn.mean(1, keepdims=True), xn.std(1, ddof=1, keepdims=True) + 1e-5
    pre = ((xn - mu) / sd - _np(w["b_dec"])) @ _np(w["W_enc"]) + _np(w["b_enc"])
    f = np.zeros_like(pre)
    for r in range(10):
        top = np.argsort(-pre[r])[:3]
        f[r, top] = np.maximum(pre[r, top], 0)
    sae = SAE.load_any(tmp_path / "t")
    np.testing.assert_allclose(sae.encode(x).detach().numpy(), f, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        sae(x).detach().numpy(),
        (f @ _np(w["W_dec"]) + _np(w["b_dec"])) * sd + mu,
        rtol=1e-4,
        atol=1e-4,
    )

    threshold = torch.rand(H) * 0.5
    _write_saelens(
        tmp_path / "j",
        {"architecture": "jumprelu", "d_in": D, "d_sae": H},
        {**w, "threshold": threshold},
    )
    pre = (_np(x) - _np(w["b_dec"])) @ _np(w["W_enc"]) + _np(w["b_enc"])
    want = pre * (pre > _np(threshold))
    np.testing.assert_allclose(
        SAE.load_any(tmp_path / "j").encode(x).detach().numpy(), want, rtol=1e-4, atol=1e-5
    )


def test_sparsify(tmp_path):
    w = _weights(2)
    path = tmp_path / "layers.6"
    path.mkdir()
    (path / "cfg.json").write_text(
        json.dumps(
            {
                "expansion_factor": 3,
                "normalize_decoder": True,
                "num_latents": 0,
                "k": 4,
                "multi_topk": False,
                "d_in": D,
            }
        )
    )
    save_file(
        {
            "encoder.weight": w["W_enc"].T.contiguous(),
            "encoder.bias": w["b_enc"],
            "W_dec": w["W_dec"],
            "b_dec": w["b_dec"],
        },
        str(path / "sae.safetensors"),
    )
    x = torch.randn(10, D)
    pre = np.maximum((_np(x) - _np(w["b_dec"])) @ _np(w["W_enc"]) + _np(w["b_enc"]), 0)
    f = np.zeros_like(pre)
    for r in range(10):
        top = np.argsort(-pre[r])[:4]
        f[r, top] = pre[r, top]
    sae = SAE.load_any(path)
    assert detect_format(path) == "sparsify" and (sae.cfg.arch, sae.cfg.k) == ("topk", 4)
    np.testing.assert_allclose(sae.encode(x).detach().numpy(), f, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "arch, fmt",
    [
        ("relu", "saelens"),
        ("topk", "saelens"),
        ("jumprelu", "saelens"),
        ("batchtopk", "saelens"),
        ("gated", "saelens"),
        ("matryoshka", "saelens"),
        ("topk", "sparsify"),
    ],
)
def test_export_then_import_gives_the_same_codes(tmp_path, arch, fmt):
    """Every architecture SAELens or sparsify has (matryoshka and batchtopk infer as a jumprelu
    with the global threshold on every latent)."""
    sae = randomize(
        make_sae(
            arch,
            d_in=D,
            d_sae=H,
            k=3,
            input_scaling="per_token" if fmt == "saelens" else "none",
            matryoshka_widths=[6, 12, 24],
        )
    )
    if arch in ("batchtopk", "matryoshka"):
        estimate_threshold(sae, torch.randn(64, D))
    sae.eval()
    export(sae, tmp_path / "e", fmt)
    back = SAE.load_any(tmp_path / "e")
    x = torch.randn(20, D)
    torch.testing.assert_close(back.encode(x), sae.encode(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(back(x), sae(x), rtol=1e-5, atol=1e-5)


def test_unknown_and_unsupported_directories(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "cfg.json").write_text("{}")
    (tmp_path / "d" / "weights.bin").write_bytes(b"\0")
    with pytest.raises(SAEFormatError, match="not an SAE directory saelab can read .* weights.bin"):
        SAE.load_any(tmp_path / "d")
    with pytest.raises(SAEFormatError, match="no cfg.json"):
        SAE.load_any(tmp_path)
    _write_saelens(
        tmp_path / "g", {"architecture": "matching_pursuit", "d_in": D, "d_sae": H}, _weights()
    )
    with pytest.raises(SAEFormatError, match="architecture 'matching_pursuit' is not supported"):
        SAE.load_any(tmp_path / "g")
    _write_saelens(  # a skip transcoder's file without its skip path
        tmp_path / "s",
        {"architecture": "skip_transcoder", "d_in": D, "d_sae": H, "d_out": D,
         "apply_b_dec_to_input": False},
        _weights(),
    )  # fmt: skip
    with pytest.raises(SAEFormatError, match="has no tensor 'W_skip'"):
        SAE.load_any(tmp_path / "s")
    _write_saelens(
        tmp_path / "n", {"architecture": "standard", "d_in": D, "d_sae": H + 1}, _weights()
    )
    with pytest.raises(SAEFormatError, match="W_enc has shape"):
        SAE.load_any(tmp_path / "n")
    with pytest.raises(ValueError, match="SAELens has no topafa"):
        export(make_sae("topafa", d_in=D, d_sae=H), tmp_path / "x", "saelens")
