"""torchrun with 2 and 5 CPU processes (gloo) against one process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from saelab import cli


@pytest.fixture(scope="module")
def acts(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "acts.npy"
    rng = np.random.default_rng(0)
    np.save(
        path, (rng.normal(size=(6000, 16)) * rng.uniform(0.5, 3, size=(6000, 1))).astype(np.float32)
    )
    return path


def _args(acts, out, arch):
    return [
        "train",
        "--activations",
        str(acts),
        "--arch",
        arch,
        "--k",
        "4",
        "--expansion",
        "4",
        "--tokens",
        "3200",
        "--batch-size",
        "320",
        "--lr",
        "3e-3",
        "--eval-tokens",
        "500",
        "--dead-tokens",
        "640",
        "--out",
        str(out),
        "--no-progress",
    ]


@pytest.mark.parametrize(
    "arch, processes, extra",
    [
        ("topk", 2, []),
        ("batchtopk", 2, []),
        ("jumprelu", 2, []),
        ("batchtopk", 5, []),
        ("batchtopk", 2, ["--latent-parallel", "2"]),
    ],
)
def test_several_processes_equal_one(acts, tmp_path, arch, processes, extra):
    """5 processes: more than 4 ranks used to crash BatchTopK's global selection at step 1.
    --latent-parallel 2: the dictionary split over the two ranks (test_latent_parallel.py)."""
    cli.main(_args(acts, tmp_path / "single", arch))
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node",
            str(processes),
            "-m",
            "saelab",
            *_args(acts, tmp_path / "multi", arch),
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    single = load_file(str(tmp_path / "single" / "sae.safetensors"))
    multi = load_file(str(tmp_path / "multi" / "sae.safetensors"))
    for name in single:
        torch.testing.assert_close(multi[name], single[name], rtol=1e-4, atol=1e-5)
    assert result.stdout.count("held-out evaluation") == 1  # only rank 0 evaluates and prints


def test_torchrun_refuses_harvesting(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "saelab",
            "train",
            "--out",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "under torchrun" in result.stderr


def _tiny_spec(tmp_path, layer: int):
    """A CacheSpec for the tiny llama at `layer` over 200 short documents written here."""
    from saelab.data.cache import CacheSpec

    text = tmp_path / "docs.jsonl"
    text.write_text(
        "\n".join(
            json.dumps({"text": " ".join(f"w{(i * 7 + j) % 100}" for j in range(30))})
            for i in range(200)
        )
    )
    return CacheSpec(
        model="tiny", layer=layer, site="resid_post", dataset=str(text), ctx_len=8, dtype="float32"
    )


def test_two_processes_on_a_cache_read_their_own_shards(tmp_path):
    """Under torchrun each rank reads its own shards; the result equals one process trained on
    the ranks' batches concatenated (rank 0's rows first)."""
    from tiny_models import tiny_lm

    from saelab import SAE, SAEConfig, TrainConfig, train
    from saelab.data.cache import build_cache

    spec = _tiny_spec(tmp_path, layer=1)
    cache = build_cache(
        tiny_lm("llama"), tmp_path / "cache", spec, 3000, shard_tokens=300, progress=False
    )
    args = [
        "train",
        "--activations",
        str(cache.directory),
        "--arch",
        "topk",
        "--k",
        "4",
        "--expansion",
        "4",
        "--tokens",
        "2048",
        "--batch-size",
        "128",
        "--lr",
        "3e-3",
        "--eval-tokens",
        "300",
        "--dead-tokens",
        "512",
        "--out",
        str(tmp_path / "multi"),
        "--no-progress",
    ]
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "saelab", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    train_part = cache.split(300)[0]
    parts = [train_part.batches(64, seed=0, part=(r, 2)) for r in range(2)]
    global_batches = [torch.cat([next(p) for p in parts]) for _ in range(2048 // 128)]
    single = SAE(SAEConfig(arch="topk", d_in=32, d_sae=128, k=4), seed=0)
    train(
        single,
        global_batches,
        TrainConfig(batch_size=128, total_tokens=2048, lr=3e-3, dead_tokens=512, progress=False),
    )
    multi = load_file(str(tmp_path / "multi" / "sae.safetensors"))
    for name in ("W_dec", "W_enc", "b_enc", "b_dec"):
        torch.testing.assert_close(
            multi[name], getattr(single, name).detach(), rtol=1e-4, atol=1e-5
        )


def test_hook_points_spread_over_ranks_equal_one_process(tmp_path):
    """--distribute-hookpoints: three hook points on two ranks (0 and 2 on rank 0, 1 on rank 1),
    each SAE trained alone on whole global batches, equal to one process training all three;
    each rank evaluates its own."""
    from tiny_models import tiny_lm

    from saelab.data.cache import build_caches
    from saelab.data.hooks import HookPoint

    spec = _tiny_spec(tmp_path, layer=0)
    points = [HookPoint(0, "resid_post"), HookPoint(1, "resid_post"), HookPoint(1, "mlp_in")]
    root = tmp_path / "cache"
    build_caches(
        tiny_lm("llama"), {p: root / p.name for p in points}, spec, 2000, 300, progress=False
    )
    args = [
        "train", "--activations", str(root), "--arch", "topk", "--k", "4", "--expansion", "2",
        "--tokens", "1024", "--batch-size", "128", "--eval-tokens", "300", "--no-progress",
    ]  # fmt: skip
    cli.main([*args, "--out", str(tmp_path / "single")])
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "saelab", *args,
         "--out", str(tmp_path / "multi"), "--distribute-hookpoints"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for point in points:
        single = load_file(str(tmp_path / "single" / point.name / "sae.safetensors"))
        multi = load_file(str(tmp_path / "multi" / point.name / "sae.safetensors"))
        for name in single:
            torch.testing.assert_close(multi[name], single[name], rtol=1e-5, atol=1e-6)
        assert (tmp_path / "multi" / point.name / "eval.json").is_file()
    assert result.stdout.count("held-out evaluation") == 3


def test_spreading_hook_points_needs_several_and_whole_saes(acts, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main([*_args(acts, tmp_path / "one", "topk"), "--distribute-hookpoints"])
    assert "--distribute-hookpoints spreads several hook points" in capsys.readouterr().err
    from saelab import SAE, SAEConfig, TrainConfig, train
    from saelab.errors import ConfigError

    cfg = TrainConfig(batch_size=64, distribute_hookpoints=True, latent_parallel=2)
    with pytest.raises(ConfigError, match="places whole SAEs: it takes latent_parallel 1"):
        train(SAE(SAEConfig(arch="topk", d_in=16, d_sae=64, k=4)), torch.randn(256, 16), cfg)
