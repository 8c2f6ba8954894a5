"""Training checkpoints: one file, written atomically, read back without unpickling code
(torch.load with weights_only=True accepts only tensors and plain containers)."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import rundir
from ..io.atomic import atomic_write

CHECKPOINT_NAME = rundir.CHECKPOINT


def save_checkpoint(out_dir: str | Path, state: dict) -> None:
    atomic_write(Path(out_dir) / CHECKPOINT_NAME, lambda p: torch.save(state, p))


def load_checkpoint(out_dir: str | Path) -> dict:
    path = Path(out_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: no {CHECKPOINT_NAME} in {out_dir}")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # torch raises several types for damaged files
        raise ValueError(f"cannot resume: {path} is unreadable ({err})") from None
