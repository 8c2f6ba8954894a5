"""torchrun with 2 CPU processes (gloo) against one process with the same global batch."""

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
    np.save(path, (rng.normal(size=(6000, 16)) * rng.uniform(0.5, 3, size=(6000, 1))).astype(np.float32))
    return path


def _args(acts, out, arch):
    return ["train", "--activations", str(acts), "--arch", arch, "--k", "4", "--expansion", "4", "--tokens", "4096",
            "--batch-size", "256", "--lr", "3e-3", "--eval-tokens", "500", "--dead-tokens", "512",
            "--out", str(out), "--no-progress"]


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu"])
def test_two_processes_equal_one(acts, tmp_path, arch):
    cli.main(_args(acts, tmp_path / "single", arch))
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "saelab",
                             *_args(acts, tmp_path / "multi", arch)], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    single = load_file(str(tmp_path / "single" / "sae.safetensors"))
    multi = load_file(str(tmp_path / "multi" / "sae.safetensors"))
    for name in single:
        torch.testing.assert_close(multi[name], single[name], rtol=1e-4, atol=1e-5, msg=name)
    assert result.stdout.count("held-out evaluation") == 1  # only rank 0 evaluates and prints


def test_torchrun_refuses_harvesting(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "saelab", "train",
                             "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "under torchrun" in result.stderr
