"""The world the bad-input tests run in (tests/test_bad_*.py): a folder with a good .npy file
({acts}), a trained SAE ({run}), an activation cache of a tiny model ({cache}), the model
({w}/model) and a text corpus ({w}/docs.jsonl); base command lines for every subcommand; and
case helpers. Each case is (name, setup, argv, pattern): setup(world) writes what the case
needs, argv uses {w}, {run}, {cache}, {acts}; pattern must occur in the error line."""

import json
import re
import shutil

import numpy as np
import torch
from conftest import cli_error
from tiny_models import saved_model, tiny_lm

from saelab import SAE, SAEConfig, TrainConfig, train
from saelab.data.cache import CacheSpec, build_cache


def build_world(w):
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


def copy_run(w, name):
    shutil.copytree(w / "run", w / name, dirs_exist_ok=True)
    return w / name


def copy_cache(w, name):
    shutil.copytree(w / "cache", w / name, dirs_exist_ok=True)
    return w / name


def edit_json(path, edit):
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def npy(name, array):
    return lambda w: np.save(w / name, array)


def write_file(name, content: bytes):
    return lambda w: (w / name).write_bytes(content)


def nothing(w):
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


def with_args(base, *args, **values):
    """base + args, with the value of each flag named in `values` replaced (model="x":
    --model x)."""
    argv = list(base) + list(args)
    for key, value in values.items():
        argv[argv.index("--" + key.replace("_", "-")) + 1] = value
    return argv


def fill(world) -> dict:
    return {"w": world, "run": world / "run", "cache": world / "cache", "acts": world / "acts.npy"}


def check_case(world, capsys, setup, argv, pattern, made=("new-run", "new-cache", "new-sweep")):
    """Run one case: exit status 2, one error line matching `pattern`, nothing half-made."""
    setup(world)
    line = cli_error(capsys, [a.format(**fill(world)) for a in argv])
    assert re.search(pattern, line), line
    for name in made:
        assert not (world / name).exists(), f"{name} left behind"
    return line
