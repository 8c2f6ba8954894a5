"""Training over several processes with torch.distributed (launched by torchrun; NCCL on GPUs,
gloo on CPU). Helpers are no-ops in a single process.

The R ranks form a 2-D mesh, data x latent (`Mesh`): R = D * L. The L ranks of one data index
hold the L shards of one dictionary (latent parallelism: W_enc's columns, b_enc, W_dec's rows,
thresholds; ranks d*L .. d*L + L - 1, neighbours, so a node's fast links carry the latent
traffic) and read the same rows; the D ranks of one latent index hold the same shard and read
different slices of the global batch, and DDP averages their gradients. With L = 1 this is
plain data parallelism. A run on R ranks with global batch B follows the single-process run with
batch B (to float tolerance): what must be global is made global here and in the SAE
(sae/shard.py): the batch top-k (and so the threshold estimate), each token's top-k over all
shards, the dead-latent counters, the jumprelu L0 controller and the data-driven
initialisation.
"""

from __future__ import annotations

import functools
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from ..errors import ConfigError
from ..sae.architecture import Collectives
from ..sae.shard import LatentShard, latent_slices


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


def barrier() -> None:
    """Wait for every rank (a no-op in one process)."""
    if is_distributed():
        dist.barrier()


def group_size(group=None) -> int:
    """The number of ranks of a process group (None: all of them)."""
    return dist.get_world_size(group) if is_distributed() else 1


def all_gather_cat(t: torch.Tensor, group=None) -> torch.Tensor:
    """Concatenate equal-shaped tensors of a group's ranks (None: all) along dim 0, in rank
    order."""
    if group_size(group) == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(group_size(group))]
    dist.all_gather(parts, t.contiguous(), group=group)
    return torch.cat(parts)


def all_reduce(t: torch.Tensor, op: str = "sum", group=None) -> torch.Tensor:
    """In place: sum / max / min / mean over a group's ranks (None: all)."""
    if group_size(group) > 1:
        ops = {"max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        dist.all_reduce(t, op=ops.get(op, dist.ReduceOp.SUM), group=group)
        if op == "mean":
            t /= group_size(group)
    return t


@dataclass(frozen=True)
class Mesh:
    """This rank's place in the data x latent mesh: D data ranks of L latent ranks each."""

    data_ranks: int = 1
    latent_ranks: int = 1
    data_index: int = 0
    latent_index: int = 0
    data_group: object = None  # the ranks that hold this rank's shard (None: all)
    latent_group: object = None  # the ranks that read this rank's rows

    @property
    def part(self) -> tuple[int, int]:
        """(which, of how many): this rank's slice of the global batch."""
        return self.data_index, self.data_ranks

    def collectives(self) -> Collectives:
        """What an SAE needs to reach the other ranks (sae/architecture.py): gather and reduce
        over all ranks, and how many slices of the global batch there are."""
        if self.data_ranks * self.latent_ranks == 1:
            return Collectives()
        return Collectives(self.data_ranks, all_gather_cat, all_reduce)

    def shard(self, d_sae: int) -> LatentShard:
        """This rank's latents of a dictionary of d_sae, and how it reaches the other shards."""
        if self.latent_ranks == 1:
            return LatentShard(0, d_sae)
        start, stop = latent_slices(d_sae, self.latent_ranks)[self.latent_index]
        group = self.latent_group
        return LatentShard(
            start,
            stop,
            self.latent_index,
            self.latent_ranks,
            sum=lambda t: _SumOverShards.apply(t, group),
            shared=lambda t: _SharedByShards.apply(t, group),
            gather=lambda t: all_gather_cat(t, group),
        )


def mesh(latent_parallel: int = 1) -> Mesh:
    """The mesh of this process group with latent_parallel ranks per dictionary (made once per
    size and process group: making process groups is itself a collective)."""
    return _mesh(latent_parallel, dist.group.WORLD if is_distributed() else None)


@functools.cache
def _mesh(latent_parallel: int, world_group) -> Mesh:
    world = world_size()
    if world % latent_parallel:
        raise ConfigError(
            f"latent_parallel={latent_parallel} does not divide the {world} processes "
            "(torchrun --nproc_per_node): each dictionary needs that many ranks"
        )
    if latent_parallel == 1:
        return Mesh(data_ranks=world, data_index=rank())
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    grid = init_device_mesh(
        device, (world // latent_parallel, latent_parallel), mesh_dim_names=("data", "latent")
    )
    return Mesh(
        world // latent_parallel,
        latent_parallel,
        grid.get_local_rank("data"),
        grid.get_local_rank("latent"),
        grid.get_group("data"),
        grid.get_group("latent"),
    )


def alone() -> Mesh:
    """A mesh of this rank alone (its SAEs read whole global batches and share nothing), for
    hook points spread over ranks: a group of one rank each (made once per process group: a
    collective)."""
    return _alone(dist.group.WORLD) if is_distributed() else Mesh()


@functools.cache
def _alone(world_group) -> Mesh:
    groups = [dist.new_group([r]) for r in range(world_size())]
    return Mesh(data_group=groups[rank()], latent_group=groups[rank()])


def owns(index: int) -> bool:
    """Whether the i-th of several hook points' SAEs is this rank's (distribute_hookpoints)."""
    return index % world_size() == rank()


class _SumOverShards(torch.autograd.Function):
    """Forward: the sum over a group's ranks; backward: the gradient itself (what follows the
    sum is computed alike on every rank, so each rank's gradient is already the whole one)."""

    @staticmethod
    def forward(ctx, t, group):
        t = t.clone()
        dist.all_reduce(t, group=group)
        return t

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _SharedByShards(torch.autograd.Function):
    """Forward: the tensor itself (every rank of the group holds it); backward: the sum of the
    ranks' gradients (each rank's use of it contributes a part)."""

    @staticmethod
    def forward(ctx, t, group):
        ctx.group = group
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None
