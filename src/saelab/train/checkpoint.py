"""Training checkpoints: one file, written atomically, read back without unpickling code
(torch.load with weights_only=True accepts only tensors and plain containers)."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import rundir
from ..errors import SaelabError
from ..io.atomic import atomic_write
from ..io.jsonfile import check_fields

CHECKPOINT_NAME = rundir.CHECKPOINT


def save_checkpoint(out_dir: str | Path, state: dict) -> None:
    atomic_write(Path(out_dir) / CHECKPOINT_NAME, lambda p: torch.save(state, p))


def load_checkpoint(out_dir: str | Path, shard_state=None) -> dict:
    """The training state in out_dir. A dictionary split over ranks writes an index naming its
    shards' files (train/latent_parallel.py): shard_state(index) reads this rank's."""
    path = Path(out_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: no {CHECKPOINT_NAME} in {out_dir}")
    state = read_state(path)
    if "shards" in state:
        if shard_state is None:
            raise CheckpointError(
                f"cannot resume: {path} is the index of a dictionary split over "
                f"{len(state['shards'])} ranks; resume with latent_parallel={len(state['shards'])}"
            )
        state, path = shard_state(state), path.with_name(state["shards"][0])
    elif shard_state is not None:
        raise CheckpointError(
            f"cannot resume: {path} holds a whole dictionary; resume with latent_parallel=1"
        )
    where = f"cannot resume: {path}"
    check_fields(
        state,
        where,
        CheckpointError,
        optional=("data",),
        sae=dict,
        optimizer=dict,
        step=int,
        sae_cfg=dict,
        train_cfg=dict,
        data=(dict, None),
    )
    if state["step"] < 0:
        raise CheckpointError(f"{where}: step must be >= 0, got {state['step']}")
    fired = state.get("since_fired")
    if not isinstance(fired, torch.Tensor) or fired.ndim != 1:
        raise CheckpointError(f"{where}: since_fired must be a 1-d tensor")
    return state


def read_state(path: Path) -> dict:
    """The dict a checkpoint file holds (tensors and plain containers only)."""
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # torch raises several types for damaged files
        raise CheckpointError(f"cannot resume: {path} is unreadable ({err})") from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"cannot resume: {path} holds a {type(state).__name__}, not a training checkpoint"
        )
    return state


class CheckpointError(SaelabError, ValueError):
    """A checkpoint that cannot be resumed from: unreadable, or not the structure saelab writes."""
