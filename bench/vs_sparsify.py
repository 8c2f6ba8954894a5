"""saelab's TopK training step vs EleutherAI sparsify's, on the same data and sizes.

python bench/vs_sparsify.py [--d-sae 4608 18432] [--rounds 3]

sparsify is installed into its own virtual environment (bench/.venv-sparsify: torch==2.13.0,
then eai-sparsify==1.3.3) and timed in a child process with its own step: forward with a dead
mask, loss = fvu + auxk_alpha * auxk_loss, backward, removal of the decoder-gradient component
parallel to each row, Adam, decoder renormalisation. saelab's step is Trainer.train_step
(topk, sparse path, raw inputs). Rounds alternate saelab then sparsify; each reports the median
of 3 timed steps after a warm-up; the table gives medians over rounds.
"""

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from saelab import SAE, SAEConfig, TrainConfig
from saelab.train.loop import Trainer

VENV = Path(__file__).parent / ".venv-sparsify"
CHILD = r"""
import json, statistics, sys, time
import numpy as np, torch
from sparsify import SparseCoder, SparseCoderConfig
x = torch.from_numpy(np.load(sys.argv[1]))
d_sae, k = int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
sae = SparseCoder(x.shape[1], SparseCoderConfig(num_latents=d_sae, k=k))
opt = torch.optim.Adam(sae.parameters(), lr=3e-4)
dead = torch.zeros(d_sae, dtype=torch.bool)
def step():
    out = sae(x, dead_mask=dead)
    loss = out.fvu + out.auxk_loss / 32
    loss.backward()
    sae.remove_gradient_parallel_to_decoder_directions()
    opt.step()
    opt.zero_grad()
    sae.set_decoder_norm_to_unit_norm()
step()
times = []
for _ in range(3):
    t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
print(json.dumps({"tokens_per_s": len(x) / statistics.median(times)}))
"""


def ensure_venv() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "eai-sparsify==1.3.3"], check=True)
    return python


def saelab_rate(x: torch.Tensor, d_sae: int, k: int) -> float:
    sae = SAE(SAEConfig(arch="topk", d_in=x.shape[1], d_sae=d_sae, k=k, input_scaling="none"), seed=0)
    trainer = Trainer(sae, TrainConfig(batch_size=len(x), progress=False), total_steps=1000)
    trainer.train_step(x)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        trainer.train_step(x)
        times.append(time.perf_counter() - start)
    return len(x) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--d-sae", type=int, nargs="+", default=[4608, 18432])
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    python = ensure_venv()
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(args.batch, args.d_in)).astype(np.float32))
    print(f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; topk, "
          f"d_in={args.d_in}, k={args.k}, batch={args.batch}, {args.rounds} alternating rounds")
    print(f"{'d_sae':>6} {'saelab tok/s':>13} {'sparsify tok/s':>15} {'ratio':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "x.npy"
        np.save(data, x.numpy())
        for d_sae in args.d_sae:
            ours, theirs = [], []
            for _ in range(args.rounds):
                ours.append(saelab_rate(x, d_sae, args.k))
                child = subprocess.run([str(python), "-c", CHILD, str(data), str(d_sae), str(args.k)],
                                       capture_output=True, text=True, check=True)
                theirs.append(json.loads(child.stdout.strip().splitlines()[-1])["tokens_per_s"])
            a, b = statistics.median(ours), statistics.median(theirs)
            print(f"{d_sae:>6} {a:>13.0f} {b:>15.0f} {a / b:>6.2f}x")


if __name__ == "__main__":
    main()
