"""Peak memory of SAE training steps against the floor: parameters + Adam state + one batch +
its codes.

python bench/memory.py --activations CACHE [--d-sae 4608 18432] [--archs topk batchtopk] [--steps 3]

Each (arch, d_sae, path) runs in a fresh child process. Its baseline is the resident memory
after importing torch and saelab, reading the batch (the first shuffled batch of an activation
cache made by `saelab cache`: real activations) and one training step of a tiny SAE of the same
architecture (which loads the code pages and thread pools every step uses), less the batch.
Then it builds the SAE and its trainer, runs one step (which also initialises from the data),
resets the peak and runs `--steps` more training steps (Trainer.train_step). The peak is the
process's peak resident size over those steps (VmHWM, reset through /proc/self/clear_refs) minus
the baseline: what the operating system gives the process, allocator retention included; on
CUDA (--device cuda) it is torch.cuda.max_memory_allocated.

The floor counts parameters (4 bytes each), Adam's two moments, the gradients (one more copy of
the parameters), the batch [n, d_in] and the codes: n * k (index, value) pairs on the sparse
path, a dense [n, d_sae] float tensor on the dense path. Paths: `sparse` (saelab's default: the
pre-activation in row tiles, sae/sparse.py), `one-tile` (the same with the whole [n, d_sae]
pre-activation in one tile, as before the tiles) and `dense` (the reference path). Also printed:
the size of that whole pre-activation.
"""

import argparse
import json
import platform
import subprocess
import sys

MB = 2**20


def child(
    arch: str,
    d_sae: int,
    cache: str,
    k: int,
    batch: int,
    sparse: bool,
    one_tile: bool,
    steps: int,
    device: str,
) -> dict:
    import torch

    from saelab import SAE, SAEConfig, TrainConfig
    from saelab.data.cache import ActivationCache
    from saelab.sae import sparse as sparse_path
    from saelab.train.loop import Trainer

    if one_tile:
        sparse_path.TILE_ENTRIES = 2**62

    def status(key: str) -> int:
        """A field of /proc/self/status, in bytes (VmRSS: resident now, VmHWM: peak resident)."""
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key))

    torch.manual_seed(0)
    x = next(ActivationCache(cache).batches(batch, seed=0)).to(device)
    d_in = x.shape[1]

    def trainer_for(width: int) -> Trainer:
        sae = SAE(
            SAEConfig(arch=arch, d_in=d_in, d_sae=width, k=None if arch == "topafa" else k), seed=0
        )
        return Trainer(
            sae.to(device),
            TrainConfig(batch_size=batch, sparse=sparse, progress=False),
            total_steps=1000,
        )

    trainer_for(4 * k).train_step(
        x
    )  # loads the code pages and thread pools the step uses, with tiny tensors
    base = (
        torch.cuda.memory_allocated() - x.numel() * 4
        if device == "cuda"
        else status("VmRSS:") - x.numel() * 4
    )
    trainer = trainer_for(d_sae)
    sae = trainer.sae
    trainer.train_step(x)  # the first step also initialises b_dec and the input scale from the data
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current resident size
    for _ in range(steps):
        trainer.train_step(x)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda" else status("VmHWM:")) - base
    params = sum(p.numel() for p in sae.parameters()) * 4
    codes = batch * k * (8 + 4) if sparse else batch * d_sae * 4
    return {
        "peak": peak,
        "params": params,
        "adam": 2 * params,
        "batch": batch * d_in * 4,
        "codes": codes,
        "grads": params,
        "pre": batch * d_sae * 4,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--activations", metavar="CACHE", required=True, help="an activation cache (saelab cache)"
    )
    parser.add_argument("--d-sae", type=int, nargs="+", default=[4608, 18432])
    parser.add_argument("--archs", nargs="+", default=["topk", "batchtopk"])
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--child", nargs=3, metavar=("ARCH", "D_SAE", "PATH"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        arch, d_sae, path = args.child
        print(
            json.dumps(
                child(
                    arch,
                    int(d_sae),
                    args.activations,
                    args.k,
                    args.batch,
                    path != "dense",
                    path == "one-tile",
                    args.steps,
                    args.device,
                )
            )
        )
        return
    print(
        f"{platform.machine()}, device {args.device}; {args.activations}, k={args.k}, "
        f"batch={args.batch}, {args.steps} steps; MiB"
    )
    print(
        f"{'arch':<10} {'d_sae':>6} {'path':<7} {'peak':>7} {'floor':>7} {'peak/floor':>10} "
        f"{'params':>7} {'adam':>7} {'batch':>6} {'codes':>7} {'grads':>7} {'pre':>7}"
    )
    for d_sae in args.d_sae:
        for arch in args.archs:
            for path in ("sparse", "one-tile", "dense"):
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        arch,
                        str(d_sae),
                        path,
                        "--activations",
                        args.activations,
                        "--k",
                        str(args.k),
                        "--batch",
                        str(args.batch),
                        "--steps",
                        str(args.steps),
                        "--device",
                        args.device,
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                r = json.loads(out.strip().splitlines()[-1])
                floor = r["params"] + r["adam"] + r["grads"] + r["batch"] + r["codes"]
                print(
                    f"{arch:<10} {d_sae:>6} {path:<7} {r['peak'] / MB:>7.0f} {floor / MB:>7.0f} "
                    f"{r['peak'] / floor:>9.2f}x "
                    + " ".join(
                        f"{r[key] / MB:>7.0f}"
                        for key in ("params", "adam", "batch", "codes", "grads", "pre")
                    )
                )


if __name__ == "__main__":
    main()
