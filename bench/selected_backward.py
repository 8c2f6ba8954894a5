"""The backward of the sparse path's selected encoder entries (sae/sparse.SelectedPre): with the
per-row input gradient (an embedding bag over a transposed, made-contiguous W_enc: what every
step computed before 2026-11-29, to reach b_dec through x - b_dec) against without it (b_dec's
gradient as one matrix-vector product, what a training step computes now).

python bench/selected_backward.py CACHE [--d-sae 4608 18432] [--repeats 7]

On real activations (the first shuffled batch of 4096 of CACHE), a TopK SAE's sparse loss;
medians of alternating rounds of loss.backward() with the input requiring a gradient (old
work) and not (new), in one process.
"""

import argparse
import statistics
import time

import torch

from saelab import SAE, SAEConfig
from saelab.data.cache import ActivationCache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache")
    parser.add_argument("--d-sae", type=int, nargs="+", default=[4608, 18432])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    cache = ActivationCache(args.cache)
    x = next(cache.batches(4096, seed=0))
    print(
        f"{torch.get_num_threads()} threads, batch {len(x)}, d_in {cache.d_in}, medians of "
        f"{args.repeats}"
    )
    for d_sae in args.d_sae:
        sae = SAE(
            SAEConfig(arch="topk", d_in=cache.d_in, d_sae=d_sae, k=32, input_scaling="none"), seed=0
        )
        times = {"with input gradient (old)": [], "b_dec by matvec (new)": []}
        for _ in range(args.repeats + 1):
            for label, needs in zip(times, (True, False)):
                loss = sae.loss(x.clone().requires_grad_(needs)).loss
                start = time.perf_counter()
                loss.backward()
                times[label].append(time.perf_counter() - start)
                sae.zero_grad(set_to_none=True)
        medians = {label: statistics.median(t[1:]) for label, t in times.items()}
        old, new = medians.values()
        print(
            f"d_sae {d_sae}: "
            + ", ".join(f"{label} {1e3 * m:.1f} ms" for label, m in medians.items())
            + f"; {old / new:.2f}x"
        )


if __name__ == "__main__":
    main()
