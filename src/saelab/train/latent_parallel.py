"""What training a dictionary split over ranks (sae/shard.py, train/distributed.Mesh) adds to
the loop: the gradient norm over all shards, checkpoints written per shard, and the whole SAE
assembled at the end.

Checkpoints: the ranks of data index 0 each write their shard's state to
`checkpoint.shard-I-of-L.step-S.pt` (atomically); once all are written rank 0 writes the index
`checkpoint.pt` naming them (atomically), and only then are a shard's older files removed. A run
stopped at any moment so keeps one complete set: the one the index names.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from ..io.atomic import atomic_write
from ..sae.model import SAE
from .checkpoint import CHECKPOINT_NAME, CheckpointError, read_state
from .distributed import Mesh, rank


def sharded_names(sae) -> set[str]:
    """The parameters of which each shard holds a slice."""
    return set(sae.arch.latent_dims(sae))


@torch.no_grad()
def clip_grad_norm(sae, max_norm: float) -> None:
    """torch.nn.utils.clip_grad_norm_ over the whole dictionary: the norm of all gradients, the
    shards' slices counted once each and the tensors every shard holds (b_dec) once."""
    sharded = sharded_names(sae)
    split, whole = torch.zeros(2, device=sae.W_dec.device)  # sums of squares
    for name, p in sae.named_parameters():
        if p.grad is not None:
            square = torch.linalg.vector_norm(p.grad, dtype=torch.float32).square()
            split, whole = (split + square, whole) if name in sharded else (split, whole + square)
    norm = (sae.shard.sum(split) + whole).sqrt()
    coefficient = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for p in sae.parameters():
        if p.grad is not None:
            p.grad.mul_(coefficient.to(p.grad.dtype))


def shard_file(step: int, index: int, count: int) -> str:
    return f"checkpoint.shard-{index}-of-{count}.step-{step}.pt"


def save_sharded(out_dir: Path | None, state: dict, sae, mesh: Mesh) -> None:
    """Write this shard's state (ranks of data index 0), then the index (rank 0), then drop the
    shard's older files; every rank takes part (barriers)."""
    step, shard = state["step"], sae.shard
    writer = out_dir is not None and mesh.data_index == 0
    mine = shard_file(step, shard.index, shard.count)
    if writer:
        atomic_write(out_dir / mine, lambda p: torch.save(state, p))
    dist.barrier()
    if out_dir is not None and rank() == 0:
        index = {key: state[key] for key in ("step", "tokens", "sae_cfg", "train_cfg", "data")}
        index["shards"] = [shard_file(step, i, shard.count) for i in range(shard.count)]
        atomic_write(out_dir / CHECKPOINT_NAME, lambda p: torch.save(index, p))
    dist.barrier()
    if writer:
        remove_shard_files(out_dir, sae, keep=mine)


def load_sharded(out_dir: Path, index: dict, sae) -> dict:
    """This shard's state from the files the index names."""
    shard, names = sae.shard, index["shards"]
    if len(names) != shard.count:
        raise CheckpointError(
            f"cannot resume: {out_dir / CHECKPOINT_NAME} was written by a dictionary split over "
            f"{len(names)} ranks; resume with latent_parallel={len(names)}"
        )
    state = read_state(out_dir / names[shard.index])
    if state.get("step") != index["step"]:
        raise CheckpointError(
            f"cannot resume: {names[shard.index]} holds step {state.get('step')}, the index step "
            f"{index['step']}"
        )
    return state


def remove_shard_files(out_dir: Path, sae, keep: str | None = None) -> None:
    """This shard's checkpoint files in out_dir, but `keep`."""
    pattern = f"checkpoint.shard-{sae.shard.index}-of-{sae.shard.count}.step-*.pt"
    for path in out_dir.glob(pattern):
        if path.name != keep:
            path.unlink(missing_ok=True)


@torch.no_grad()
def whole_sae(sae: SAE, mesh: Mesh) -> SAE | None:
    """The whole SAE, on rank 0's CPU, from the shards of the ranks of data index 0 (gathered
    one tensor at a time into an SAE made without weights: no random dictionary beside the
    gathered one); None on every other rank."""
    if mesh.data_index != 0:
        return None
    dims = sae.arch.latent_dims(sae)
    state = {}
    for name, t in sae.state_dict().items():
        if name not in dims:  # whole on every rank: a copy, not the training SAE's storage
            state[name] = t.to("cpu", copy=True)
            continue
        parts = [torch.empty_like(t) for _ in range(mesh.latent_ranks)] if rank() == 0 else None
        dist.gather(t.contiguous(), parts, dst=0, group=mesh.latent_group)
        state[name] = torch.cat(parts, dim=dims[name]).cpu() if rank() == 0 else None
    if rank() != 0:
        return None
    return SAE(sae.cfg, initialise=False).adopt(state).eval()
