"""Harvesting throughput vs the same model's forward pass, whole and truncated, in the same run.

python bench/harvest.py [--model builtin:smollm2-135m] [--layer 15] [--batch 16] [--ctx 128]
    [--repeats 5] [--hookpoints layers.0-15.mlp_in,layers.0-15.mlp_out]

Alternates the contenders on the same random token batch and reports median tokens/s of each
and the ratios: the full pass computes all blocks and the LM head (as a user would without
saelab's early stop); the truncated pass is the base model with its blocks after the hooked one
removed (no LM head): the least a harvest can cost; harvesting (`saelab.harvest`) stops after
the hooked block by raising from a hook; `harvest_many` captures every --hookpoints point (none
deeper than --layer) in one pass, against one harvest per point.
"""

import argparse
import platform
import statistics
import time

import torch

from saelab.data.hooks import _hf_model, blocks_of, harvest, harvest_many, parse_hookpoints
from saelab.data.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2-135m")
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--ctx", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hookpoints", default="layers.0-15.mlp_in,layers.0-15.mlp_out")
    args = parser.parse_args()

    lm = load_model(args.model)
    ids = torch.randint(100, lm.model.config.vocab_size, (args.batch, args.ctx))
    tokens = args.batch * args.ctx

    def full():
        with torch.inference_mode():
            lm.model(ids)

    net = _hf_model(lm)
    blocks = blocks_of(net)

    def truncated():
        kept = list(blocks)
        del blocks[args.layer + 1 :]
        try:
            with torch.inference_mode():
                net.base_model(input_ids=ids, use_cache=False)
        finally:
            blocks.extend(kept[args.layer + 1 :])

    def hooked():
        harvest(lm, ids, args.layer, "resid_post")

    points = parse_hookpoints(args.hookpoints, len(blocks))

    def many():
        harvest_many(lm, ids, points)

    def each():
        for point in points:
            harvest(lm, ids, point.layer, point.site)

    contenders = {
        "full forward": full,
        f"truncated L{args.layer}": truncated,
        f"harvest L{args.layer}": hooked,
        f"harvest_many {len(points)} points": many,
        f"{len(points)} harvests": each,
    }
    for fn in contenders.values():  # warm-up
        fn()
    times = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    print(
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}"
    )
    print(
        f"model {args.model}, batch {args.batch} x ctx {args.ctx}, {args.repeats} alternating "
        "repeats"
    )
    rates = {name: tokens / statistics.median(t) for name, t in times.items()}
    for name, rate in rates.items():
        print(f"  {name:<22} {rate:8.0f} tokens/s (median)")
    full_rate, truncated_rate, harvest_rate, many_rate, each_rate = rates.values()
    print(f"  harvest / full             {harvest_rate / full_rate:8.2f}x")
    print(f"  harvest / truncated        {harvest_rate / truncated_rate:8.2f}x")
    print(f"  harvest_many / harvest     {many_rate / harvest_rate:8.2f}x")
    print(f"  harvest_many / each point  {many_rate / each_rate:8.2f}x")


if __name__ == "__main__":
    main()
