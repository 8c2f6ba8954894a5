"""Sweeps: grid expansion, TOML grids, one pass per seed, the results table, resume, and the CLI."""

import csv
import json
import re

import pytest
import torch
from conftest import cli_error
from tiny_models import tiny_model

from saelab import SAE, TrainConfig, cli, evaluate, sources, train
from saelab.config import ConfigError
from saelab.data.activations import open_source
from saelab.eval import downstream as downstream_module
from saelab.eval.downstream import ablation_losses, downstream
from saelab.eval.registry import EvalContext
from saelab.eval.saebench.sparse_probing import SparseProbingConfig
from saelab.sweep import Point, expand, read_grid_file, run_sweep, union
from saelab.train import loop


def test_grid_expansion_uses_each_architectures_own_knob():
    points = expand(
        {
            "arch": ["topk", "relu", "topafa", "jumprelu"],
            "k": [4, 8],
            "l1_coefficient": [1, 2, 3],
            "afa_coefficient": [0.1],
            "seed": [0, 1],
        }
    )
    by_arch = {
        arch: [p for p in points if p.arch == arch]
        for arch in ("topk", "relu", "topafa", "jumprelu")
    }
    assert [len(v) for v in by_arch.values()] == [4, 6, 2, 4]
    assert {(p.knob, p.value) for p in by_arch["topk"]} == {("k", 4), ("k", 8)}
    assert {(p.knob, p.value) for p in by_arch["relu"]} == {
        ("l1_coefficient", v) for v in (1, 2, 3)
    }
    assert all((p.knob, p.value) == ("afa_coefficient", 0.1) for p in by_arch["topafa"])
    jump = expand({"arch": ["jumprelu"], "l0_coefficient": [0.5]})
    assert jump == [Point("jumprelu", 8, "per_token", 0, knob="l0_coefficient", value=0.5)]
    assert jump[0].sae_config(16).k is None
    with pytest.raises(ConfigError, match="k would be ignored"):  # l0_coefficient wins over k
        expand({"arch": ["jumprelu"], "l0_coefficient": [0.5], "k": [4, 8]})
    assert len({p.name for p in points}) == len(points)
    assert (
        Point("batchtopk", 8, "per_token", 0, knob="k", value=32).name
        == "batchtopk-k32-x8-per_token-s0"
    )
    assert (
        Point("relu", 8, "per_token", 0, knob="l1_coefficient", value=3).name
        == "relu-l1-3-x8-per_token-s0"
    )


def test_a_grid_varies_a_recipe_and_names_it():
    """topafa_recipe is an axis: the authors' recipe beside saelab's variant, named apart; the
    default keeps the old name; a value it does not have is an error before any work."""
    points = expand(
        {
            "arch": ["topafa", "topk"],
            "afa_coefficient": [0.0625],
            "topafa_recipe": ["authors", "saelab"],
        }
    )
    names = sorted(p.name for p in points)
    assert names == [
        "topafa-afa-0.0625-authors-x8-per_token-s0",
        "topafa-afa-0.0625-x8-per_token-s0",
        "topk-k32-x8-per_token-s0",
    ]
    authors = next(p for p in points if p.variant)
    assert authors.sae_config(16).topafa_recipe == "authors"
    assert authors.row()["topafa_recipe"] == "authors"
    with pytest.raises(ConfigError, match="unknown topafa_recipe 'paper'"):
        expand({"arch": "topafa", "topafa_recipe": "paper"})


def test_a_grid_varies_any_other_setting_of_its_architectures():
    """Any setting besides the knob is an axis (the JumpReLU paper's bandwidth beside saelab's):
    named by its label or its name where it is not the default, set in the SAEConfig, shared by
    every architecture that takes it, and an error where none of the grid's takes it."""
    points = expand(
        {"arch": "jumprelu", "l0_coefficient": [0.002], "jumprelu_bandwidth": [0.001, 0.05]}
    )
    assert [p.name for p in points] == [
        "jumprelu-l0c-0.002-bw0.001-x8-per_token-s0",
        "jumprelu-l0c-0.002-x8-per_token-s0",
    ]
    assert points[0].sae_config(16).jumprelu_bandwidth == 0.001
    assert points[1].sae_config(16).jumprelu_bandwidth == 0.05
    shared = expand({"arch": ["topk", "batchtopk"], "k": [8], "aux_k": [64]})
    assert [p.name for p in shared] == [
        "topk-k8-aux_k-64-x8-per_token-s0",
        "batchtopk-k8-aux_k-64-x8-per_token-s0",
    ]
    assert all(p.sae_config(16).aux_k == 64 for p in shared)
    with pytest.raises(ConfigError, match="jumprelu_bandwidth would be ignored"):
        expand({"arch": "topk", "jumprelu_bandwidth": [0.001]})


def test_union_keeps_each_point_once_and_bad_axes_are_named():
    grids = [{"arch": ["topk", "batchtopk"], "k": [4]}, {"arch": ["topk"], "k": [4, 8]}]
    assert [p.name for p in union(grids)] == [
        "topk-k4-x8-per_token-s0",
        "batchtopk-k4-x8-per_token-s0",
        "topk-k8-x8-per_token-s0",
    ]
    with pytest.raises(ConfigError, match="unknown sweep axis kk"):
        expand({"kk": [1]})
    with pytest.raises(ConfigError, match="unknown arch 'ladder'"):
        expand({"arch": ["ladder"]})
    with pytest.raises(ConfigError, match="unknown input_scaling"):
        expand({"input_scaling": ["layernorm"]})


def test_toml_grids_share_top_level_axes(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(
        'expansion = 4\n[[grid]]\narch = ["topk", "batchtopk"]\nk = [16, 32]\n'
        'input_scaling = ["per_token", "expected_norm"]\n[[grid]]\narch = "relu"\n'
        "l1_coefficient = [2, 5]\n"
    )
    points = union(read_grid_file(path))
    assert len(points) == 10 and {p.expansion for p in points} == {4}
    assert {p.input_scaling for p in points if p.arch == "relu"} == {"per_token"}
    path.write_text("arch = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_grid_file(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_grid_file(tmp_path / "missing.toml")


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(6144, 16, generator=gen) * torch.linspace(0.5, 2, 16)


def _cfg(**kw):
    return TrainConfig(
        **{"batch_size": 512, "total_tokens": 4096, "lr": 1e-3, "progress": False, **kw}
    )


def test_sweep_points_equal_separately_trained_saes(data, tmp_path):
    train_source, eval_source = open_source(data).split(1024)
    points = union(
        [{"arch": ["topk", "batchtopk", "relu"], "k": [2, 4], "expansion": [2], "seed": [0, 1]}]
    )
    rows = run_sweep(points, train_source, eval_source, tmp_path, _cfg())
    assert len(rows) == 10
    table = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [r["name"] for r in table] == [p.name for p in points]
    assert json.loads((tmp_path / "results.json").read_text()) == rows
    for name in ("pareto_nmse.png", "pareto_ev.png", "pareto_mse.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "pareto_ce.png").exists()  # no model, no CE

    # one point trained alone on the same data, seed and settings gives the same SAE and metrics
    point = Point("batchtopk", 2, "per_token", 1, knob="k", value=4)
    alone = SAE(point.sae_config(16), seed=1)
    train(alone, train_source, _cfg(seed=1))
    swept = SAE.load(tmp_path / point.name)
    torch.testing.assert_close(swept.W_dec, alone.W_dec)
    row = next(r for r in rows if r["name"] == point.name)
    assert row["nmse"] == pytest.approx(evaluate(alone.eval(), eval_source)["nmse"], rel=1e-6)
    assert (row["train_tokens"], row["d_in"], row["d_sae"]) == (4096, 16, 32)


def test_interrupted_sweep_resumes_to_the_same_results(data, tmp_path, monkeypatch):
    train_source, eval_source = open_source(data).split(1024)
    points = union([{"arch": ["topk", "jumprelu"], "k": [4], "expansion": [2]}])
    cfg = _cfg(checkpoint_every_tokens=1024, out_dir=str(tmp_path))
    reference = run_sweep(points, train_source, eval_source, tmp_path / "whole", cfg)

    steps = {"n": 0}
    original = loop.Trainer.train_step

    def dies_at_step_5(self, x):
        steps["n"] += 1
        if steps["n"] > 2 * 5:  # two SAEs per step
            raise KeyboardInterrupt
        return original(self, x)

    monkeypatch.setattr(loop.Trainer, "train_step", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(points, train_source, eval_source, tmp_path / "cut", cfg)
    assert all((tmp_path / "cut" / p.name / "checkpoint.pt").is_file() for p in points)
    steps["n"] = -1000
    resumed = run_sweep(points, train_source, eval_source, tmp_path / "cut", cfg)
    assert (
        steps["n"] == -1000 + 2 * 4
    )  # from the checkpoint at step 4 to step 8, not from the start
    for a, b in zip(reference, resumed):
        assert a["nmse"] == pytest.approx(b["nmse"], rel=1e-6) and a["l0"] == pytest.approx(
            b["l0"], rel=1e-6
        )

    # a finished point is neither retrained nor re-evaluated; one that lost its eval.json is
    # evaluated again
    (tmp_path / "cut" / points[1].name / "eval.json").unlink()
    monkeypatch.setattr(loop.Trainer, "train_step", original)
    monkeypatch.setattr("saelab.sweep.train_many", lambda *a: pytest.fail("nothing should train"))
    again = run_sweep(points, train_source, eval_source, tmp_path / "cut", cfg)
    assert again[1]["nmse"] == pytest.approx(resumed[1]["nmse"], rel=1e-6)


def test_finished_points_with_other_settings_are_refused(data, tmp_path):
    train_source, eval_source = open_source(data).split(1024)
    points = union([{"arch": ["topk"], "k": [4], "expansion": [2]}])
    run_sweep(points, train_source, eval_source, tmp_path, _cfg())
    with pytest.raises(ConfigError, match="different settings than this sweep: lr"):
        run_sweep(
            points,
            train_source,
            eval_source,
            tmp_path,
            TrainConfig(batch_size=512, total_tokens=4096, lr=2e-3, progress=False),
        )
    with pytest.raises(ConfigError, match="grid is empty"):
        run_sweep([], train_source, eval_source, tmp_path, _cfg())


def test_sweep_with_a_model_reports_ce_and_computes_ablations_once(tmp_path, monkeypatch):
    model = tiny_model("llama").eval()
    ids = torch.randint(1, 128, (4, 12))
    from saelab.data.hooks import harvest

    with torch.no_grad():
        acts = harvest(model, torch.randint(1, 128, (64, 16)), 0, "resid_post").reshape(-1, 32)
    train_source, eval_source = open_source(acts).split(256)
    calls = {"n": 0}
    original = downstream_module.ablation_losses

    def counted(*args, **kw):
        calls["n"] += 1
        return original(*args, **kw)

    monkeypatch.setattr("saelab.eval.full.ablation_losses", counted)
    points = union([{"arch": ["topk", "batchtopk"], "k": [2, 4], "expansion": [2]}])
    rows = run_sweep(
        points,
        train_source,
        eval_source,
        tmp_path,
        _cfg(total_tokens=512, batch_size=128),
        context=EvalContext(lm=model, layer=0, site="resid_post", input_ids=ids),
    )
    assert calls["n"] == 1
    assert all("ce_degradation" in row and "kl" in row for row in rows)
    assert (tmp_path / "pareto_ce.png").is_file()
    # the precomputed ablations give the same numbers as computing them inside downstream
    sae = SAE.load(tmp_path / points[0].name)
    assert downstream(sae, model, ids, 0, ablations=ablation_losses(model, ids, 0)) == downstream(
        sae, model, ids, 0
    )


def test_sweep_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(
        sources,
        "DEMO",
        {"n_tokens": 5000, "d_in": 16, "n_features": 32, "max_active": 8, "train_tokens": 2048},
    )
    grid = tmp_path / "grid.toml"
    grid.write_text(
        'expansion = 2\n[[grid]]\narch = ["topk", "batchtopk"]\nk = [2, 4]\n'
        '[[grid]]\narch = "relu"\nl1_coefficient = [1, 3]\n'
    )
    out = tmp_path / "sweep"
    cli.main(
        [
            "sweep",
            "--synthetic",
            "--config",
            str(grid),
            "--batch-size",
            "256",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    printed = capsys.readouterr().out
    assert "6 to train in 1 pass" in printed and "relu-l1-3-x2-per_token-s0" in printed
    rows = json.loads((out / "results.json").read_text())
    assert {r["arch"] for r in rows} == {"topk", "batchtopk", "relu"}
    cli.main(
        [
            "sweep",
            "--synthetic",
            "--config",
            str(grid),
            "--batch-size",
            "256",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert "6 done, 0 to evaluate, 0 to train" in capsys.readouterr().out
    error = cli_error(
        capsys, ["sweep", "--synthetic", "--config", str(grid), "--k", "4", "--out", str(out)]
    )
    assert re.search("not both", error)
    error = cli_error(capsys, ["sweep", "--synthetic", "--archs", "topk,ladder", "--out", str(out)])
    assert "invalid choice ['ladder']" in error


def _probing_setup(tmp_path):
    """A tiny model, activations of it split into train and held-out sources, and a labelled
    file with two separable topics."""
    from tiny_models import tiny_lm

    from saelab.data.hooks import harvest

    lm = tiny_lm("llama")
    with torch.no_grad():
        acts = harvest(lm.model, torch.randint(4, 104, (64, 16)), 0, "resid_post").reshape(-1, 32)
    probe = tmp_path / "p.jsonl"
    probe.write_text(
        "\n".join(
            json.dumps(
                {"text": " ".join(f"w{(i % 2) * 50 + j}" for j in range(10)), "label": i % 2}
            )
            for i in range(60)
        )
    )
    return lm, *open_source(acts).split(256), probe


def test_sweep_runs_the_interpretability_evals_into_its_table(tmp_path):

    lm, train_source, eval_source, probe = _probing_setup(tmp_path)
    context = EvalContext(lm=lm, layer=0, site="resid_post", progress=False)
    configs = {"sparse_probing": SparseProbingConfig(dataset_names=[str(probe)], k_values=[1, 2])}
    points = union([{"arch": ["topk"], "k": [2, 4], "expansion": [2]}])
    out = tmp_path / "sweep"
    rows = run_sweep(
        points,
        train_source,
        eval_source,
        out,
        _cfg(total_tokens=512, batch_size=128),
        context=context,
        configs=configs,
        evals=["core", "sparse_probing"],
    )
    assert all(
        0 <= row["sae_top_1_test_accuracy"] <= 1 and "llm_test_accuracy" in row for row in rows
    )
    assert all((out / p.name / "eval_results" / "sparse_probing.json").is_file() for p in points)
    assert "sae_top_2_test_accuracy" in (out / "results.csv").read_text().splitlines()[0]
    with pytest.raises(ConfigError, match="absorption evaluation needs a model"):
        run_sweep(
            points,
            train_source,
            eval_source,
            out,
            _cfg(total_tokens=512, batch_size=128),
            evals=["core", "absorption"],
        )


def test_sweep_reruns_an_eval_only_when_its_settings_change(tmp_path, monkeypatch):
    import saelab.sweep as sweep_module

    lm, train_source, eval_source, probe = _probing_setup(tmp_path)
    points = union([{"arch": ["topk"], "k": [2], "expansion": [2]}])
    calls = []
    original = sweep_module.evaluate_with

    def counted(evaluation, *args):
        if evaluation.name != "core":
            calls.append(evaluation.name)
        return original(evaluation, *args)

    monkeypatch.setattr(sweep_module, "evaluate_with", counted)
    for k_values in ([1], [1], [1, 2]):
        context = EvalContext(lm=lm, layer=0, progress=False)
        configs = {
            "sparse_probing": SparseProbingConfig(dataset_names=[str(probe)], k_values=k_values)
        }
        run_sweep(
            points,
            train_source,
            eval_source,
            tmp_path / "s",
            _cfg(total_tokens=256, batch_size=128),
            context=context,
            configs=configs,
            evals=["core", "sparse_probing"],
        )
    assert calls == ["sparse_probing", "sparse_probing"]  # first run, then the changed k_values


def test_a_grid_can_name_evaluations_for_its_own_points(tmp_path):
    from saelab.sweep import grid_evals

    path = tmp_path / "sweep.toml"
    path.write_text(
        '[[grid]]\narch = ["topk", "batchtopk"]\nk = [16, 32]\n'
        '[[grid]]\narch = "batchtopk"\nk = 32\nevals = ["absorption", "sparse_probing"]\n'
    )
    grids = read_grid_file(path)
    assert len(union(grids)) == 4  # the second grid only repeats a point
    evals = grid_evals(grids, ["core"])
    assert {p.name: v for p, v in evals.items() if v != ["core"]} == {
        "batchtopk-k32-x8-per_token-s0": ["core", "absorption", "sparse_probing"]
    }
    with pytest.raises(ValueError, match="unknown evaluation 'absorb'"):
        grid_evals([{"arch": "topk", "evals": "absorb"}])


def test_sweep_runs_per_point_evals_only_on_their_points(tmp_path):

    lm, train_source, eval_source, probe = _probing_setup(tmp_path)
    context = EvalContext(lm=lm, layer=0, site="resid_post", progress=False)
    configs = {"sparse_probing": SparseProbingConfig(dataset_names=[str(probe)], k_values=[1])}
    points = union([{"arch": ["topk"], "k": [2, 4], "expansion": [2]}])
    rows = run_sweep(
        points,
        train_source,
        eval_source,
        tmp_path / "s",
        _cfg(total_tokens=256, batch_size=128),
        context=context,
        configs=configs,
        evals={points[0]: ["sparse_probing"], points[1]: []},
    )
    written = [
        (tmp_path / "s" / p.name / "eval_results" / "sparse_probing.json").is_file() for p in points
    ]
    assert written == [True, False]
    assert "sae_top_1_test_accuracy" in rows[0] and "sae_top_1_test_accuracy" not in rows[1]


def test_each_pass_is_evaluated_as_soon_as_it_is_trained_smallest_first(
    data, tmp_path, monkeypatch
):
    import saelab.sweep as sweep_module

    train_source, eval_source = open_source(data).split(1024)
    points = union(
        [
            {"arch": ["topk", "relu"], "k": [4], "expansion": [2], "seed": [0]},
            {"arch": ["topk"], "k": [4], "expansion": [2], "seed": [1]},
        ]
    )
    original, passes = sweep_module.train_many, []

    def second_pass_dies(saes, *args, **kw):
        if passes:
            raise KeyboardInterrupt
        passes.append(len(saes))
        return original(saes, *args, **kw)

    monkeypatch.setattr(sweep_module, "train_many", second_pass_dies)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(points, train_source, eval_source, tmp_path, _cfg())
    assert passes == [1]  # the seed-1 pass (one SAE) before the seed-0 pass (two)
    assert [(tmp_path / p.name / "eval.json").is_file() for p in points] == [False, False, True]


def test_sweep_records_the_heldout_curve(data, tmp_path):
    from saelab import rundir

    train_source, eval_source = open_source(data).split(1024)
    points = union([{"arch": ["topk"], "k": [4], "expansion": [2], "seed": [0, 1]}])
    run_sweep(points, train_source, eval_source, tmp_path, _cfg(eval_every_tokens=2048))
    curve = [
        r["tokens"] for r in rundir.read_history(tmp_path / points[0].name) if "heldout_nmse" in r
    ]
    assert curve == [2048, 4096]
    assert (tmp_path / "curves_nmse.png").read_bytes()[:4] == b"\x89PNG"
    summary = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert [(r["name"], r["n_seeds"]) for r in summary] == [
        ("topk-k4-x2-per_token", "2")
    ] and summary[0]["nmse_std"]


def test_seed_summary_is_the_mean_and_sample_std_over_seeds():
    import numpy as np

    from saelab.sweep import seed_summary

    rows = [
        {
            "name": f"topk-k4-x2-per_token-s{s}",
            "arch": "topk",
            "seed": s,
            "k": 4,
            "nmse": v,
            "l0": 4.0,
        }
        for s, v in enumerate([0.1, 0.2, 0.4])
    ] + [{"name": "relu-l1-3-x2-per_token-s0", "arch": "relu", "seed": 0, "nmse": 0.5, "l0": 9.0}]
    topk, relu = seed_summary(rows)
    assert (topk["name"], topk["seeds"], topk["n_seeds"]) == ("topk-k4-x2-per_token", "0 1 2", 3)
    assert (topk["k"], topk["l0"]) == (4, 4.0)
    assert topk["nmse"] == pytest.approx(np.mean([0.1, 0.2, 0.4]))
    assert topk["nmse_std"] == pytest.approx(np.std([0.1, 0.2, 0.4], ddof=1))
    assert "l0_std" not in topk and "nmse_std" not in relu and relu["nmse"] == 0.5
