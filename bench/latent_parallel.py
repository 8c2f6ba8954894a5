"""Step time and peak memory per rank of a dictionary split over ranks (latent parallelism)
against DDP, at the same global batch, beside `saelab plan`'s prediction.

python bench/latent_parallel.py --activations CACHE [--d-sae 18432 73728] [--splits 1 2 4]
    [--processes 4] [--batch 4096] [--steps 4] [--arch batchtopk]

Each (d_sae, split) runs as its own torchrun of --processes gloo CPU processes (split 1: DDP
over all of them; split L: L latent ranks x processes / L data ranks). Each rank takes its
rows of the first global batch of the cache (real activations: `saelab cache --model
builtin:smollm2-135m ...`), runs one training step of a tiny SAE on the same mesh (code pages,
thread pools, process groups), takes its resident size as the baseline, builds its shard of the
SAE and its trainer, runs one step (initialisation from the data), resets the peak and times
--steps steps (a barrier before each; the median). Peak: VmHWM minus the baseline, the largest
over ranks. The processes share this machine's cores, so times say what the split costs in
work and communication on a crowded CPU, not what a GPU node would do.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

MB = 2**20


def status(key: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key))


def child(args) -> None:
    import torch.distributed as dist

    from saelab import SAE, SAEConfig, TrainConfig
    from saelab.data.cache import ActivationCache
    from saelab.train.distributed import init_from_env, mesh, shutdown
    from saelab.train.loop import Trainer

    init_from_env()
    grid = mesh(args.split)
    per_rank = args.batch // grid.data_ranks
    first = next(ActivationCache(args.activations).batches(args.batch, seed=0))
    x = first[grid.data_index * per_rank : (grid.data_index + 1) * per_rank].clone()

    def trainer_for(d_sae: int) -> Trainer:
        cfg = SAEConfig(arch=args.arch, d_in=x.shape[1], d_sae=d_sae, k=args.k)
        sae = SAE(cfg, seed=0, shard=grid.shard(d_sae))
        train_cfg = TrainConfig(batch_size=args.batch, progress=False, latent_parallel=args.split)
        return Trainer(sae, train_cfg, total_steps=1000, grid=grid)

    trainer_for(4 * args.k * args.split).train_step(x)
    base = status("VmRSS:")
    trainer = trainer_for(args.d_sae)
    trainer.train_step(x)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # VmHWM back to the resident size now
    times = []
    for _ in range(args.steps):
        dist.barrier()
        start = time.perf_counter()
        trainer.train_step(x)
        times.append(time.perf_counter() - start)
    mine = {"peak": status("VmHWM:") - base, "step": statistics.median(times)}
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    if dist.get_rank() == 0:
        print(json.dumps({"ranks": every}))
    shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--activations", metavar="CACHE", required=True)
    parser.add_argument("--d-sae", type=int, nargs="+", default=[18432, 73728])
    parser.add_argument("--splits", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--arch", default="batchtopk")
    parser.add_argument("--split", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.split is not None:
        args.d_sae = args.d_sae[0]
        child(args)
        return

    from saelab.data.cache import ActivationCache
    from saelab.plan import memory_plan

    d_in = ActivationCache(args.activations).d_in
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"{args.processes} gloo processes; {args.arch}, d_in {d_in}, k {args.k}, "
        f"global batch {args.batch}, median of {args.steps} steps"
    )
    print(f"{'d_sae':>6} {'split':<16} {'step s':>7} {'peak MiB':>9} {'plan MiB':>9} {'ratio':>6}")
    torchrun = Path(sys.executable).with_name("torchrun")
    for d_sae in args.d_sae:
        for split in args.splits:
            command = [
                str(torchrun),
                "--standalone",
                "--nproc_per_node",
                str(args.processes),
                __file__,
                "--split",
                str(split),
                "--activations",
                args.activations,
                "--d-sae",
                str(d_sae),
                "--batch",
                str(args.batch),
                "--k",
                str(args.k),
                "--steps",
                str(args.steps),
                "--arch",
                args.arch,
            ]
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            out = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
            ranks = json.loads(out.stdout.strip().splitlines()[-1])["ranks"]
            peak = max(r["peak"] for r in ranks)
            step = statistics.median(r["step"] for r in ranks)
            plan = memory_plan(d_in, d_sae, args.batch, args.processes, split, args.k).total
            name = "DDP" if split == 1 else f"latent {split} x data {args.processes // split}"
            print(
                f"{d_sae:>6} {name:<16} {step:>7.2f} {peak / MB:>9.0f} {plan / MB:>9.0f} "
                f"{peak / plan:>6.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
