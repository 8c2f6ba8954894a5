"""The cost of a forward pass with an SAE spliced in (saelab.spliced, issue 30) against the clean
pass and against the SAE's own encode + decode on the same activations.

python bench/spliced.py RUN [--batch 8] [--repeats 5]

RUN: an SAE of the default model (`saelab train`). A batch of --batch held-out contexts of the
SAE's text (128 tokens each); the contenders alternate in each round, medians of --repeats
rounds: the clean forward, the forward with the SAE spliced in (error term kept), the SAE
alone on the hook point's activations (encode + decode), and the splice's replacement alone on
them (encode, decode, error term, BOS kept). The splice should cost about the clean pass plus
the SAE alone.
"""

import argparse
import statistics
import time

import torch

from saelab import SAE, spliced
from saelab.data.cache import CacheSpec
from saelab.data.hooks import harvest
from saelab.data.models import load_model
from saelab.data.streaming import heldout_contexts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    sae = SAE.load(args.run)
    meta = sae.cfg.metadata
    lm = load_model(meta["model"])
    spec = CacheSpec(model=meta["model"], layer=meta["layer"], site=meta["site"],
                     dataset=meta["dataset"], split="eval", ctx_len=meta["ctx_len"])  # fmt: skip
    ids = heldout_contexts(lm, spec, args.batch)
    acts = harvest(lm.model, ids, meta["layer"], meta["site"])

    def clean():
        lm.model(ids)

    def with_sae():
        with spliced(lm, sae, error_term=True):
            lm.model(ids)

    def sae_alone():
        sae(acts)

    with spliced(lm, sae, error_term=True) as run:  # its replacement, outside the model

        def replacement():
            run.replace(run.spliced[0], acts, acts)

    contenders = (clean, with_sae, sae_alone, replacement)
    times = {name: [] for name in ("clean", "spliced", "sae alone", "replacement")}
    with torch.no_grad():
        for fn in contenders:  # warm up
            fn()
        for _ in range(args.repeats):
            for name, fn in zip(times, contenders):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    tokens = ids.numel()
    print(f"{tokens} tokens ({args.batch} x {ids.shape[1]}), {torch.get_num_threads()} threads")
    for name, seconds in median.items():
        print(f"{name:>10}: {seconds * 1000:8.1f} ms  {tokens / seconds:8.0f} tokens/s")
    extra = median["spliced"] - median["clean"]
    ratio = extra / median["sae alone"]
    print(f"spliced - clean = {extra * 1000:.1f} ms = {ratio:.2f} x the SAE alone")
    print(f"replacement / SAE alone = {median['replacement'] / median['sae alone']:.2f}")


if __name__ == "__main__":
    main()
