"""Bad input through the command line: each case gives exit status 2, one `saelab: error:` line
that names the problem (no traceback), and leaves no half-made run or cache directory behind.

Cases are (name, setup, argv, pattern) in the world of tests/bad_world.py."""

import numpy as np
import pytest
from bad_world import (
    CACHE,
    EVAL,
    REPORT,
    SWEEP,
    TRAIN,
    check_case,
    copy_cache,
    copy_run,
    edit_json,
    nothing,
    npy,
    with_args,
    write_file,
)
from conftest import cli_error

from saelab import SAE

CASES = [
    # activation files
    (
        "zero-byte npy",
        write_file("empty.npy", b""),
        with_args(TRAIN, activations="{w}/empty.npy"),
        "not a readable .npy",
    ),
    (
        "truncated npy",
        write_file("cut.npy", b"\x93NUMPY\x01\x00"),
        with_args(TRAIN, activations="{w}/cut.npy"),
        "not a readable .npy",
    ),
    (
        "integer npy",
        npy("ints.npy", np.ones((500, 16), dtype=np.int32)),
        with_args(TRAIN, activations="{w}/ints.npy"),
        "floating point",
    ),
    (
        "NaN activations",
        npy("nan.npy", np.full((2000, 16), np.nan, dtype=np.float32)),
        with_args(TRAIN, activations="{w}/nan.npy"),
        "NaN",
    ),
    (
        "Inf activations",
        npy("inf.npy", np.where(np.eye(2000, 16) > 0, np.inf, 0).astype(np.float32)),
        with_args(TRAIN, activations="{w}/inf.npy"),
        "NaN/Inf",
    ),
    (
        "1-d npy",
        npy("flat.npy", np.ones(500, dtype=np.float32)),
        with_args(TRAIN, activations="{w}/flat.npy"),
        r"\[tokens, d_in\]",
    ),
    (
        "empty array",
        npy("none.npy", np.ones((0, 16), dtype=np.float32)),
        with_args(TRAIN, activations="{w}/none.npy"),
        "empty data set",
    ),
    (
        "missing npy",
        nothing,
        with_args(TRAIN, activations="{w}/missing.npy"),
        "no activation file or cache",
    ),
    (
        "wrong suffix",
        write_file("acts.csv", b"1,2\n"),
        with_args(TRAIN, activations="{w}/acts.csv"),
        "expected a .npy",
    ),
    (
        "too few tokens to hold out",
        npy("small.npy", np.ones((300, 16), dtype=np.float32)),
        with_args(
            [
                "train",
                "--activations",
                "{w}/small.npy",
                "--out",
                "{w}/new-run",
                "--batch-size",
                "32",
            ]
        ),
        "too few to hold out",
    ),
    # conflicting or meaningless flags
    ("npy and synthetic", nothing, with_args(TRAIN, "--synthetic"), "two data sources"),
    (
        "npy with a model",
        nothing,
        with_args(TRAIN, "--model", "gpt2", "--layer", "3"),
        "records no model",
    ),
    (
        "synthetic with a layer",
        nothing,
        ["train", "--synthetic", "--layer", "3", "--out", "{w}/new-run"],
        "would be ignored",
    ),
    ("no-cache with npy", nothing, with_args(TRAIN, "--no-cache"), "--no-cache applies"),
    ("resume and overwrite", nothing, with_args(TRAIN, "--resume", "--overwrite"), "contradict"),
    ("resume without checkpoint", nothing, with_args(TRAIN, "--resume"), "no checkpoint.pt"),
    (
        "out names a file",
        write_file("a-file", b"x"),
        with_args(TRAIN, out="{w}/a-file"),
        "is a file",
    ),
    (
        "out under a file",
        write_file("b-file", b"x"),
        with_args(TRAIN, out="{w}/b-file/run"),
        "b-file",
    ),
    ("cuda on a CPU torch", nothing, with_args(TRAIN, "--device", "cuda"), "no CUDA"),
    ("unknown device", nothing, with_args(TRAIN, "--device", "banana"), "not a device"),
    ("unknown arch", nothing, with_args(TRAIN, "--arch", "gated2"), "invalid choice"),
    ("unknown scaling", nothing, with_args(TRAIN, "--input-scaling", "layer"), "invalid choice"),
    # numeric ranges
    ("k zero", nothing, with_args(TRAIN, "--k", "0"), "must be positive"),
    ("k above d_sae", nothing, with_args(TRAIN, "--k", "40"), "k=40 is larger than d_sae=32"),
    ("lr NaN", nothing, with_args(TRAIN, "--lr", "nan"), "--lr: must be a finite number > 0"),
    ("lr negative", nothing, with_args(TRAIN, "--lr=-1e-3"), "--lr: must be a finite number > 0"),
    (
        "afa coefficient NaN",
        nothing,
        with_args(TRAIN, "--afa-coefficient", "nan"),
        "--afa-coefficient: .*must be a finite",
    ),
    (
        "l1 coefficient negative",
        nothing,
        with_args(TRAIN, "--l1-coefficient", "-1"),
        "--l1-coefficient: .*must be a finite",
    ),
    (
        "aux coefficient inf",
        nothing,
        with_args(TRAIN, "--aux-coefficient", "inf"),
        "--aux-coefficient: .*must be a finite",
    ),
    (
        "l0 coefficient NaN",
        nothing,
        with_args(TRAIN, "--l0-coefficient", "nan"),
        "--l0-coefficient",
    ),
    (
        "batch size zero",
        nothing,
        with_args(TRAIN, "--batch-size", "0"),
        "--batch-size: must be positive",
    ),
    (
        "batch larger than the data",
        nothing,
        with_args(TRAIN, "--batch-size", "4096"),
        "fewer than one batch",
    ),
    ("tokens below one batch", nothing, with_args(TRAIN, "--tokens", "10"), "less than one batch"),
    (
        "eval tokens one",
        nothing,
        with_args(TRAIN, "--eval-tokens", "1"),
        "--eval-tokens: must be >= 64",
    ),
    (
        "expansion zero",
        nothing,
        with_args(TRAIN, "--expansion", "0"),
        "--expansion: must be positive",
    ),
    (
        "dead tokens zero",
        nothing,
        with_args(TRAIN, "--dead-tokens", "0"),
        "--dead-tokens: must be positive",
    ),
    (
        "checkpoint every zero",
        nothing,
        with_args(TRAIN, "--checkpoint-every", "0"),
        "--checkpoint-every",
    ),
    ("seed negative", nothing, with_args(TRAIN, "--seed", "-1"), "--seed: must be >= 0"),
    ("ctx len one", nothing, with_args(CACHE, "--ctx-len", "1"), "--ctx-len: must be >= 2"),
    (
        "cache tokens zero",
        nothing,
        [
            "cache",
            "--model",
            "x",
            "--layer",
            "0",
            "--dataset",
            "d",
            "--tokens",
            "0",
            "--out",
            "{w}/new-cache",
        ],
        "--tokens: must be positive",
    ),
    ("shard tokens negative", nothing, with_args(CACHE, "--shard-tokens", "-5"), "--shard-tokens"),
    # SAE directories
    (
        "cfg.json a list",
        lambda w: (copy_run(w, "r-list") / "cfg.json").write_text("[1, 2]"),
        with_args(["eval", "{w}/r-list", "--activations", "{acts}"]),
        "not an object",
    ),
    (
        "cfg.json not JSON",
        lambda w: (copy_run(w, "r-junk") / "cfg.json").write_text("{arch: topk"),
        with_args(["eval", "{w}/r-junk", "--activations", "{acts}"]),
        "not valid JSON",
    ),
    (
        "cfg.json empty",
        lambda w: (copy_run(w, "r-empty") / "cfg.json").write_text(""),
        with_args(["eval", "{w}/r-empty", "--activations", "{acts}"]),
        "not valid JSON",
    ),
    (
        "cfg.json NaN coefficient",
        lambda w: edit_json(
            copy_run(w, "r-nan") / "cfg.json", lambda c: {**c, "aux_coefficient": float("nan")}
        ),
        with_args(["eval", "{w}/r-nan", "--activations", "{acts}"]),
        "aux_coefficient must be a finite number",
    ),
    (
        "cfg.json metadata not an object",
        lambda w: edit_json(copy_run(w, "r-meta") / "cfg.json", lambda c: {**c, "metadata": [1]}),
        with_args(["eval", "{w}/r-meta", "--activations", "{acts}"]),
        "metadata must be a JSON object",
    ),
    (
        "garbage safetensors",
        lambda w: (copy_run(w, "r-st") / "sae.safetensors").write_bytes(b"garbage!!"),
        with_args(["eval", "{w}/r-st", "--activations", "{acts}"]),
        "not a valid safetensors",
    ),
    (
        "no SAE directory",
        nothing,
        with_args(["eval", "{w}/nowhere", "--activations", "{acts}"]),
        "no SAE directory",
    ),
    (
        "eval on the wrong width",
        npy("wide.npy", np.ones((500, 8), dtype=np.float32)),
        with_args(EVAL, activations="{w}/wide.npy"),
        "d_in=8, but the SAE has d_in=16",
    ),
    ("eval tokens zero", nothing, with_args(EVAL, "--eval-tokens", "0"), "--eval-tokens"),
    # models
    (
        "garbage gguf",
        write_file("bad.gguf", b"GGUFjunk"),
        with_args(CACHE, model="{w}/bad.gguf"),
        "cannot load model",
    ),
    (
        "model dir without config",
        lambda w: (w / "not-a-model").mkdir(exist_ok=True),
        with_args(CACHE, model="{w}/not-a-model"),
        "no config.json",
    ),
    (
        "empty text file",
        write_file("empty.txt", b"  \n\n "),
        with_args(CACHE, dataset="{w}/empty.txt"),
        "contains no text",
    ),
    # caches
    (
        "manifest without spec",
        lambda w: edit_json(
            copy_cache(w, "c-spec") / "manifest.json",
            lambda m: {k: v for k, v in m.items() if k != "spec"},
        ),
        with_args(TRAIN, activations="{w}/c-spec"),
        "has no field 'spec'",
    ),
    (
        "manifest a list",
        lambda w: (copy_cache(w, "c-list") / "manifest.json").write_text("[]"),
        with_args(TRAIN, activations="{w}/c-list"),
        "not an object",
    ),
    (
        "manifest truncated",
        lambda w: (copy_cache(w, "c-cut") / "manifest.json").write_text('{"spec": {'),
        with_args(TRAIN, activations="{w}/c-cut"),
        "not valid JSON",
    ),
    (
        "shard corrupted",
        lambda w: (copy_cache(w, "c-bad") / "shard-00000.safetensors").write_bytes(b"0" * 64),
        with_args(TRAIN, activations="{w}/c-bad"),
        "checksum",
    ),
    (
        "cache of another layer",
        nothing,
        with_args(TRAIN, "--layer", "0", activations="{cache}"),
        "layer: cache has 1, requested 0",
    ),
    # report
    ("report top zero", nothing, with_args(REPORT, "--top", "0"), "--top: must be positive"),
    ("report top negative", nothing, with_args(REPORT, "--top", "-3"), "--top: must be positive"),
    (
        "report duplicate latents",
        nothing,
        with_args(REPORT, "--latents", "1,2,1"),
        "lists 1 more than once",
    ),
    (
        "report latent out of range",
        nothing,
        with_args(REPORT, "--latents", "5,99"),
        "latents 0..31",
    ),
    (
        "report contexts zero",
        nothing,
        with_args(REPORT, "--contexts", "0"),
        "--contexts: must be positive",
    ),
    (
        "report without token ids",
        nothing,
        with_args(REPORT, activations="{acts}"),
        "needs token ids",
    ),
    # interpretability evaluations
    (
        "eval unknown evaluation",
        nothing,
        with_args(EVAL, "--evals", "core,probing"),
        "invalid choice",
    ),
    (
        "autointerp without a chat model",
        nothing,
        with_args(EVAL, "--evals", "autointerp"),
        "needs one chat model",
    ),
    (
        "autointerp with two chat models",
        nothing,
        with_args(
            EVAL, "--evals", "autointerp", "--llm", "m", "--llm-url", "http://localhost:1/v1"
        ),
        "choose one",
    ),
    (
        "chat model without autointerp",
        nothing,
        with_args(EVAL, "--llm-url", "http://localhost:1/v1"),
        "is for --evals autointerp",
    ),
    (
        "chat url not http",
        nothing,
        with_args(EVAL, "--evals", "autointerp", "--llm-url", "localhost:8000"),
        "must start with http",
    ),
    (
        "chat key variable unset",
        nothing,
        with_args(
            EVAL,
            "--evals",
            "autointerp",
            "--llm-url",
            "http://localhost:1/v1",
            "--llm-key-env",
            "SAELAB_NO_SUCH_KEY",
        ),
        "SAELAB_NO_SUCH_KEY",
    ),
    (
        "autointerp on an array",
        nothing,
        with_args(EVAL, "--evals", "autointerp", "--llm-url", "http://localhost:1/v1"),
        "autointerp shows text",
    ),
    (
        "absorption without a model",
        nothing,
        with_args(EVAL, "--evals", "absorption"),
        "pass --model and --layer",
    ),
    (
        "autointerp local model missing",
        nothing,
        with_args(EVAL, "--evals", "autointerp", "--llm", "{w}/no-such-model"),
        "no model at",
    ),
    (
        "probe file missing",
        nothing,
        with_args(
            EVAL,
            "--evals",
            "sparse_probing",
            "--model",
            "{w}/model",
            "--layer",
            "0",
            "--probe-dataset",
            "{w}/none.csv",
        ),
        "no labelled text file",
    ),
    (
        "probe file without labels",
        write_file("unlabelled.jsonl", b'{"text": "w1 w2"}\n'),
        with_args(
            EVAL,
            "--evals",
            "sparse_probing",
            "--model",
            "{w}/model",
            "--layer",
            "0",
            "--probe-dataset",
            "{w}/unlabelled.jsonl",
        ),
        "no column 'label'",
    ),
    (
        "absorption words too few",
        nothing,
        with_args(EVAL, "--evals", "absorption", "--absorption-words", "10"),
        "--absorption-words: must be >= 100",
    ),
    (
        "sweep evals on generated data",
        nothing,
        with_args(SWEEP, "--evals", "absorption"),
        "need activations of a model",
    ),
    (
        "sweep autointerp local model missing",
        nothing,
        with_args(SWEEP, "--evals", "autointerp", "--llm", "{w}/no-such-model"),
        "no model at",
    ),
    # sweep
    ("sweep k not an integer", nothing, with_args(SWEEP, "--k", "4,x"), "not a comma list of int"),
    (
        "sweep afa coefficient NaN",
        nothing,
        with_args(SWEEP, "--arch", "topafa", "--afa-coefficient", "nan"),
        "must be a finite number",
    ),
    (
        "sweep config missing",
        nothing,
        with_args(SWEEP, "--config", "{w}/none.toml"),
        "does not exist",
    ),
    (
        "sweep config not TOML",
        write_file("bad.toml", b"arch = [topk"),
        with_args(SWEEP, "--config", "{w}/bad.toml"),
        "not valid TOML",
    ),
]


@pytest.mark.parametrize("name, setup, argv, pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_error(world, capsys, name, setup, argv, pattern):
    check_case(world, capsys, setup, argv, pattern)


def test_the_bad_input_tables_hold_at_least_250_cases():
    import test_bad_api
    import test_bad_artifacts
    import test_bad_contradictions
    import test_bad_messages
    import test_bad_numbers
    import test_bad_runs
    import test_bad_text

    tables = [
        CASES,
        test_bad_runs.CASES,
        test_bad_artifacts.CLASS_1,
        test_bad_artifacts.CLASS_2,
        test_bad_artifacts.CLASS_6,
        test_bad_artifacts.SAEBENCH_OUTPUTS,
        test_bad_text.CASES,
        test_bad_numbers.CASES,
        test_bad_contradictions.CASES,
        test_bad_api.CASES,
        test_bad_messages.CASES,
    ]
    assert sum(map(len, tables)) >= 250 and min(map(len, tables)) >= 8


def test_overwrite_removes_the_old_runs_files(world, capsys, tmp_path):
    from saelab import cli

    args = [a.format(w=tmp_path, acts=world / "acts.npy") for a in TRAIN]
    cli.main(args)
    (tmp_path / "new-run" / "report.html").write_text("old report")
    (tmp_path / "new-run" / "eval_results").mkdir()
    (tmp_path / "new-run" / "eval_results" / "autointerp.json").write_text("{}")
    cli.main(args + ["--overwrite", "--k", "2"])
    assert not (tmp_path / "new-run" / "report.html").exists()
    assert not (
        tmp_path / "new-run" / "eval_results"
    ).exists()  # the old SAE's evaluations go with it
    assert SAE.load(tmp_path / "new-run").cfg.k == 2


def test_a_failure_after_a_finished_sae_keeps_it(world, capsys, tmp_path, monkeypatch):
    from saelab.eval import full

    calls = []

    def fail_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("evaluation broke")
        return real(*args, **kwargs)

    real = full.full_evaluation
    monkeypatch.setattr(full, "full_evaluation", fail_on_second)
    args = [a.format(w=tmp_path, acts=world / "acts.npy") for a in TRAIN] + ["--arch", "topk,relu"]
    assert "evaluation broke" in cli_error(capsys, args)
    assert SAE.load(tmp_path / "new-run" / "topk-k4").cfg.arch == "topk"  # trained and kept
