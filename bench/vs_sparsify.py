"""saelab's training step vs EleutherAI sparsify's, on the same real activations and sizes.

python bench/vs_sparsify.py --activations CACHE [--d-sae 4608 18432] [--rounds 5]

sparsify is installed into its own virtual environment (bench/.venv-sparsify: torch==2.13.0,
then eai-sparsify==1.3.3, which brings `schedulefree`) and timed in a child process with the
step its trainer runs (sparsify/trainer.py), in two configurations:
- `default`: what a sparsify user gets: its default optimizer, signum (SignSGD) wrapped in
  schedulefree's ScheduleFreeWrapper (momentum 0.95) at lr 5e-3 / sqrt(d_sae / 2^14), the FVU
  loss with the batch's total variance, no AuxK (auxk_alpha 0): decoder renormalisation before
  the forward, backward, removal of the decoder-gradient component parallel to each row, step;
- `adam`: the same step with sparsify's `--optimizer adam` (torch Adam at 2e-4 / sqrt(d_sae /
  2^14); its warmup schedule costs nothing per step and is left out).
saelab's step is Trainer.train_step with every default (TrainConfig(), SAEConfig with only arch,
sizes and k): topk against sparsify's TopK, and batchtopk against the same (sparsify has no
BatchTopK). Rounds alternate the contenders; each reports the median of 3 timed steps after a
warm-up step; the table gives medians over rounds and the ratios saelab / sparsify. The batch
is the first shuffled batch of an activation cache (`saelab cache`: real activations, massive
first-token norms included); the same contenders on random Gaussian data of that shape are a
secondary column (one round each).
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
from saelab.data.cache import ActivationCache
from saelab.train.loop import Trainer

VENV = Path(__file__).parent / ".venv-sparsify"
CHILD = r"""
import json, statistics, sys, time
import numpy as np, torch
from sparsify import SparseCoder, SparseCoderConfig
x = torch.from_numpy(np.load(sys.argv[1]))
d_sae, k, optimizer = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
sae = SparseCoder(x.shape[1], SparseCoderConfig(num_latents=d_sae, k=k))
sae.b_dec.data = x.mean(0)
scale = (d_sae / 2**14) ** 0.5
if optimizer == "default":
    from schedulefree import ScheduleFreeWrapper
    from sparsify.sign_sgd import SignSGD
    signum = SignSGD([dict(params=sae.parameters(), lr=5e-3 / scale)])
    opt = ScheduleFreeWrapper(signum, momentum=0.95)
    opt.train()
else:
    opt = torch.optim.Adam(sae.parameters(), lr=2e-4 / scale)
def step():
    sae.set_decoder_norm_to_unit_norm()
    total_variance = (x - x.mean(0)).pow(2).sum()
    out = sae(x, dead_mask=None, total_variance=total_variance)
    out.fvu.backward()
    sae.remove_gradient_parallel_to_decoder_directions()
    opt.step()
    opt.zero_grad()
step()
times = []
for _ in range(3):
    t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
print(json.dumps({"tokens_per_s": len(x) / statistics.median(times)}))
"""
SPARSIFY = ("default", "adam")
SAELAB = ("topk", "batchtopk")


def ensure_venv() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "eai-sparsify==1.3.3"], check=True
        )
    return python


def saelab_rate(x: torch.Tensor, arch: str, d_sae: int, k: int) -> float:
    sae = SAE(SAEConfig(arch=arch, d_in=x.shape[1], d_sae=d_sae, k=k), seed=0)
    trainer = Trainer(sae, TrainConfig(batch_size=len(x), progress=False), total_steps=1000)
    trainer.train_step(x)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        trainer.train_step(x)
        times.append(time.perf_counter() - start)
    return len(x) / statistics.median(times)


def sparsify_rate(python: Path, data: Path, d_sae: int, k: int, optimizer: str) -> float:
    child = subprocess.run(
        [str(python), "-c", CHILD, str(data), str(d_sae), str(k), optimizer],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(child.stdout.strip().splitlines()[-1])["tokens_per_s"]


def rates(
    python: Path, x: torch.Tensor, data: Path, d_sae: int, k: int, rounds: int
) -> dict[str, float]:
    """Medians over alternating rounds of every contender's tokens/s."""
    runs = {name: [] for name in (*SAELAB, *(f"sparsify-{o}" for o in SPARSIFY))}
    for _ in range(rounds):
        for arch in SAELAB:
            runs[arch].append(saelab_rate(x, arch, d_sae, k))
        for optimizer in SPARSIFY:
            runs[f"sparsify-{optimizer}"].append(sparsify_rate(python, data, d_sae, k, optimizer))
    return {name: statistics.median(values) for name, values in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--activations", metavar="CACHE", required=True, help="an activation cache (saelab cache)"
    )
    parser.add_argument("--d-sae", type=int, nargs="+", default=[4608, 18432])
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    python = ensure_venv()
    real = next(ActivationCache(args.activations).batches(args.batch, seed=0))
    random = torch.from_numpy(
        np.random.default_rng(0).normal(size=tuple(real.shape)).astype(np.float32)
    )
    print(
        f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"{args.activations}, d_in={real.shape[1]}, k={args.k}, batch={args.batch}, {args.rounds} "
        "alternating rounds; tokens/s"
    )
    print(
        f"{'d_sae':>6} {'contender':<18} {'real':>7} {'vs sparsify default':>20} "
        f"{'vs sparsify adam':>17} {'random':>7} {'vs default (random)':>20}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for d_sae in args.d_sae:
            measured = {}
            for name, x, rounds in (("real", real, args.rounds), ("random", random, 1)):
                data = Path(tmp) / f"{name}.npy"
                np.save(data, x.numpy())
                measured[name] = rates(python, x, data, d_sae, args.k, rounds)
            real_rates, random_rates = measured["real"], measured["random"]
            for name, rate in real_rates.items():
                print(
                    f"{d_sae:>6} {name:<18} {rate:>7.0f} "
                    f"{rate / real_rates['sparsify-default']:>19.2f}x "
                    f"{rate / real_rates['sparsify-adam']:>16.2f}x {random_rates[name]:>7.0f} "
                    f"{random_rates[name] / random_rates['sparsify-default']:>19.2f}x"
                )


if __name__ == "__main__":
    main()
