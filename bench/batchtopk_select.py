"""BatchTopK's batch selection on real activations: saelab's first cut at a bound from the
running threshold and its adaptive per-row candidate pool (sae/batchtopk.global_batch_topk,
with and without the bound), against a full top-k over all n*d_sae pre-activations, which the
selection before 2026-11-29 fell back to whenever one row held more than 4k of the batch's top
n*k entries.

python bench/batchtopk_select.py RUN CACHE [--batches 6] [--repeats 5]

RUN is a trained batchtopk SAE, CACHE an activation cache of its model and site. For each of
`--batches` batches of 4096 tokens: the pre-activations, whether the old 4k-per-row candidates
would have fallen back, and the median time of each method over `--repeats` alternating rounds
(the pre-activations are computed once, outside the timings).
"""

import argparse
import statistics
import time

import torch

from saelab import SAE
from saelab.data.cache import ActivationCache
from saelab.sae.batchtopk import BOUND_MARGIN, global_batch_topk
from saelab.sae.sparse import RowTiles


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("cache")
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4096)
    args = parser.parse_args()
    sae = SAE.load(args.run)
    k = sae.cfg.k
    x = torch.cat(
        [ActivationCache(args.cache).load_shard(i)["activations"].float() for i in range(2)]
    )
    print(
        f"{args.run}: d_sae {sae.cfg.d_sae}, k {k}, batch {args.batch}, {torch.get_num_threads()} "
        "threads"
    )
    ratios = []
    for b in range(args.batches):
        batch = x[b * args.batch : (b + 1) * args.batch]
        with torch.no_grad():
            pre = sae.pre_activation(sae._scale(batch, sae.input_stats(batch)))
        count = len(batch) * k
        candidates = pre.topk(4 * k, dim=1, sorted=False).values
        cut = candidates.flatten().topk(count, sorted=False).values.min()
        fell_back = bool((candidates.min(dim=1).values >= cut).any())
        bound, pool, full = [], [], []
        tiles = RowTiles.of(pre)
        for _ in range(args.repeats):
            bound.append(
                timed(lambda: global_batch_topk(tiles, k, bound=BOUND_MARGIN * sae.threshold))
            )
            pool.append(timed(lambda: global_batch_topk(tiles, k)))
            full.append(timed(lambda: pre.flatten().topk(count, sorted=False)))
        c, p, f = statistics.median(bound), statistics.median(pool), statistics.median(full)
        ratios.append((f / c, f / p))
        print(
            f"batch {b}: old candidates would fall back: {fell_back}; most entries of one row in "
            f"the top {count}: {int((pre >= cut).sum(1).max())}; first cut {1e3 * c:.1f} ms, pool "
            f"{1e3 * p:.1f} ms, full top-k {1e3 * f:.1f} ms"
        )
    print(
        "median speed-up over the full top-k: first cut "
        f"{statistics.median(r[0] for r in ratios):.2f}x, "
        f"pool {statistics.median(r[1] for r in ratios):.2f}x"
    )


if __name__ == "__main__":
    main()
