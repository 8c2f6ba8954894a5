"""How much the expected_norm scale s = sqrt(d_in / E||x||^2) depends on the tokens it is
estimated from: one random batch (saelab before 2026-11-29) against mean_squares (2^18
tokens in a fixed order, what saelab uses now), on a real activation cache.

python bench/norm_estimate.py CACHE_DIR [--batch 4096] [--draws 20]

Prints the scale from the whole cache (the reference), the min / median / max over `--draws`
random batches of `--batch` tokens, and saelab's estimate for the same draws' seeds (one value:
it does not depend on the training seed).
"""

import argparse
import math

import torch

from saelab.data.cache import ActivationCache
from saelab.train.init import NORM_TOKENS, mean_squares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--draws", type=int, default=20)
    args = parser.parse_args()
    cache = ActivationCache(args.cache)
    x = torch.cat([cache.load_shard(i)["activations"].float() for i in range(len(cache.shards))])
    squared = x.double().square().sum(1)
    scale = lambda mean_sq: math.sqrt(cache.d_in / mean_sq)  # noqa: E731
    reference = scale(squared.mean().item())
    one_batch = sorted(
        scale(
            squared[
                torch.randperm(len(x), generator=torch.Generator().manual_seed(s))[: args.batch]
            ]
            .mean()
            .item()
        )
        for s in range(args.draws)
    )
    ours = scale(mean_squares(cache).sum().item())
    print(
        f"cache: {len(x)} tokens, d_in {cache.d_in}; norms: median {squared.sqrt().median():.1f}, "
        f"max {squared.sqrt().max():.1f}"
    )
    print(f"scale from all tokens:                     {reference:.4f}")
    print(
        f"one batch of {args.batch} ({args.draws} draws): min {one_batch[0]:.4f}  "
        f"median {one_batch[len(one_batch) // 2]:.4f}  max {one_batch[-1]:.4f}  "
        f"(max/min {one_batch[-1] / one_batch[0]:.2f})"
    )
    print(
        f"mean_squares ({min(NORM_TOKENS, len(x))} tokens):       {ours:.4f}  "
        f"({100 * (ours / reference - 1):+.2f}% from the reference)"
    )


if __name__ == "__main__":
    main()
