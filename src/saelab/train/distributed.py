"""Data-parallel training with torch.distributed (launched by torchrun; NCCL on GPUs, gloo on
CPU). Helpers are no-ops in a single process.

Each rank trains on its slice of the global batch; DDP averages the gradients, so a run on R
ranks with global batch B follows the single-process run with batch B (to float tolerance).
What must be global is made global here: the batch top-k (and so the threshold estimate), the
dead-latent counters, the jumprelu L0 controller and the data-driven initialisation.
"""

from __future__ import annotations

import gc
import os

import torch
import torch.distributed as dist

from ..sae.architecture import Collectives


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def init_from_env() -> bool:
    """Join the process group torchrun describes in the environment; False when not launched so."""
    if is_distributed():
        return True
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return True


def shutdown() -> None:
    """Leave the process group so that it is really destroyed now, while the interpreter is
    alive. destroy_process_group only drops torch's own reference: a DistributedDataParallel
    wrapper (freed only by the cycle collector) keeps the group, and so gloo's worker threads,
    alive into interpreter finalization, where tearing them down aborts the process
    ("terminate called without an active exception", SIGABRT) at random. Collect first."""
    if is_distributed():
        gc.collect()
        dist.destroy_process_group()
        gc.collect()


def collectives() -> Collectives:
    """What an SAE needs to reach the other ranks (sae/architecture.py): this process group's."""
    return (
        Collectives(world_size(), all_gather_cat, all_reduce) if is_distributed() else Collectives()
    )


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate equal-shaped tensors of all ranks along dim 0 (rank order)."""
    if not is_distributed():
        return t
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In place: sum / max / min / mean over ranks."""
    if is_distributed():
        ops = {"max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        dist.all_reduce(t, op=ops.get(op, dist.ReduceOp.SUM))
        if op == "mean":
            t /= world_size()
    return t
