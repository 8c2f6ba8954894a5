"""Peak memory of SAE training steps against the floor: parameters + Adam state + one batch + its codes.

python bench/memory.py [--d-sae 4608 18432] [--archs topk batchtopk] [--steps 3]

Each (arch, d_sae, path) runs in a fresh child process: it measures its resident memory after
importing torch and saelab, then builds the batch, the SAE and its trainer and runs `--steps`
training steps (Trainer.train_step, as in training). The peak is the process's maximum resident
set size (ru_maxrss) minus that baseline; on CUDA (--device cuda) it is
torch.cuda.max_memory_allocated. The floor counts parameters (4 bytes each), Adam's two moments,
the batch [n, d_in] and the codes: n * k (index, value) pairs on the sparse path, a dense
[n, d_sae] float tensor on the dense path. Also printed: the gradients (one more copy of the
parameters) and the [n, d_sae] pre-activation, which the encoder product writes before top-k
selects from it.
"""

import argparse
import json
import platform
import resource
import subprocess
import sys

MB = 2**20


def child(arch: str, d_sae: int, d_in: int, k: int, batch: int, sparse: bool, steps: int, device: str) -> dict:
    import torch

    from saelab import SAE, SAEConfig, TrainConfig
    from saelab.train.loop import Trainer

    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * resource.getpagesize()

    torch.manual_seed(0)
    base = torch.cuda.memory_allocated() if device == "cuda" else rss()
    x = torch.randn(batch, d_in, device=device)
    sae = SAE(SAEConfig(arch=arch, d_in=d_in, d_sae=d_sae, k=None if arch == "topafa" else k), seed=0).to(device)
    trainer = Trainer(sae, TrainConfig(batch_size=batch, sparse=sparse, progress=False), total_steps=1000)
    for _ in range(steps):
        trainer.train_step(x)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    params = sum(p.numel() for p in sae.parameters()) * 4
    codes = batch * k * (8 + 4) if sparse else batch * d_sae * 4
    return {"peak": peak, "params": params, "adam": 2 * params, "batch": batch * d_in * 4, "codes": codes,
            "grads": params, "pre": batch * d_sae * 4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--d-sae", type=int, nargs="+", default=[4608, 18432])
    parser.add_argument("--archs", nargs="+", default=["topk", "batchtopk"])
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", nargs=3, metavar=("ARCH", "D_SAE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        arch, d_sae, path = args.child
        print(json.dumps(child(arch, int(d_sae), args.d_in, args.k, args.batch, path == "sparse", args.steps,
                               args.device)))
        return
    print(f"{platform.machine()}, device {args.device}; d_in={args.d_in}, k={args.k}, batch={args.batch}, "
          f"{args.steps} steps; MiB")
    print(f"{'arch':<10} {'d_sae':>6} {'path':<7} {'peak':>7} {'floor':>7} {'peak/floor':>10} "
          f"{'params':>7} {'adam':>7} {'batch':>6} {'codes':>7} {'grads':>7} {'pre':>7}")
    for d_sae in args.d_sae:
        for arch in args.archs:
            for path in ("sparse", "dense"):
                out = subprocess.run([sys.executable, __file__, "--child", arch, str(d_sae), path,
                                      "--d-in", str(args.d_in), "--k", str(args.k), "--batch", str(args.batch),
                                      "--steps", str(args.steps), "--device", args.device],
                                     capture_output=True, text=True, check=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                floor = r["params"] + r["adam"] + r["batch"] + r["codes"]
                print(f"{arch:<10} {d_sae:>6} {path:<7} {r['peak'] / MB:>7.0f} {floor / MB:>7.0f} "
                      f"{r['peak'] / floor:>9.2f}x " + " ".join(f"{r[key] / MB:>7.0f}" for key in
                                                               ("params", "adam", "batch", "codes", "grads", "pre")))


if __name__ == "__main__":
    main()
