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


def load_checkpoint(out_dir: str | Path) -> dict:
    path = Path(out_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: no {CHECKPOINT_NAME} in {out_dir}")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # torch raises several types for damaged files
        raise CheckpointError(f"cannot resume: {path} is unreadable ({err})") from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"cannot resume: {path} holds a {type(state).__name__}, not a training checkpoint"
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


class CheckpointError(SaelabError, ValueError):
    """A checkpoint that cannot be resumed from: unreadable, or not the structure saelab writes."""
