"""AFA statistics, decoder quasi-orthogonality and the plots, against independent computations."""

import numpy as np
import pytest
import torch
from conftest import make_sae, randomize

from saelab import afa_stats
from saelab.eval import plots
from saelab.eval.afa import decoder_orthogonality, summarize
from saelab.eval.plots import density_plot, l0_histogram_plot, pareto_plot, zf_plot


@pytest.mark.parametrize("input_scaling", ["none", "per_token"])
def test_afa_stats_match_numpy(input_scaling):
    sae = randomize(make_sae("topk", k=5, input_scaling=input_scaling))
    with torch.no_grad():
        sae.W_dec *= torch.rand(64, 1) + 0.5  # decoder norms != 1 must be accounted for
    x = torch.randn(40, 16) * 3
    got = afa_stats(sae, x)
    f = sae.encode(x).detach().numpy().astype(np.float64)
    W, b = (
        sae.W_dec.detach().numpy().astype(np.float64),
        sae.b_dec.detach().numpy().astype(np.float64),
    )
    z = x.numpy().astype(np.float64)
    to_raw = 1.0
    if input_scaling == "per_token":
        to_raw = z.std(1, ddof=1) + 1e-5
        z = (z - z.mean(1, keepdims=True)) / to_raw[:, None]
    f_tilde = np.concatenate(
        [f * np.linalg.norm(W, axis=1), np.broadcast_to(np.linalg.norm(b), (40, 1))], axis=1
    )
    nz, nf = np.linalg.norm(z, axis=1), np.linalg.norm(f_tilde, axis=1)
    # norms in raw input units (per_token: times each token's std); eps_LBO is scale-free
    np.testing.assert_allclose(got["norm_z"], nz * to_raw, rtol=1e-4)
    np.testing.assert_allclose(got["norm_f_tilde"], nf * to_raw, rtol=1e-4)
    np.testing.assert_allclose(
        got["eps_lbo"], np.abs(nz**2 - nf**2) / (63 * nf**2), rtol=1e-3, atol=1e-9
    )
    s = summarize(got)
    assert s["eps_lbo_median"] == pytest.approx(np.median(got["eps_lbo"].numpy()), rel=1e-5)


def test_per_token_norms_are_in_raw_units_and_spread():
    """The ZF plot of a per_token SAE is not a vertical line at sqrt(d_in)."""
    sae = randomize(make_sae("topk", k=5, input_scaling="per_token"))
    x = torch.randn(200, 16) * torch.logspace(-1, 2, 200)[:, None]
    stats = afa_stats(sae, x)
    torch.testing.assert_close(
        stats["norm_z"], (x - x.mean(1, keepdim=True)).norm(dim=1), rtol=1e-4, atol=1e-4
    )
    assert stats["norm_z"].max() / stats["norm_z"].min() > 100
    expected_norm = randomize(
        make_sae("topk", k=5, input_scaling="expected_norm", input_scale=0.25)
    )
    torch.testing.assert_close(
        afa_stats(expected_norm, x)["norm_z"], x.norm(dim=1), rtol=1e-4, atol=1e-4
    )


def test_zf_plot_uses_log_axes_when_norms_span_decades(tmp_path):
    rng = np.random.default_rng(0)
    ordinary = rng.uniform(5, 10, 500)
    assert not zf_plot(ordinary, ordinary * 0.9, tmp_path / "linear.png")
    massive = np.concatenate(
        [ordinary, [800.0, 900.0, 1000.0]]
    )  # first-token norms 100x the median
    assert zf_plot(massive, massive * 0.9, tmp_path / "log.png")


def test_pareto_plot_uses_log_axes_when_values_span_decades(tmp_path, monkeypatch):
    """L0 16-1024 and NMSE 0.1-0.0007 (TopK up to large k) on log axes; a k 16-64 sweep, NMSE
    0.10-0.07, keeps a linear NMSE axis; a negative CE degradation keeps it linear too."""
    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig.axes[0]))
    wide = [{"arch": "topk", "l0": k, "nmse": v} for k, v in ((16, 0.1), (64, 0.07), (1024, 7e-4))]
    narrow = wide[:2] + [{"arch": "topk", "l0": 32, "nmse": 0.08}]
    negative = [{**row, "nmse": row["nmse"] - 0.08} for row in wide]
    for rows in (wide, narrow, negative):
        pareto_plot(rows, "nmse", "NMSE", tmp_path / "p.png", series=["arch"])
    assert [(ax.get_xscale(), ax.get_yscale()) for ax in drawn] == [
        ("log", "log"),
        ("linear", "linear"),
        ("log", "linear"),
    ]
    ticks = drawn[0].xaxis  # plain numbers, not '0' for an L0 of 0.2
    assert [ticks.get_major_formatter()(v, 0) for v in (0.2, 5.0, 1000.0)] == ["0.2", "5", "1000"]


def test_orthonormal_decoder_satisfies_the_bound_exactly():
    sae = make_sae("relu", d_in=8, d_sae=8)
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(8, 8))
        sae.W_dec.copy_(q)
        sae.W_enc.copy_(q.T)
    coords = torch.rand(
        10, 8
    )  # positive coordinates in the basis q: relu keeps them all, f = coords
    stats = afa_stats(sae, coords @ q)
    torch.testing.assert_close(stats["norm_f_tilde"], stats["norm_z"], rtol=1e-4, atol=1e-4)
    assert stats["eps_lbo"].max() < 1e-4


def test_decoder_orthogonality_in_blocks_equals_brute_force():
    W = torch.randn(300, 16)
    got = decoder_orthogonality(W, block=64)
    rows = W / W.norm(dim=1, keepdim=True)
    cos = (rows @ rows.T).abs().fill_diagonal_(0)
    assert got["decoder_max_abs_cos"] == pytest.approx(cos.max().item(), rel=1e-5)
    assert got["decoder_mean_abs_cos"] == pytest.approx(cos.sum().item() / (300 * 299), rel=1e-5)


def test_plots_are_valid_pngs(tmp_path):
    import matplotlib.image

    rng = np.random.default_rng(0)
    z = rng.uniform(1, 10, 500)
    zf_plot(z, z * rng.uniform(0.7, 1.1, 500), tmp_path / "zf.png")
    l0_histogram_plot([0, 5, 20, 9, 3], tmp_path / "l0.png", k=2)
    density_plot([0.0, 0.1, 0.01, 0.001], tmp_path / "d.png")
    for name in ("zf.png", "l0.png", "d.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(tmp_path / name)
        assert image.shape[0] > 200 and image.shape[1] > 300 and image.std() > 0.01


def test_zf_axis_names_what_z_is_for_the_scaling(tmp_path, monkeypatch):
    """A per_token SAE sees the token centred: its axis says ||x - mean(x)||, others ||x||."""
    from saelab.eval import plots

    labels = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: labels.append(fig.axes[0].get_xlabel()))
    z = np.linspace(1, 10, 50)
    zf_plot(z, z, tmp_path / "a.png", scaling="per_token")
    zf_plot(z, z, tmp_path / "b.png", scaling="none")
    assert labels[0].startswith("||z|| = ||x - mean(x)||") and labels[1].startswith("||z|| = ||x||")
