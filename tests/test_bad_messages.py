"""Class 8 of the hostile pass: a command that fails names the real reason, not an earlier
symptom. A folder given where an SAE, a cache or a run belongs is named for what it is (an
interrupted training, a cache, a sweep, another library's SAE, a file), with what to do."""

import shutil

import pytest
from bad_world import EVAL, TRAIN, check_case, copy_cache, copy_run, with_args

from saelab import SAE
from saelab.io.external import export


def interrupted(w):
    run = w / "m-interrupted"
    run.mkdir(exist_ok=True)
    (run / "checkpoint.pt").write_bytes(b"x")
    (run / "history.jsonl").write_text('{"step": 1}\n')


def sweep(w):
    copy_run(w, "m-sweep/topk-k4")
    (w / "m-sweep" / "results.json").write_text("[]")


def saelens(w):
    sae = SAE.load(w / "run")
    shutil.rmtree(w / "m-saelens", ignore_errors=True)
    export(sae, w / "m-saelens", "saelens")


def eval_of(path):
    return [EVAL[0], path, *EVAL[2:]]


CASES = [
    ("eval of an interrupted run", interrupted, eval_of("{w}/m-interrupted"), "holds an interrupted training \\(checkpoint.pt, no SAE yet\\).*--resume"),
    ("eval of a cache", lambda w: copy_cache(w, "m-cache"), eval_of("{w}/m-cache"), "is an activation cache, not an SAE \\(pass it with --activations\\)"),
    ("eval of a sweep", sweep, eval_of("{w}/m-sweep"), "is a sweep, not an SAE: pass one of its runs \\(topk-k4"),
    ("eval of a file", lambda w: (w / "m-file").write_text("x"), eval_of("{w}/m-file"), "m-file is a file, not an SAE directory"),
    ("eval of an empty folder", lambda w: (w / "m-empty").mkdir(exist_ok=True), eval_of("{w}/m-empty"), "has no cfg.json: not an SAE directory of a known format \\(an empty folder\\)"),
    ("report of a cache", lambda w: copy_cache(w, "m-cache2"), ["report", "{w}/m-cache2", "--activations", "{cache}"], "is an activation cache, not an SAE"),
    ("train on a run", lambda w: None, with_args(TRAIN, activations="{run}"), "is not an activation cache \\(no manifest.json; it is a saelab run\\)"),
    ("train on a SAELens SAE", saelens, with_args(TRAIN, activations="{w}/m-saelens"), "it is a SAELens SAE"),
    ("eval on a run's folder", lambda w: None, with_args(EVAL, activations="{run}"), "not an activation cache \\(no manifest.json; it is a saelab run\\)"),
    ("resume a finished run", lambda w: copy_run(w, "m-finished"), with_args(TRAIN, "--resume", out="{w}/m-finished"), "no checkpoint.pt in .*m-finished: it holds a finished SAE \\(pass --overwrite"),
    ("resume nothing", lambda w: None, with_args(TRAIN, "--resume", out="{w}/m-nothing"), "no checkpoint.pt in .*m-nothing \\(train without --resume\\)"),
    ("report of an interrupted run", interrupted, ["report", "{w}/m-interrupted", "--activations", "{cache}"], "interrupted training"),
]  # fmt: skip


@pytest.mark.parametrize("name, setup, argv, pattern", CASES, ids=[c[0] for c in CASES])
def test_the_real_reason_is_named(world, capsys, name, setup, argv, pattern):
    check_case(world, capsys, setup, argv, pattern)
    assert not (world / "m-nothing").exists()  # a refused resume leaves no folder behind


def test_every_class_has_eight_cases():
    assert len(CASES) >= 8
