"""The training step on a CUDA GPU: saelab's topk and batchtopk against EleutherAI sparsify's
TopK step (its Triton decoder) in the same run; one JSON line per measurement.

python bench/gpu_step.py [--d-sae 16384 65536 131072] [--d-in 2304] [--batch 4096 16384]
    [--dtypes fp32 bf16] [--steps 20] [--activations CACHE]

Data: rows of the given width with heavy-tailed norms (Gaussian directions times a lognormal
norm, a few rows 30x larger, as real residual streams have), or, with --activations, the first
shuffled batch of a cache (`saelab cache`: real activations at that model's width). saelab's
step is Trainer.train_step with TrainConfig's defaults (Adam, AuxK, bf16 autocast for the
encoder product under `bf16`). sparsify's (when importable: bench/gpu_check.sh installs its
wheel) is its trainer's step with `--optimizer adam`: decoder rows renormalised, forward with
its fused encoder and Triton decoder, FVU backward, the parallel gradient removed, Adam; under
`bf16` inside the same autocast. Each: 3 warm-up steps, then --steps steps between CUDA events
(the mean), peak memory from torch.cuda.max_memory_allocated after a reset.
"""

import argparse
import json

import torch

from saelab import SAE, SAEConfig, TrainConfig
from saelab.data.cache import ActivationCache
from saelab.train.loop import Trainer

K = 32


def rows(batch: int, d_in: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, d_in, generator=g)
    norms = torch.exp(0.5 * torch.randn(batch, 1, generator=g))
    norms[:: max(1, batch // 64)] *= 30
    return x * norms


def timed(step, steps: int) -> tuple[float, float]:
    """(ms per step, peak GiB) of step() after 3 warm-up steps."""
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / steps, torch.cuda.max_memory_allocated() / 2**30


def saelab_step(arch: str, x: torch.Tensor, d_sae: int, bf16: bool):
    sae = SAE(SAEConfig(arch=arch, d_in=x.shape[1], d_sae=d_sae, k=K), seed=0).cuda()
    trainer = Trainer(sae, TrainConfig(batch_size=len(x), bf16=bf16, progress=False), 10**6)
    return lambda: trainer.train_step(x)


def sparsify_step(x: torch.Tensor, d_sae: int, bf16: bool):
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(x.shape[1], SparseCoderConfig(num_latents=d_sae, k=K), device="cuda")
    sae.b_dec.data = x.mean(0)
    optimizer = torch.optim.Adam(sae.parameters(), lr=2e-4 / (d_sae / 2**14) ** 0.5)
    total_variance = (x - x.mean(0)).pow(2).sum()

    def step():
        sae.set_decoder_norm_to_unit_norm()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            out = sae(x, dead_mask=None, total_variance=total_variance)
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-sae", type=int, nargs="+", default=[16384, 65536, 131072])
    parser.add_argument("--d-in", type=int, default=2304)
    parser.add_argument("--batch", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--activations", metavar="CACHE")
    args = parser.parse_args()
    try:
        import sparsify  # noqa: F401

        contenders = ["saelab-topk", "saelab-batchtopk", "sparsify-topk"]
    except ImportError:
        print(json.dumps({"note": "sparsify is not installed: saelab's steps alone"}))
        contenders = ["saelab-topk", "saelab-batchtopk"]
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__}))
    for batch in args.batch:
        if args.activations:
            x, data = next(ActivationCache(args.activations).batches(batch, seed=0)), "cache"
        else:
            x, data = rows(batch, args.d_in), "heavy-tailed"
        x = x.cuda()
        for d_sae in args.d_sae:
            for dtype in args.dtypes:
                bf16 = dtype == "bf16"
                for name in contenders:
                    lib, arch = name.split("-")
                    torch.cuda.empty_cache()
                    step = None
                    try:
                        if lib == "saelab":
                            step = saelab_step(arch, x, d_sae, bf16)
                        else:
                            step = sparsify_step(x, d_sae, bf16)
                        ms, peak = timed(step, args.steps)
                        result = {"step_ms": round(ms, 3), "tokens_per_s": round(batch / ms * 1e3)}
                        result["peak_gib"] = round(peak, 3)
                    except torch.OutOfMemoryError:
                        result = {"error": "out of memory"}
                    del step
                    print(
                        json.dumps(
                            {
                                "lib": lib,
                                "arch": arch,
                                "data": data,
                                "d_in": x.shape[1],
                                "d_sae": d_sae,
                                "batch": batch,
                                "dtype": dtype,
                                "k": K,
                                **result,
                            }
                        ),
                        flush=True,
                    )


if __name__ == "__main__":
    main()
