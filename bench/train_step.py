"""SAE training-step throughput: saelab's sparse path vs its dense reference path vs the roofline.

python bench/train_step.py [--d-sae 4608 18432] [--archs topk batchtopk topafa] [--repeats 3]

For each size, in one process: the matmul FLOP/s of the encoder product ([4096, 576] @ [576,
d_sae]) gives the roofline, 2 * d_in * d_sae FLOPs per token (the dense encoder product, which
exact top-k cannot avoid). Then full training steps (loss, backward, decoder-gradient
projection, clipping, Adam, renormalisation: Trainer.train_step) alternate between the sparse
and the dense path on the same batch; medians of `--repeats` timed steps after a warm-up.
"""

import argparse
import platform
import statistics
import time

import torch

from saelab import SAE, SAEConfig, TrainConfig
from saelab.train.loop import Trainer


def matmul_flops(x: torch.Tensor, w: torch.Tensor, repeats: int) -> float:
    x @ w
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        x @ w
        times.append(time.perf_counter() - start)
    return 2 * x.shape[0] * x.shape[1] * w.shape[1] / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--d-sae", type=int, nargs="+", default=[4608, 18432])
    parser.add_argument("--archs", nargs="+", default=["topk", "batchtopk", "topafa"])
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.d_in)
    print(f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"d_in={args.d_in}, k={args.k}, batch={args.batch}, medians of {args.repeats}")
    print(f"{'arch':<10} {'d_sae':>6} {'sparse tok/s':>13} {'dense tok/s':>12} {'speedup':>8} {'roofline':>9} "
          f"{'% roofline':>10}")
    for d_sae in args.d_sae:
        roofline = matmul_flops(x, torch.randn(args.d_in, d_sae), args.repeats) / (2 * args.d_in * d_sae)
        for arch in args.archs:
            trainers = {}
            for path in ("sparse", "dense"):
                sae = SAE(SAEConfig(arch=arch, d_in=args.d_in, d_sae=d_sae, k=args.k), seed=0)
                cfg = TrainConfig(batch_size=args.batch, sparse=path == "sparse", progress=False)
                trainers[path] = Trainer(sae, cfg, total_steps=1000)
                trainers[path].train_step(x)  # warm-up, data-driven initialisation
            times = {path: [] for path in trainers}
            for _ in range(args.repeats):
                for path, trainer in trainers.items():
                    start = time.perf_counter()
                    trainer.train_step(x)
                    times[path].append(time.perf_counter() - start)
            rate = {path: args.batch / statistics.median(t) for path, t in times.items()}
            print(f"{arch:<10} {d_sae:>6} {rate['sparse']:>13.0f} {rate['dense']:>12.0f} "
                  f"{rate['sparse'] / rate['dense']:>7.2f}x {roofline:>9.0f} {100 * rate['sparse'] / roofline:>9.0f}%")


if __name__ == "__main__":
    main()
