"""Class 4 of the hostile pass: numbers that break plotting or metrics. An SAE whose weights
overflow the metrics (1e38) is evaluated to the end: non-finite metrics are reported as such,
a plot whose values are not finite is skipped with a note, and the command succeeds. Sweep
plots leave NaN/Inf points out and say so."""

import json
import math

import pytest
import torch
from bad_world import EVAL

from saelab import SAE, SAEConfig, cli
from saelab.eval.plots import curve_plot, pareto_plot
from saelab.rundir import PLOTS

HUGE = 1e38


def huge(arch, tensor, **settings):
    """An SAE of `arch` on the world's activations whose `tensor` is scaled to HUGE."""

    def setup(w):
        sae = SAE(SAEConfig(arch=arch, d_in=16, d_sae=32, input_scaling="none", **settings), seed=0)
        with torch.no_grad():
            t = getattr(sae, tensor)
            t.copy_(torch.randn_like(t).sign() * HUGE if t.ndim == 1 else t / t.abs().max() * HUGE)
            if arch == "batchtopk":
                sae.threshold.fill_(0.1)  # as if trained: its inference threshold
        sae.initialized = True
        run = w / f"huge-{arch}-{tensor}"
        sae.save(run)
        return run

    return setup


CASES = [
    ("topk decoder", huge("topk", "W_dec", k=4)),
    ("topk encoder", huge("topk", "W_enc", k=4)),
    ("topk decoder bias", huge("topk", "b_dec", k=4)),
    ("topk encoder bias", huge("topk", "b_enc", k=4)),
    ("relu encoder", huge("relu", "W_enc")),
    ("relu decoder", huge("relu", "W_dec")),
    ("batchtopk decoder", huge("batchtopk", "W_dec", k=4)),
    ("jumprelu decoder", huge("jumprelu", "W_dec", k=4)),
    ("gated decoder", huge("gated", "W_dec")),
    ("topafa decoder", huge("topafa", "W_dec")),
]


@pytest.mark.parametrize("name, setup", CASES, ids=[c[0] for c in CASES])
def test_overflowing_metrics_are_reported_and_the_command_succeeds(world, capsys, name, setup):
    run = setup(world)
    cli.main([a.format(acts=world / "acts.npy") for a in [EVAL[0], str(run), *EVAL[2:]]])
    out = capsys.readouterr().out
    results = json.loads((run / "eval.json").read_text())  # NaN and Infinity as Python writes them
    for key in ("nmse", "fvu", "explained_variance", "relative_reconstruction_bias"):
        shown = "nan" if math.isnan(results[key]) else f"{results[key]:.4f}"
        assert f"{key:<30} {shown}" in out
    assert set(results["plots"]) | set(results["plots_skipped"]) == {"zf", "l0", "density"}
    assert all((run / file).is_file() for file in results["plots"].values())
    for key, why in results["plots_skipped"].items():
        assert f"{PLOTS[key]} not drawn: its values are not all finite" in out


def test_sweep_plots_leave_non_finite_points_out_and_say_so(tmp_path):
    rows = [
        {"arch": "topk", "l0": 8.0, "nmse": 0.2},
        {"arch": "topk", "l0": 16.0, "nmse": float("inf")},
        {"arch": "relu", "l0": float("nan"), "nmse": 0.3},
        {"arch": "relu", "l0": 20.0, "nmse": 0.1},
    ]
    pareto_plot(rows, "nmse", "NMSE", tmp_path / "p.png", series=["arch"])
    assert (tmp_path / "p.png").stat().st_size > 0
    curve_plot(
        {"a": [([1, 2, 3], [0.5, float("inf"), 0.2])]}, tmp_path / "c.png", "nmse", log_y=True
    )
    assert (tmp_path / "c.png").stat().st_size > 0


def test_every_class_has_eight_cases():
    assert len(CASES) >= 8
