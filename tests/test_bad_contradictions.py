"""Class 5 of the hostile pass: contradictions that used to run silently. A hook point that
contradicts the SAE's or the cache's, a sweep knob no architecture of the grid takes, an
implausible learning rate (a typo), and data made of all-zero rows: each an error naming the
contradiction."""

import json

import numpy as np
import pytest
import torch
from bad_world import EVAL, REPORT, SWEEP, TRAIN, check_case, copy_run, edit_json, npy, with_args

from saelab import cli
from saelab.data.activations import check_zero_rows
from saelab.errors import DataError


def recorded_run(w):
    """A copy of the world's SAE that records block 1 resid_post of the world's model."""
    run = copy_run(w, "run-hook")
    edit_json(
        run / "cfg.json",
        lambda c: {**c, "metadata": {"model": str(w / "model"), "layer": 1, "site": "resid_post"}},
    )


def toml(name, text):
    return lambda w: (w / name).write_text(text)


def zero_rows(share):
    x = np.random.default_rng(0).normal(size=(2000, 16)).astype(np.float32)
    x[: int(share * len(x))] = 0
    return np.random.default_rng(1).permutation(x)


ON_HOOK = ["eval", "{w}/run-hook", "--activations", "{acts}", "--no-progress"]
CASES = [
    ("eval at another layer", recorded_run, [*ON_HOOK, "--layer", "0"], "--layer 0 \\(the SAE records 1\\)"),
    ("eval at another site", recorded_run, [*ON_HOOK, "--site", "mlp_out"], "--site mlp_out \\(the SAE records resid_post\\)"),
    ("report at another layer", recorded_run, ["report", "{w}/run-hook", "--activations", "{cache}", "--layer", "2"], "--layer 2 \\(the SAE records 1\\)"),
    ("eval on a cache of another layer", lambda w: None, with_args(EVAL, "--layer", "0", activations="{cache}"), "layer: cache has 1, requested 0"),
    ("eval on a cache of another site", lambda w: None, with_args(EVAL, "--site", "mlp_out", activations="{cache}"), "site: cache has 'resid_post', requested 'mlp_out'"),
    ("report on a cache of another layer", lambda w: None, [*REPORT, "--layer", "0"], "layer: cache has 1, requested 0"),
    ("train on a cache of another site", lambda w: None, with_args(TRAIN, "--site", "attn_out", activations="{cache}"), "site: cache has 'resid_post'"),
    ("sweep l1 with top-k only", lambda w: None, [*SWEEP, "--arch", "topk,batchtopk", "--l1-coefficient", "3"], "l1_coefficient would be ignored"),
    ("sweep afa coefficient without topafa", lambda w: None, [*SWEEP, "--arch", "batchtopk", "--afa-coefficient", "0.03"], "afa_coefficient would be ignored"),
    ("sweep top-AFA recipe without topafa", lambda w: None, [*SWEEP, "--arch", "topk", "--topafa-recipe", "authors"], "--topafa-recipe do\\(es\\) not apply to --arch topk"),
    ("sweep k beside an l0 coefficient", lambda w: None, [*SWEEP, "--arch", "jumprelu", "--l0-coefficient", "1", "--k", "8"], "k would be ignored"),
    ("sweep grid with k on relu", toml("k-relu.toml", 'arch = "relu"\nk = [8, 16]\n'), [*SWEEP, "--config", "{w}/k-relu.toml"], "k would be ignored"),
    ("sweep grid with l1 on topk", toml("l1-topk.toml", '[[grid]]\narch = ["topk"]\nl1_coefficient = 3\n'), [*SWEEP, "--config", "{w}/l1-topk.toml"], "l1_coefficient would be ignored"),
    ("sweep grid expansion zero", toml("x0.toml", "expansion = 0\n"), [*SWEEP, "--config", "{w}/x0.toml"], "x0.toml, grid 1: expansion must be a positive integer, got 0"),
    ("sweep grid evals a number", toml("ev.toml", "[[grid]]\nevals = 5\n"), [*SWEEP, "--config", "{w}/ev.toml"], "ev.toml, grid 1: evals must be a name or a list of names"),
    ("sweep grid seed a fraction", toml("sd.toml", "seed = [0, 1.5]\n"), [*SWEEP, "--config", "{w}/sd.toml"], "sd.toml, grid 1: seed must be a non-negative integer, got 1.5"),
    ("train lr a typo", lambda w: None, with_args(TRAIN, "--lr", "2e3"), "lr=2000 is implausibly large.*--force-lr"),
    ("train lr one", lambda w: None, with_args(TRAIN, "--lr", "1"), "implausibly large"),
    ("sweep lr a typo", lambda w: None, [*SWEEP, "--lr", "5e2"], "lr=500 is implausibly large"),
    ("train on all-zero data", npy("zeros.npy", np.zeros((2000, 16), np.float32)), with_args(TRAIN, activations="{w}/zeros.npy"), "256 of 256 activation rows are all zeros"),
    ("train on data 5% zero rows", npy("zeros5.npy", zero_rows(0.05)), with_args(TRAIN, activations="{w}/zeros5.npy"), "activation rows are all zeros.*more than 1%"),
    ("eval on all-zero data", npy("zeros-e.npy", np.zeros((500, 16), np.float32)), with_args(EVAL, activations="{w}/zeros-e.npy"), "evaluation batch 0: 500 of 500 activation rows are all zeros"),
]  # fmt: skip


@pytest.mark.parametrize("name, setup, argv, pattern", CASES, ids=[c[0] for c in CASES])
def test_a_contradiction_is_an_error_naming_it(world, capsys, name, setup, argv, pattern):
    check_case(world, capsys, setup, argv, pattern)


def test_a_large_lr_is_accepted_when_forced(world, capsys, tmp_path):
    argv = [
        a.format(w=world, acts=world / "acts.npy")
        for a in with_args(TRAIN, out=str(tmp_path / "r"))
    ]
    cli.main(argv + ["--lr", "1.5", "--force-lr"])
    assert json.loads((tmp_path / "r" / "train_config.json").read_text())["lr"] == 1.5


def test_a_few_zero_rows_get_a_note_and_many_an_error(capsys):
    batch = torch.randn(1000, 4)
    batch[:5] = 0
    check_zero_rows(batch, "batch")
    assert "5 of 1000 activation rows are all zeros" in capsys.readouterr().out
    batch[:20] = 0
    with pytest.raises(DataError, match="20 of 1000"):
        check_zero_rows(batch, "batch")


def test_every_class_has_eight_cases():
    assert len(CASES) >= 8
