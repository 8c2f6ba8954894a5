"""Class 0 of the hostile pass: no command loses data. Each case prepares a folder that holds
something worth keeping (a trained run, another library's SAE, a cache, other runs), runs a
command that must be refused, and checks that the folder is byte for byte as it was."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from bad_world import CACHE, EVAL, SWEEP, TRAIN, check_case, copy_cache, copy_run, with_args
from conftest import cli_error

from saelab import SAE, cli
from saelab.io.external import export
from saelab.rundir import LOCK, RunError, removed_if_failed


def snapshot(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def exported(fmt):
    def setup(w):
        sae = SAE.load(w / "run")
        sae.cfg.input_scaling = "none"  # sparsify's SAEs take raw inputs
        export(sae, w / f"keep-{fmt}", fmt)
        return w / f"keep-{fmt}"

    return setup


def run_copy(name):
    return lambda w: copy_run(w, name)


def two_runs(w):
    copy_run(w, "keep-two/topk")
    copy_run(w, "keep-two/relu")
    return w / "keep-two"


def with_notes(w):
    run = copy_run(w, "keep-notes")
    (run / "notes.txt").write_text("my notes")
    return run


def locked_run(w):
    run = copy_run(w, "keep-locked")
    (run / LOCK).write_text(f"{os.getpid()}\n")  # this very process: alive
    return run


def cache_copy(w):
    return copy_cache(w, "keep-cache")


def top_run_in_sweep(w):
    return copy_run(w, "keep-sweep")


OVERWRITE = [*TRAIN, "--overwrite"]
CASES = [
    # (name, setup returning the folder to keep, argv with {keep}, pattern)
    (
        "overwrite with a missing activation file",
        run_copy("keep-a"),
        with_args(OVERWRITE, activations="{w}/missing.npy", out="{keep}"),
        "no activation file",
    ),
    (
        "overwrite with a flag of another architecture",
        run_copy("keep-b"),
        with_args(OVERWRITE, "--l1-coefficient", "3", out="{keep}"),
        "l1-coefficient",
    ),
    ("overwrite with k above d_sae", run_copy("keep-c"), [*OVERWRITE, "--k", "99"], "larger than"),
    (
        "overwrite with a batch larger than the data",
        run_copy("keep-d"),
        with_args(OVERWRITE, "--batch-size", "4096", out="{keep}"),
        "fewer than one batch",
    ),
    (
        "overwrite with tokens below one batch",
        run_copy("keep-e"),
        with_args(OVERWRITE, "--tokens", "10", out="{keep}"),
        "less than one batch",
    ),
    (
        "overwrite with all-zero data",
        lambda w: (
            np.save(w / "zeros-o.npy", np.zeros((2000, 16), np.float32)),
            copy_run(w, "keep-z"),
        )[1],
        with_args(OVERWRITE, activations="{w}/zeros-o.npy", out="{keep}"),
        "all zeros",
    ),
    (
        "overwrite and resume",
        run_copy("keep-f"),
        with_args(OVERWRITE, "--resume", out="{keep}"),
        "contradict",
    ),
    ("train into a SAELens SAE", exported("saelens"), with_args(TRAIN, out="{keep}"), "SAELens"),
    (
        "overwrite a SAELens SAE",
        exported("saelens"),
        with_args(OVERWRITE, out="{keep}"),
        "another library",
    ),
    (
        "overwrite a sparsify SAE",
        exported("sparsify"),
        with_args(OVERWRITE, out="{keep}"),
        "sparsify",
    ),
    (
        "train into a dictionary_learning SAE",
        exported("dictionary_learning"),
        with_args(TRAIN, out="{keep}"),
        "dictionary_learning SAE",
    ),
    ("train into a cache", cache_copy, with_args(TRAIN, out="{keep}"), "an activation cache"),
    ("train into other runs", two_runs, with_args(TRAIN, out="{keep}"), "topk \\(a saelab run\\)"),
    ("train beside a user's file", with_notes, with_args(TRAIN, out="{keep}"), "notes.txt"),
    ("train into a locked run", locked_run, with_args(OVERWRITE, out="{keep}"), f"{os.getpid()}"),
    (
        "eval into another run",
        run_copy("keep-g"),
        [*EVAL, "--out", "{keep}"],
        "holds a saelab run",
    ),
    ("eval into a cache", cache_copy, [*EVAL, "--out", "{keep}"], "holds an activation cache"),
    (
        "eval into a SAELens SAE",
        exported("saelens"),
        [*EVAL, "--out", "{keep}"],
        "holds a SAELens SAE",
    ),
    ("sweep into a SAELens SAE", exported("saelens"), with_args(SWEEP, out="{keep}"), "SAELens"),
    (
        "sweep over a single run",
        top_run_in_sweep,
        with_args(SWEEP, out="{keep}"),
        "is not free for a sweep",
    ),
    ("cache into a run", run_copy("keep-h"), with_args(CACHE, out="{keep}"), "not an activation"),
    ("cache into a locked cache", locked_run, with_args(CACHE, out="{keep}"), "in use by saelab"),
]


@pytest.mark.parametrize("name, setup, argv, pattern", CASES, ids=[c[0] for c in CASES])
def test_refused_commands_leave_every_file_as_it_was(world, capsys, name, setup, argv, pattern):
    keep = setup(world)
    before = snapshot(keep)
    argv = [a.replace("{keep}", str(keep)) for a in argv]
    check_case(world, capsys, lambda w: None, argv, pattern)
    assert snapshot(keep) == before


def _train_argv(world, out, *extra):
    return [a.format(w=world, acts=world / "acts.npy") for a in with_args(TRAIN, out=str(out))] + [
        *extra
    ]


def test_overwrite_replaces_its_own_run_and_leaves_the_others(world, capsys, tmp_path):
    out = tmp_path / "grid"
    cli.main(_train_argv(world, out, "--arch", "topk,relu"))
    (out / "other").mkdir()
    (out / "other" / "notes.txt").write_text("keep me")
    before = snapshot(out / "relu")
    cli.main(_train_argv(world, out, "--arch", "topk", "--k", "2", "--overwrite"))
    assert (out / "other" / "notes.txt").read_text() == "keep me"
    assert snapshot(out / "relu") == before  # not part of this run: untouched
    assert SAE.load(out).cfg.k == 2


def test_a_stale_lock_is_taken_over_and_the_lock_is_released(world, capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK).write_text("999999999\n")  # no such process
    cli.main(_train_argv(world, out))
    assert SAE.load(out).cfg.arch == "batchtopk"
    assert not (out / LOCK).exists()


def test_a_second_process_is_refused_while_the_first_holds_the_folder(world, capsys, tmp_path):
    out = tmp_path / "busy"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from saelab.rundir import locked\n"
            f"with locked({str(out)!r}):\n    print('held', flush=True); sys.stdin.readline()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        line = cli_error(capsys, _train_argv(world, out))
        assert f"in use by saelab process {holder.pid}" in line
        assert (out / LOCK).is_file()  # the refused command left the holder's folder alone
    finally:
        holder.communicate("\n", timeout=60)
    assert not (out / LOCK).exists()  # released when the holder ends
    cli.main(_train_argv(world, out))  # and then the folder is free
    assert (out / "sae.safetensors").is_file()


def test_a_failed_command_never_removes_a_folder_another_process_holds(tmp_path):
    """The default --out (runs/<time>) does not exist when a command starts: a second command
    started in the same second is refused by the first's lock and must not remove its folder."""
    folder = tmp_path / "runs" / "now"
    with pytest.raises(RunError, match="refused"):
        with removed_if_failed(None, lambda: folder):
            folder.mkdir(parents=True)
            (folder / LOCK).write_text(f"{os.getppid()}\n")  # a live process other than this
            raise RunError("refused")
    assert (folder / LOCK).is_file()


def test_there_are_at_least_eight_cases():
    assert len(CASES) >= 8
