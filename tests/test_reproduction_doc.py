"""docs/reproduction.py: the seed statistics and interpolations behind REPRODUCTION.md's claims."""

import importlib.util
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from saelab import rundir

SPEC = importlib.util.spec_from_file_location(
    "reproduction", Path(__file__).parents[1] / "docs" / "reproduction.py"
)
reproduction = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(reproduction)


def _row(arch, k, seed, nmse, l0=None, expansion=8):
    return {
        "name": f"{arch}-k{k}-x{expansion}-per_token-s{seed}",
        "arch": arch,
        "k": k,
        "expansion": expansion,
        "seed": seed,
        "nmse": nmse,
        "l0": l0 or k,
        "method": arch,
    }


def test_batchtopk_and_topk_are_compared_paired_by_seed():
    topk, batch = [0.30, 0.32, 0.31], [0.29, 0.315, 0.30]
    rows = [_row("topk", 32, s, v) for s, v in enumerate(topk)]
    rows += [_row("batchtopk", 32, s, v) for s, v in enumerate(batch)]
    rows.reverse()  # pairing is by seed, not by order
    differences, p = reproduction.paired(rows, "nmse", 32, 8)
    assert sorted(differences) == pytest.approx(sorted(np.subtract(batch, topk)))
    # an independent paired t: mean / (sd / sqrt(n)) with n - 1 degrees of freedom
    d = np.subtract(batch, topk)
    t = d.mean() / (d.std(ddof=1) / np.sqrt(3))
    assert p == pytest.approx(2 * stats.t.sf(abs(t), df=2))
    assert reproduction.verdict(differences, p) == (
        f"BatchTopK lower (p = {p:.2g})" if p < 0.05 else f"not beyond seed noise (p = {p:.2g})"
    )
    assert reproduction.verdict([-0.1, -0.1001, -0.0999], 0.001).startswith("BatchTopK lower")
    assert reproduction.verdict([0.1], float("nan")) == "one seed: no test"
    assert reproduction.paired(rows, "nmse", 64, 8) is None


def test_metrics_at_equal_l0_interpolate_in_log_l0_over_seed_means():
    rows = [_row("topk", 16, s, 0.4 + 0.01 * s) for s in range(2)] + [
        _row("topk", 64, s, 0.2) for s in range(2)
    ]
    # halfway in log L0 between 16 and 64 is 32: halfway between the seed means 0.405 and 0.2
    assert reproduction.at_l0(rows, "topk", "nmse", 32) == pytest.approx((0.405 + 0.2) / 2)
    assert (
        reproduction.at_l0(rows, "topk", "nmse", 8) is None
        and reproduction.at_l0(rows, "relu", "nmse", 32) is None
    )


def test_spread_is_the_mean_and_sample_std():
    assert reproduction.spread([1.0, 2.0, 3.0]) == "2 ± 1" and reproduction.spread([0.25]) == "0.25"
    assert reproduction.spread([]) == ""


def test_wall_time_sums_invocations_to_their_end_or_last_file(tmp_path):
    sweep, log = tmp_path / "sweep", tmp_path / "sweep.log"
    sweep.mkdir()
    now = time.time()
    stamp = lambda t: time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(t))  # noqa: E731
    # first invocation stopped without an end line; its last file was written 600 s after its start
    (sweep / "checkpoint.pt").write_text("x")
    os.utime(sweep / "checkpoint.pt", (now - 3000 + 600, now - 3000 + 600))
    log.write_text(
        f"start {stamp(now - 3000)}\nstart {stamp(now - 1000)} cfg\n"
        f"train: 99%\rend rc=0 {stamp(now - 100)}\n"
    )
    assert (
        reproduction.wall_time(reproduction.invocations(log, sweep))
        == f"{(600 + 900) / 3600:.2f} h in 2 invocation(s)"
    )


def test_wall_time_pairs_named_ends_and_counts_overlapping_invocations_once(tmp_path):
    sweep, log = tmp_path / "sweep", tmp_path / "sweep.log"
    sweep.mkdir()
    now = time.time()
    stamp = lambda t: time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(t))  # noqa: E731
    # a runs 0-1000 s; b starts inside it at 200 s and ends (naming itself) at 500 s; a's bare
    # end line comes last: union 1000 s, not 1300
    log.write_text(
        f"start {stamp(now - 1000)} a.toml\ntrain 5%\rstart {stamp(now - 800)} b.toml\n"
        f"end rc=0 {stamp(now - 500)} b.toml\ntrain 99%\rend rc=0 {stamp(now)}\n"
    )
    assert (
        reproduction.wall_time(reproduction.invocations(log, sweep))
        == f"{1000 / 3600:.2f} h in 2 invocation(s)"
    )


def test_sections_are_replaced_between_their_markers():
    text = "a\n<!-- begin t -->\nold\n<!-- end t -->\nb"
    assert (
        reproduction.replace_section(text, "t", "new")
        == "a\n<!-- begin t -->\nnew\n<!-- end t -->\nb"
    )
    with pytest.raises(SystemExit, match="no section u"):
        reproduction.replace_section(text, "u", "x")


def test_topk_at_an_l0_follows_its_log_l0_segments_and_extends_the_end_one_by_10_percent():
    rows = [_row("topk", k, 0, v) for k, v in ((16, 0.10), (32, 0.08), (64, 0.06))]
    assert reproduction.topk_at(rows, "nmse", 32, 0, 8) == pytest.approx(0.08)
    assert reproduction.topk_at(rows, "nmse", 16 * 2**0.5, 0, 8) == pytest.approx(0.09)
    # 5% beyond k = 64 along the 32-64 segment: 0.02 less per doubling
    assert reproduction.topk_at(rows, "nmse", 64 * 1.05, 0, 8) == pytest.approx(
        0.06 - 0.02 * np.log2(1.05)
    )
    assert reproduction.topk_at(rows, "nmse", 64 * 1.2, 0, 8) is None
    assert reproduction.topk_at(rows, "nmse", 32, 1, 8) is None  # no TopK of seed 1
    rows += [_row("batchtopk", 64, 0, 0.05, l0=64 * 1.05)]
    differences, p = reproduction.equal_l0_pairs(rows, "nmse", 64, 8)
    assert differences == pytest.approx([0.05 - (0.06 - 0.02 * np.log2(1.05))]) and np.isnan(p)
    # TopK at k 128 in seed 0 alone (for top-AFA) stays out of the seed-paired comparison
    rows += [_row("topk", k, 1, v) for k, v in ((16, 0.10), (32, 0.08), (64, 0.06))]
    rows += [_row("topk", 128, 0, 0.01)]
    assert reproduction.seeded_ks(rows, 8) == {16, 32, 64}
    assert reproduction.topk_at(rows, "nmse", 64 * 1.05, 0, 8) == pytest.approx(
        0.06 - 0.02 * np.log2(1.05)
    )


def test_methods_tell_jumprelu_modes_and_topafa_recipes_apart():
    assert reproduction.method({"arch": "jumprelu", "k": 32}) == "jumprelu target L0"
    assert reproduction.method({"arch": "jumprelu", "k": None}) == "jumprelu fixed λ"
    assert reproduction.method({"arch": "topafa", "topafa_recipe": "authors"}) == "topafa authors"
    assert reproduction.method({"arch": "topafa", "topafa_recipe": "saelab"}) == "topafa variant"
    assert reproduction.method({"arch": "batchtopk", "k": 32}) == "batchtopk"


def _jumprelu(name, l0, nmse, k=None, lam=None):
    mode = "jumprelu target L0" if k else "jumprelu fixed λ"
    row = {"name": name, "arch": "jumprelu", "method": mode, "k": k, "expansion": 8, "seed": 0}
    return row | {
        "l0": l0,
        "nmse": nmse,
        "l0_lambda": lam,
        "jumprelu_bandwidth": 0.05 if k else 1e-3,
    }


def test_jumprelu_table_sets_each_mode_beside_the_other_at_equal_l0():
    rows = [
        _jumprelu("target32", 34.4, 0.084, k=32, lam=1e-4),
        _jumprelu("target64", 60.0, 0.066, k=64, lam=0.0),
        _jumprelu("fixed-a", 20.0, 0.100, lam=0.004),
        _jumprelu("fixed-b", 50.0, 0.070, lam=0.002),
    ]
    table = reproduction.jumprelu_table(rows).splitlines()[2:]
    lines = {line.split(" | ")[0]: line.split(" | ") for line in table}
    # the controller at 34.4 against the fixed-λ runs, linear in log L0 between L0 20 and 50
    expected = 0.1 + (0.07 - 0.1) * np.log(34.4 / 20) / np.log(50 / 20)
    assert lines["| target32"][5] == "+7.5%" and lines["| target64"][5] == "-6.2%"
    assert lines["| target32"][7] == f"{expected:.4g}"
    assert lines["| target32"][2:4] == ["0.05", "0.0001"]
    # a fixed-λ run at L0 50 between the controllers' 34.4 and 60; no target of its own
    expected = 0.084 + (0.066 - 0.084) * np.log(50 / 34.4) / np.log(60 / 34.4)
    assert lines["| fixed-b"][7] == f"{expected:.4g}" and lines["| fixed-b"][5] == ""
    # outside the other mode's range: its nearest point, with its L0
    assert lines["| fixed-a"][7] == "(0.084 at L0 34.4)"


def test_training_failure_names_the_first_step_that_diverged_or_collapsed():
    fine = [{"step": s, "loss": 1.0, "l0": 30.0} for s in (10, 20)]
    assert reproduction.training_failure(fine + [{"step": 20, "heldout_nmse": 0.1}]) is None
    nan = fine + [{"step": 30, "loss": float("nan"), "l0": 30.0}, {"step": 40, "loss": None}]
    assert reproduction.training_failure(nan).startswith("diverged at step 30")
    assert reproduction.training_failure(fine[:1] + [{"step": 40, "loss": None, "l0": 0}]) == (
        "diverged at step 40 (loss None)"
    )
    collapsed = fine + [{"step": 30, "loss": 2.0, "l0": 1.2}, {"step": 40, "loss": 3.0, "l0": 1.0}]
    assert reproduction.training_failure(collapsed) == "collapsed at step 30 (L0 1.2)"


def test_topafa_table_reads_the_l0_it_picked_along_training(tmp_path):
    run = tmp_path / "topafa-afa-0.03125-authors-x8-per_token-s0"
    run.mkdir()
    steps = range(10, 81, 10)
    records = [{"step": s, "tokens": 4096 * s, "loss": 1.0, "l0": 900.0} for s in steps]
    records += [{"step": s, "tokens": 4096 * s, "heldout_l0": 16001.0 / s} for s in steps]
    (run / rundir.HISTORY).write_text("".join(json.dumps(r) + "\n" for r in records))
    row = {"name": run.name, "method": "topafa authors", "arch": "topafa", "expansion": 8}
    row |= {"afa_coefficient": 0.03125, "seed": 0, "l0": 25.0, "nmse": 0.05}
    rows = [row] + [_row("topk", k, 0, v) for k, v in ((16, 0.10), (32, 0.08))]
    rows[1]["ce_degradation"], rows[2]["ce_degradation"] = 0.4, 0.2
    cells = reproduction.topafa_table(tmp_path, rows).splitlines()[2].split(" | ")
    # after 1/8, 1/4, 1/2, 1 of the tokens, in whole latents from 100 on
    assert cells[1:4] == ["authors", "0.03125", "1600 / 800 / 400 / 200"]
    assert reproduction.l0_text(95.26) == "95.3"
    # TopK at the L0 it picked: linear in log L0 between k 16 and 32
    assert cells[6] == f"{0.1 + (0.08 - 0.1) * np.log(25 / 16) / np.log(2):.4g}"
    assert cells[8] == f"{0.4 + (0.2 - 0.4) * np.log(25 / 16) / np.log(2):.3g}"
    assert cells[-1] == "to the end |"


def test_interp_cells_carry_their_bootstrap_interval():
    row = {"mean_absorption_fraction_score": 0.171, "mean_absorption_fraction_score_low": 0.1}
    row["mean_absorption_fraction_score_high"] = 0.25
    assert reproduction.with_interval(row, "mean_absorption_fraction_score") == "0.171 [0.1, 0.25]"
    assert reproduction.with_interval({"x": 0.5}, "x") == "0.5"


def test_the_archive_keeps_evaluated_runs_without_weights_and_merges_invocations(tmp_path):
    """A pass of the sweep joins the archive: its evaluated runs without sae.safetensors, a
    trained-only run left out, the invocations of every pass kept (once), rows read back."""
    config = tmp_path / "grid.toml"
    config.write_text('arch = "topk"\nk = [8, 16]\n')
    sweep, archive = tmp_path / "runs" / "rep", tmp_path / "archive"
    done, trained = sweep / "topk-k8-x8-per_token-s0", sweep / "topk-k16-x8-per_token-s0"
    for run in (done, trained):
        (run / rundir.EVAL_RESULTS).mkdir(parents=True)
        (run / rundir.WEIGHTS).write_text("weights")
        (run / rundir.CFG).write_text(json.dumps({"arch": "topk", "k": 8, "metadata": {}}))
    (done / rundir.EVAL).write_text(json.dumps({"l0": 8.0, "nmse": 0.1}))
    (done / rundir.EVAL_RESULTS / "notes.json").write_text("{}")
    log = tmp_path / "runs" / "rep.log"
    log.write_text(
        "start 2026-12-03T04:00:00+00:00 pass1.toml\nend rc=0 2026-12-03T05:00:00+00:00\n"
    )
    assert reproduction.archive_runs(sweep, archive, config) == [done.name]
    kept = archive / done.name
    assert not (kept / rundir.WEIGHTS).exists() and not (archive / trained.name).exists()
    assert (kept / rundir.EVAL_RESULTS / "notes.json").is_file()
    log.write_text(
        "start 2026-12-04T04:00:00+00:00 pass2.toml\nend rc=0 2026-12-04T04:30:00+00:00\n"
    )
    reproduction.archive_runs(sweep, archive, config)
    reproduction.archive_runs(sweep, archive, config)  # the same pass twice counts once
    facts = reproduction.read_archive_facts(archive)
    assert reproduction.wall_time(facts["invocations"]) == "1.50 h in 2 invocation(s)"
    # a pass archived while it runs (to its last file), then again after its end: one invocation
    running = "start 2026-12-05T04:00:00+00:00 pass3.toml\n"
    log.write_text(running)
    last_file = datetime(2026, 12, 5, 4, 10, tzinfo=timezone.utc).timestamp()
    os.utime(done / rundir.EVAL, (last_file, last_file))
    reproduction.archive_runs(sweep, archive, config)
    log.write_text(running + "end rc=0 2026-12-05T05:00:00+00:00 pass3.toml\n")
    reproduction.archive_runs(sweep, archive, config)
    facts = reproduction.read_archive_facts(archive)
    assert reproduction.wall_time(facts["invocations"]) == "2.50 h in 3 invocation(s)"
    rows = reproduction.load_rows(archive, config)
    assert [(row["name"], row["l0"]) for row in rows] == [(done.name, 8.0)]


def test_archive_only_adds_a_pass_and_leaves_the_page(tmp_path, monkeypatch, capsys):
    config = tmp_path / "grid.toml"
    config.write_text('arch = "topk"\nk = [8]\n')
    run = tmp_path / "rep" / "topk-k8-x8-per_token-s0"
    (run / rundir.EVAL_RESULTS).mkdir(parents=True)
    (run / rundir.CFG).write_text(json.dumps({"arch": "topk", "k": 8, "metadata": {}}))
    (run / rundir.WEIGHTS).write_text("weights")
    (run / rundir.EVAL).write_text(json.dumps({"l0": 8.0, "nmse": 0.1}))
    docs, archive = tmp_path / "docs", tmp_path / "archive"
    argv = ["reproduction.py", str(tmp_path / "rep"), "--archive", str(archive)]
    argv += ["--config", str(config), "--docs", str(docs), "--archive-only"]
    monkeypatch.setattr("sys.argv", argv)
    reproduction.main()
    assert (archive / run.name / rundir.EVAL).is_file() and not docs.exists()
    assert "archived 1 evaluated run(s)" in capsys.readouterr().out


def test_against_k_legend_says_which_k_have_fewer_seeds():
    """TopK at k 128-1024 has one seed where k 16-64 have three; the legend says so."""
    assert reproduction.seed_counts([16, 32, 64], [3, 3, 3]) == "3 seeds"
    assert reproduction.seed_counts([16], [1]) == "1 seed"
    assert (
        reproduction.seed_counts([16, 32, 128, 1024], [3, 3, 1, 1])
        == "3 seeds at k 16, 32; 1 at k 128, 1024"
    )
