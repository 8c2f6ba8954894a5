"""Bad input through the command line: each case gives exit status 2, one `saelab: error:` line
that names the problem (no traceback), and leaves no half-made run or cache directory behind.

Each case is (name, setup, argv, pattern): setup(world) writes what the case needs into the
world's folder, argv uses {w} for that folder, {run} for a trained SAE, {cache} for an
activation cache and {acts} for a good .npy file; pattern must occur in the error line."""

import json
import re
import shutil

import numpy as np
import pytest
import torch
from conftest import cli_error
from tiny_models import saved_model, tiny_lm

from saelab import SAE, SAEConfig, TrainConfig, train
from saelab.data.cache import CacheSpec, build_cache


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = tmp_path_factory.mktemp("world")
    rng = np.random.default_rng(0)
    np.save(w / "acts.npy", rng.normal(size=(2000, 16)).astype(np.float32))
    sae = SAE(SAEConfig(arch="topk", d_in=16, d_sae=32, k=4), seed=0)
    train(
        sae,
        torch.from_numpy(np.load(w / "acts.npy")),
        TrainConfig(batch_size=256, total_tokens=512, progress=False),
    )
    sae.save(w / "run")
    docs = w / "docs.jsonl"
    docs.write_text(
        "\n".join(
            json.dumps({"text": " ".join(f"w{(i * 7 + j) % 100}" for j in range(30))})
            for i in range(100)
        )
    )
    spec = CacheSpec(
        model="tiny", layer=1, site="resid_post", dataset=str(docs), ctx_len=8, dtype="float32"
    )
    build_cache(tiny_lm("llama"), w / "cache", spec, 600, shard_tokens=300, progress=False)
    saved_model(w / "model")
    return w


def _copy_run(w, name):
    shutil.copytree(w / "run", w / name, dirs_exist_ok=True)
    return w / name


def _copy_cache(w, name):
    shutil.copytree(w / "cache", w / name, dirs_exist_ok=True)
    return w / name


def _edit_json(path, edit):
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def _npy(name, array):
    return lambda w: np.save(w / name, array)


def _file(name, content: bytes):
    return lambda w: (w / name).write_bytes(content)


def _nothing(w):
    pass


TRAIN = [
    "train",
    "--activations",
    "{acts}",
    "--out",
    "{w}/new-run",
    "--no-progress",
    "--tokens",
    "512",
    "--batch-size",
    "256",
    "--eval-tokens",
    "200",
    "--expansion",
    "2",
    "--k",
    "4",
]
EVAL = ["eval", "{run}", "--activations", "{acts}", "--no-progress"]
REPORT = ["report", "{run}", "--activations", "{cache}", "--no-progress"]
SWEEP = ["sweep", "--synthetic", "--tokens", "512", "--out", "{w}/new-sweep", "--no-progress"]
CACHE = [
    "cache",
    "--model",
    "{w}/model",
    "--layer",
    "0",
    "--dataset",
    "{w}/docs.jsonl",
    "--tokens",
    "100",
    "--out",
    "{w}/new-cache",
    "--no-progress",
]


def _with(base, *args, **values):
    """base + args, with the value of each flag named in `values` replaced (model="x":
    --model x)."""
    argv = list(base) + list(args)
    for key, value in values.items():
        argv[argv.index("--" + key.replace("_", "-")) + 1] = value
    return argv


CASES = [
    # activation files
    (
        "zero-byte npy",
        _file("empty.npy", b""),
        _with(TRAIN, activations="{w}/empty.npy"),
        "not a readable .npy",
    ),
    (
        "truncated npy",
        _file("cut.npy", b"\x93NUMPY\x01\x00"),
        _with(TRAIN, activations="{w}/cut.npy"),
        "not a readable .npy",
    ),
    (
        "integer npy",
        _npy("ints.npy", np.ones((500, 16), dtype=np.int32)),
        _with(TRAIN, activations="{w}/ints.npy"),
        "floating point",
    ),
    (
        "NaN activations",
        _npy("nan.npy", np.full((2000, 16), np.nan, dtype=np.float32)),
        _with(TRAIN, activations="{w}/nan.npy"),
        "NaN",
    ),
    (
        "Inf activations",
        _npy("inf.npy", np.where(np.eye(2000, 16) > 0, np.inf, 0).astype(np.float32)),
        _with(TRAIN, activations="{w}/inf.npy"),
        "NaN/Inf",
    ),
    (
        "1-d npy",
        _npy("flat.npy", np.ones(500, dtype=np.float32)),
        _with(TRAIN, activations="{w}/flat.npy"),
        r"\[tokens, d_in\]",
    ),
    (
        "empty array",
        _npy("none.npy", np.ones((0, 16), dtype=np.float32)),
        _with(TRAIN, activations="{w}/none.npy"),
        "empty data set",
    ),
    (
        "missing npy",
        _nothing,
        _with(TRAIN, activations="{w}/missing.npy"),
        "no activation file or cache",
    ),
    (
        "wrong suffix",
        _file("acts.csv", b"1,2\n"),
        _with(TRAIN, activations="{w}/acts.csv"),
        "expected a .npy",
    ),
    (
        "too few tokens to hold out",
        _npy("small.npy", np.ones((300, 16), dtype=np.float32)),
        _with(
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
    ("npy and synthetic", _nothing, _with(TRAIN, "--synthetic"), "two data sources"),
    (
        "npy with a model",
        _nothing,
        _with(TRAIN, "--model", "gpt2", "--layer", "3"),
        "records no model",
    ),
    (
        "synthetic with a layer",
        _nothing,
        ["train", "--synthetic", "--layer", "3", "--out", "{w}/new-run"],
        "would be ignored",
    ),
    ("no-cache with npy", _nothing, _with(TRAIN, "--no-cache"), "--no-cache applies"),
    ("resume and overwrite", _nothing, _with(TRAIN, "--resume", "--overwrite"), "contradict"),
    ("resume without checkpoint", _nothing, _with(TRAIN, "--resume"), "no checkpoint.pt"),
    ("out names a file", _file("a-file", b"x"), _with(TRAIN, out="{w}/a-file"), "is a file"),
    ("out under a file", _file("b-file", b"x"), _with(TRAIN, out="{w}/b-file/run"), "b-file"),
    ("cuda on a CPU torch", _nothing, _with(TRAIN, "--device", "cuda"), "no CUDA"),
    ("unknown device", _nothing, _with(TRAIN, "--device", "banana"), "not a device"),
    ("unknown arch", _nothing, _with(TRAIN, "--arch", "gated2"), "invalid choice"),
    ("unknown scaling", _nothing, _with(TRAIN, "--input-scaling", "layer"), "invalid choice"),
    # numeric ranges
    ("k zero", _nothing, _with(TRAIN, "--k", "0"), "must be positive"),
    ("k above d_sae", _nothing, _with(TRAIN, "--k", "40"), "k=40 is larger than d_sae=32"),
    ("lr NaN", _nothing, _with(TRAIN, "--lr", "nan"), "--lr: must be a finite number > 0"),
    ("lr negative", _nothing, _with(TRAIN, "--lr=-1e-3"), "--lr: must be a finite number > 0"),
    (
        "afa coefficient NaN",
        _nothing,
        _with(TRAIN, "--afa-coefficient", "nan"),
        "--afa-coefficient: .*must be a finite",
    ),
    (
        "l1 coefficient negative",
        _nothing,
        _with(TRAIN, "--l1-coefficient", "-1"),
        "--l1-coefficient: .*must be a finite",
    ),
    (
        "aux coefficient inf",
        _nothing,
        _with(TRAIN, "--aux-coefficient", "inf"),
        "--aux-coefficient: .*must be a finite",
    ),
    ("l0 coefficient NaN", _nothing, _with(TRAIN, "--l0-coefficient", "nan"), "--l0-coefficient"),
    (
        "batch size zero",
        _nothing,
        _with(TRAIN, "--batch-size", "0"),
        "--batch-size: must be positive",
    ),
    (
        "batch larger than the data",
        _nothing,
        _with(TRAIN, "--batch-size", "4096"),
        "fewer than one batch",
    ),
    ("tokens below one batch", _nothing, _with(TRAIN, "--tokens", "10"), "less than one batch"),
    (
        "eval tokens one",
        _nothing,
        _with(TRAIN, "--eval-tokens", "1"),
        "--eval-tokens: must be >= 64",
    ),
    ("expansion zero", _nothing, _with(TRAIN, "--expansion", "0"), "--expansion: must be positive"),
    (
        "dead tokens zero",
        _nothing,
        _with(TRAIN, "--dead-tokens", "0"),
        "--dead-tokens: must be positive",
    ),
    (
        "checkpoint every zero",
        _nothing,
        _with(TRAIN, "--checkpoint-every", "0"),
        "--checkpoint-every",
    ),
    ("seed negative", _nothing, _with(TRAIN, "--seed", "-1"), "--seed: must be >= 0"),
    ("ctx len one", _nothing, _with(CACHE, "--ctx-len", "1"), "--ctx-len: must be >= 2"),
    (
        "cache tokens zero",
        _nothing,
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
    ("shard tokens negative", _nothing, _with(CACHE, "--shard-tokens", "-5"), "--shard-tokens"),
    # SAE directories
    (
        "cfg.json a list",
        lambda w: (_copy_run(w, "r-list") / "cfg.json").write_text("[1, 2]"),
        _with(["eval", "{w}/r-list", "--activations", "{acts}"]),
        "not an object",
    ),
    (
        "cfg.json not JSON",
        lambda w: (_copy_run(w, "r-junk") / "cfg.json").write_text("{arch: topk"),
        _with(["eval", "{w}/r-junk", "--activations", "{acts}"]),
        "not valid JSON",
    ),
    (
        "cfg.json empty",
        lambda w: (_copy_run(w, "r-empty") / "cfg.json").write_text(""),
        _with(["eval", "{w}/r-empty", "--activations", "{acts}"]),
        "not valid JSON",
    ),
    (
        "cfg.json NaN coefficient",
        lambda w: _edit_json(
            _copy_run(w, "r-nan") / "cfg.json", lambda c: {**c, "aux_coefficient": float("nan")}
        ),
        _with(["eval", "{w}/r-nan", "--activations", "{acts}"]),
        "aux_coefficient must be a finite number",
    ),
    (
        "cfg.json metadata not an object",
        lambda w: _edit_json(_copy_run(w, "r-meta") / "cfg.json", lambda c: {**c, "metadata": [1]}),
        _with(["eval", "{w}/r-meta", "--activations", "{acts}"]),
        "metadata must be a JSON object",
    ),
    (
        "garbage safetensors",
        lambda w: (_copy_run(w, "r-st") / "sae.safetensors").write_bytes(b"garbage!!"),
        _with(["eval", "{w}/r-st", "--activations", "{acts}"]),
        "not a valid safetensors",
    ),
    (
        "no SAE directory",
        _nothing,
        _with(["eval", "{w}/nowhere", "--activations", "{acts}"]),
        "no SAE directory",
    ),
    (
        "eval on the wrong width",
        _npy("wide.npy", np.ones((500, 8), dtype=np.float32)),
        _with(EVAL, activations="{w}/wide.npy"),
        "d_in=8, but the SAE has d_in=16",
    ),
    ("eval tokens zero", _nothing, _with(EVAL, "--eval-tokens", "0"), "--eval-tokens"),
    # models
    (
        "garbage gguf",
        _file("bad.gguf", b"GGUFjunk"),
        _with(CACHE, model="{w}/bad.gguf"),
        "cannot load model",
    ),
    (
        "model dir without config",
        lambda w: (w / "not-a-model").mkdir(exist_ok=True),
        _with(CACHE, model="{w}/not-a-model"),
        "no config.json",
    ),
    (
        "empty text file",
        _file("empty.txt", b"  \n\n "),
        _with(CACHE, dataset="{w}/empty.txt"),
        "contains no text",
    ),
    # caches
    (
        "manifest without spec",
        lambda w: _edit_json(
            _copy_cache(w, "c-spec") / "manifest.json",
            lambda m: {k: v for k, v in m.items() if k != "spec"},
        ),
        _with(TRAIN, activations="{w}/c-spec"),
        "has no 'spec'",
    ),
    (
        "manifest a list",
        lambda w: (_copy_cache(w, "c-list") / "manifest.json").write_text("[]"),
        _with(TRAIN, activations="{w}/c-list"),
        "not an object",
    ),
    (
        "manifest truncated",
        lambda w: (_copy_cache(w, "c-cut") / "manifest.json").write_text('{"spec": {'),
        _with(TRAIN, activations="{w}/c-cut"),
        "not valid JSON",
    ),
    (
        "shard corrupted",
        lambda w: (_copy_cache(w, "c-bad") / "shard-00000.safetensors").write_bytes(b"0" * 64),
        _with(TRAIN, activations="{w}/c-bad"),
        "checksum",
    ),
    (
        "cache of another layer",
        _nothing,
        _with(TRAIN, "--layer", "0", activations="{cache}"),
        "layer: cache has 1, requested 0",
    ),
    # report
    ("report top zero", _nothing, _with(REPORT, "--top", "0"), "--top: must be positive"),
    ("report top negative", _nothing, _with(REPORT, "--top", "-3"), "--top: must be positive"),
    (
        "report duplicate latents",
        _nothing,
        _with(REPORT, "--latents", "1,2,1"),
        "lists 1 more than once",
    ),
    ("report latent out of range", _nothing, _with(REPORT, "--latents", "5,99"), "latents 0..31"),
    (
        "report contexts zero",
        _nothing,
        _with(REPORT, "--contexts", "0"),
        "--contexts: must be positive",
    ),
    ("report without token ids", _nothing, _with(REPORT, activations="{acts}"), "needs token ids"),
    # interpretability evaluations
    ("eval unknown evaluation", _nothing, _with(EVAL, "--evals", "core,probing"), "invalid choice"),
    (
        "autointerp without a chat model",
        _nothing,
        _with(EVAL, "--evals", "autointerp"),
        "needs one chat model",
    ),
    (
        "autointerp with two chat models",
        _nothing,
        _with(EVAL, "--evals", "autointerp", "--llm", "m", "--llm-url", "http://localhost:1/v1"),
        "choose one",
    ),
    (
        "chat model without autointerp",
        _nothing,
        _with(EVAL, "--llm-url", "http://localhost:1/v1"),
        "is for --evals autointerp",
    ),
    (
        "chat url not http",
        _nothing,
        _with(EVAL, "--evals", "autointerp", "--llm-url", "localhost:8000"),
        "must start with http",
    ),
    (
        "chat key variable unset",
        _nothing,
        _with(
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
        _nothing,
        _with(EVAL, "--evals", "autointerp", "--llm-url", "http://localhost:1/v1"),
        "autointerp shows text",
    ),
    (
        "absorption without a model",
        _nothing,
        _with(EVAL, "--evals", "absorption"),
        "pass --model and --layer",
    ),
    (
        "autointerp local model missing",
        _nothing,
        _with(EVAL, "--evals", "autointerp", "--llm", "{w}/no-such-model"),
        "no model at",
    ),
    (
        "probe file missing",
        _nothing,
        _with(
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
        _file("unlabelled.jsonl", b'{"text": "w1 w2"}\n'),
        _with(
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
        _nothing,
        _with(EVAL, "--evals", "absorption", "--absorption-words", "10"),
        "--absorption-words: must be >= 100",
    ),
    (
        "sweep evals on generated data",
        _nothing,
        _with(SWEEP, "--evals", "absorption"),
        "need activations of a model",
    ),
    (
        "sweep autointerp local model missing",
        _nothing,
        _with(SWEEP, "--evals", "autointerp", "--llm", "{w}/no-such-model"),
        "no model at",
    ),
    # sweep
    ("sweep k not an integer", _nothing, _with(SWEEP, "--k", "4,x"), "not a comma list of int"),
    (
        "sweep afa coefficient NaN",
        _nothing,
        _with(SWEEP, "--arch", "topafa", "--afa-coefficient", "nan"),
        "must be a finite number",
    ),
    ("sweep config missing", _nothing, _with(SWEEP, "--config", "{w}/none.toml"), "does not exist"),
    (
        "sweep config not TOML",
        _file("bad.toml", b"arch = [topk"),
        _with(SWEEP, "--config", "{w}/bad.toml"),
        "not valid TOML",
    ),
]


@pytest.mark.parametrize("name, setup, argv, pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_error(world, capsys, name, setup, argv, pattern):
    setup(world)
    fill = {"w": world, "run": world / "run", "cache": world / "cache", "acts": world / "acts.npy"}
    line = cli_error(capsys, [a.format(**fill) for a in argv])
    assert re.search(pattern, line), line
    for made in ("new-run", "new-cache", "new-sweep"):
        assert not (world / made).exists(), f"{made} left behind"


def test_there_are_at_least_forty_cases():
    assert len(CASES) >= 40


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
