"""SAE training-step throughput: saelab's sparse path vs its dense reference path vs the roofline.

python bench/train_step.py --activations CACHE [--d-sae 4608 18432] [--archs topk batchtopk topafa]
                           [--repeats 3] [--extra bf16 compile adam-foreach one-tile]

For each size, in one process: the matmul FLOP/s of the encoder product ([4096, 576] @ [576,
d_sae]) gives the roofline, 2 * d_in * d_sae FLOPs per token (the dense encoder product, which
exact top-k cannot avoid). Then full training steps (loss, backward, decoder-gradient
projection, clipping, Adam, renormalisation: Trainer.train_step) alternate between the sparse
and the dense path (and, with --extra, the sparse path under bfloat16 autocast or
torch.compile, or with torch's unfused foreach Adam instead of the fused one saelab uses, or with
the pre-activation in one tile instead of row tiles: `one-tile`) on the same batch; medians of
`--repeats` timed steps after a warm-up (for compile, after the compilation). The batch is the
first shuffled batch of an activation cache (`saelab cache`: real activations, massive
first-token norms included); the sparse path on random Gaussian data of the same shape is a
secondary column.
"""

import argparse
import platform
import statistics
import time

import torch

from saelab import SAE, SAEConfig, TrainConfig
from saelab.sae import sparse
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
    parser.add_argument(
        "--extra",
        nargs="*",
        default=[],
        choices=["bf16", "compile", "adam-foreach", "one-tile"],
        help="also time the sparse path with these TrainConfig flags, with the unfused Adam, or "
        "with the whole pre-activation in one tile",
    )
    parser.add_argument(
        "--activations",
        metavar="CACHE",
        required=True,
        help="real activations from this cache (saelab cache --model builtin:smollm2-135m ...)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the timings, profile one sparse step per arch and size (torch.profiler): "
        "the operators that take the time",
    )
    args = parser.parse_args()
    from saelab.data.cache import ActivationCache

    cache = ActivationCache(args.activations)
    x, args.d_in = next(cache.batches(args.batch, seed=0)), cache.d_in
    torch.manual_seed(0)
    data = {"real": x, "random": torch.randn(args.batch, args.d_in)}
    print(
        f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"d_in={args.d_in}, k={args.k}, batch={args.batch}, medians of {args.repeats}; "
        f"data: {args.activations or 'random'}"
    )
    print(
        f"{'arch':<10} {'d_sae':>6} {'sparse tok/s':>13} {'dense tok/s':>12} {'speedup':>8} "
        f"{'roofline':>9} {'% roofline':>10}"
        + "".join(f" {'sparse+' + e + ' tok/s':>20}" for e in args.extra)
        + f" {'sparse tok/s (random data)':>27}"
    )
    profiles = []
    for d_sae in args.d_sae:
        roofline = matmul_flops(x, torch.randn(args.d_in, d_sae), args.repeats) / (
            2 * args.d_in * d_sae
        )
        for arch in args.archs:
            trainers = {}
            for path in ("sparse", "dense", *args.extra, "random"):
                k = None if arch == "topafa" else args.k
                sae = SAE(SAEConfig(arch=arch, d_in=args.d_in, d_sae=d_sae, k=k), seed=0)
                flags = {path: True} if path in ("bf16", "compile") else {}
                cfg = TrainConfig(
                    batch_size=args.batch, sparse=path != "dense", progress=False, **flags
                )
                trainers[path] = Trainer(sae, cfg, total_steps=1000)
                if path == "adam-foreach":
                    trainers[path].optimizer = torch.optim.Adam(
                        sae.parameters(), lr=cfg.lr, betas=cfg.betas, foreach=True
                    )
                for _ in range(
                    2 if path == "compile" else 1
                ):  # warm-up, initialisation, compilation
                    step(trainers[path], path, data)
            times = {path: [] for path in trainers}
            for _ in range(args.repeats):
                for path, trainer in trainers.items():
                    start = time.perf_counter()
                    step(trainer, path, data)
                    times[path].append(time.perf_counter() - start)
            rate = {path: args.batch / statistics.median(t) for path, t in times.items()}
            print(
                f"{arch:<10} {d_sae:>6} {rate['sparse']:>13.0f} {rate['dense']:>12.0f} "
                f"{rate['sparse'] / rate['dense']:>7.2f}x {roofline:>9.0f} "
                f"{100 * rate['sparse'] / roofline:>9.0f}%"
                + "".join(f" {rate[e]:>20.0f}" for e in args.extra)
                + f" {rate['random']:>27.0f}"
            )
            if args.profile:
                profiles.append((arch, d_sae, profile_step(trainers["sparse"], x)))
    for arch, d_sae, table in profiles:
        print(f"\nprofile of one sparse {arch} step at d_sae={d_sae} (self CPU time):\n{table}")


def step(trainer: Trainer, path: str, data: dict) -> None:
    """One training step on the path's data (random data for `random`, else the real batch)."""
    tile_entries = sparse.TILE_ENTRIES
    if path == "one-tile":
        sparse.TILE_ENTRIES = 2**62
    try:
        trainer.train_step(data["random" if path == "random" else "real"])
    finally:
        sparse.TILE_ENTRIES = tile_entries


def profile_step(trainer: Trainer, x: torch.Tensor) -> str:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        trainer.train_step(x)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10)


if __name__ == "__main__":
    main()
