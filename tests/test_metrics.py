"""evaluate() against numpy on random data."""

import numpy as np
import pytest
import torch
from conftest import make_sae, randomize

from saelab import evaluate


@pytest.mark.parametrize("input_scaling", ["none", "per_token"])
def test_metrics_match_numpy(input_scaling):
    sae = randomize(make_sae("topk", k=6, input_scaling=input_scaling))
    x = torch.randn(1000, 16, dtype=torch.float64).float() * 4 + 10  # a large mean stresses fvu
    metrics = evaluate(sae, x, batch_size=128)  # uneven last batch on purpose

    f = sae.encode(x).detach().numpy().astype(np.float64)
    xh = sae(x).detach().numpy().astype(np.float64)
    xn = x.numpy().astype(np.float64)
    err = ((xn - xh) ** 2).sum(1)
    assert metrics["n_tokens"] == 1000
    assert metrics["nmse"] == pytest.approx(np.mean(err / (xn**2).sum(1)), rel=1e-6)
    fvu = err.sum() / ((xn - xn.mean(0)) ** 2).sum()
    assert metrics["fvu"] == pytest.approx(fvu, rel=1e-6)
    assert metrics["explained_variance"] == pytest.approx(1 - fvu, rel=1e-6)
    assert metrics["mse"] == pytest.approx(((xn - xh) ** 2).mean(), rel=1e-6)
    cos = (xn * xh).sum(1) / np.linalg.norm(xn, axis=1) / np.linalg.norm(xh, axis=1)
    assert metrics["cosine_similarity"] == pytest.approx(cos.mean(), rel=1e-6)
    ratio = np.linalg.norm(xh, axis=1) / np.linalg.norm(xn, axis=1)
    assert metrics["l2_ratio"] == pytest.approx(ratio.mean(), rel=1e-6)
    bias = (xh**2).sum(1).mean() / (xn * xh).sum(1).mean()
    assert metrics["relative_reconstruction_bias"] == pytest.approx(bias, rel=1e-6)
    l0 = (f != 0).sum(1)
    assert metrics["l0"] == pytest.approx(l0.mean())
    assert metrics["l0_histogram"] == np.bincount(l0).tolist()
    density = (f != 0).mean(0)
    assert metrics["silent_fraction"] == pytest.approx((density == 0).mean())
    assert metrics["dense_fraction"] == pytest.approx((density > 0.1).mean())


def test_max_tokens_and_empty_and_nan():
    sae = randomize(make_sae("topk"))
    assert evaluate(sae, torch.randn(500, 16), batch_size=64, max_tokens=100)["n_tokens"] == 100
    bad = torch.randn(50, 16)
    bad[7, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        evaluate(sae, bad)
    with pytest.raises(ValueError, match="d_in=8, but the SAE has d_in=16"):
        evaluate(sae, torch.randn(5, 8))


def test_perfect_reconstruction_has_zero_error():
    sae = make_sae("relu", d_in=4, d_sae=8)
    with torch.no_grad():
        eye = torch.eye(4)
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
    m = evaluate(sae, torch.randn(300, 4))
    assert m["nmse"] == pytest.approx(0, abs=1e-12) and m["explained_variance"] == pytest.approx(1)
    assert m["cosine_similarity"] == pytest.approx(1) and m[
        "relative_reconstruction_bias"
    ] == pytest.approx(1)


@pytest.mark.parametrize("scaling", ["none", "expected_norm", "per_token"])
def test_evaluate_reports_the_input_scaling_and_per_token_is_flagged(scaling):
    from saelab.eval.full import PER_TOKEN_NOTE, summary_lines

    sae = randomize(make_sae("topk", input_scaling=scaling))
    m = evaluate(sae, torch.randn(200, 16))
    assert m["input_scaling"] == scaling
    assert (PER_TOKEN_NOTE in summary_lines(m)) == (scaling == "per_token")
