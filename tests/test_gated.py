"""Gated SAE against independent computations, its SAELens layout, and a sweep of the new
architectures from the command line."""

import json

import numpy as np
import pytest
import torch
from conftest import randomize
from safetensors.torch import load_file

from saelab import SAE, SAEConfig, TrainConfig, cli, evaluate, sources, train
from saelab.io.external import export


def _sae(**kw):
    sae = randomize(
        SAE(SAEConfig(arch="gated", d_in=16, d_sae=48, input_scaling="none", **kw), seed=0)
    )
    with torch.no_grad():
        sae.r_mag.copy_(torch.randn(48) * 0.5)
        sae.b_mag.copy_(torch.randn(48) * 0.3)
    return sae


def _numpy_gated(sae, x):
    """(f, pi_gate) of Rajamanoharan et al.: the gate and the rescaled magnitude path."""
    p = {name: t.detach().double().numpy() for name, t in sae.state_dict().items()}
    xs = x.double().numpy() - p["b_dec"]
    gate = xs @ p["W_enc"] + p["b_gate"]
    magnitude = xs @ (p["W_enc"] * np.exp(p["r_mag"])) + p["b_mag"]
    return (gate > 0) * np.maximum(magnitude, 0), gate


def test_codes_equal_the_papers_formula():
    sae = _sae()
    x = torch.randn(40, 16)
    f, _ = _numpy_gated(sae, x)
    np.testing.assert_allclose(sae.encode(x).detach().numpy(), f, rtol=1e-5, atol=1e-6)
    assert 0 < (f > 0).mean() < 1


def test_loss_terms_equal_the_papers_formula_and_the_gate_term_trains_only_the_encoder():
    sae = _sae(l1_coefficient=0.7)
    x = torch.randn(40, 16)
    out = sae.loss(x)
    f, gate = _numpy_gated(sae, x)
    W_dec, b_dec = sae.W_dec.detach().double().numpy(), sae.b_dec.detach().double().numpy()
    xs = x.double().numpy()
    assert out.terms["mse"].item() == pytest.approx(
        ((xs - (f @ W_dec + b_dec)) ** 2).sum(1).mean(), rel=1e-5
    )
    l1 = 0.7 * (np.maximum(gate, 0) * np.linalg.norm(W_dec, axis=1)).sum(1).mean()
    assert out.terms["l1"].item() == pytest.approx(l1, rel=1e-5)
    through_gate = np.maximum(gate, 0) @ W_dec + b_dec
    assert out.terms["gate_aux"].item() == pytest.approx(
        ((xs - through_gate) ** 2).sum(1).mean(), rel=1e-5
    )
    gate_only = sae.arch.penalty(sae, None, sae.pre_activation(x), x)["gate_aux"]
    gate_only.backward()
    assert (
        sae.W_dec.grad is None and sae.b_dec.grad is not None
    )  # b_dec only through the encoder input
    assert (
        sae.W_enc.grad.abs().sum() > 0
        and sae.b_gate.grad.abs().sum() > 0
        and sae.r_mag.grad is None
    )


def test_saelens_names_export_and_import(tmp_path):
    sae = _sae()
    sae.save(tmp_path / "own")
    assert set(load_file(str(tmp_path / "own" / "sae.safetensors"))) == {
        "W_enc",
        "b_gate",
        "r_mag",
        "b_mag",
        "W_dec",
        "b_dec",
    }
    export(sae, tmp_path / "lens", "saelens")
    cfg = json.loads((tmp_path / "lens" / "cfg.json").read_text())
    assert cfg["architecture"] == "gated"
    x = torch.randn(30, 16)
    for path in (tmp_path / "own", tmp_path / "lens"):
        torch.testing.assert_close(
            SAE.load_any(path).encode(x), sae.encode(x), rtol=1e-5, atol=1e-6
        )


def test_training_lowers_the_error_and_a_larger_l1_gives_sparser_codes():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(8192, 16, generator=gen) @ torch.randn(16, 16, generator=gen)
    l0 = {}
    for lam in (0.1, 3.0):
        sae = SAE(SAEConfig(arch="gated", d_in=16, d_sae=64, l1_coefficient=lam), seed=0)
        before = evaluate(sae, x)["nmse"]
        train(sae, x, TrainConfig(batch_size=512, total_tokens=2**15, lr=3e-3, progress=False))
        after = evaluate(sae, x)
        assert after["nmse"] < before
        l0[lam] = after["l0"]
    assert l0[3.0] < l0[0.1]


def test_a_sweep_over_the_new_and_old_architectures(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(
        sources,
        "DEMO",
        {"n_tokens": 5000, "d_in": 16, "n_features": 32, "max_active": 8, "train_tokens": 2048},
    )
    out = tmp_path / "sweep"
    cli.main(
        [
            "sweep",
            "--synthetic",
            "--archs",
            "topk,batchtopk,matryoshka,gated",
            "--k",
            "4",
            "--expansion",
            "2",
            "--batch-size",
            "256",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    rows = json.loads((out / "results.json").read_text())
    assert sorted(r["name"] for r in rows) == [
        "batchtopk-k4-x2-per_token-s0",
        "gated-l1-5-x2-per_token-s0",
        "matryoshka-k4-x2-per_token-s0",
        "topk-k4-x2-per_token-s0",
    ]
    assert all(0 < r["nmse"] < 2 for r in rows)
    widths = SAE.load(out / "matryoshka-k4-x2-per_token-s0").cfg.matryoshka_widths
    assert widths == [2, 4, 8, 16, 32]
