"""Optional Weights & Biases logging of the training history (`pip install wandb`); the
JSON-lines history is always written, W&B only when asked for."""

from __future__ import annotations

import importlib

from ..errors import ConfigError


def require_wandb():
    """The wandb module, or a clear error naming the install command."""
    try:
        return importlib.import_module("wandb")
    except ImportError:
        raise ConfigError(
            "W&B logging needs the wandb package: pip install wandb (or drop --wandb)"
        ) from None


def start_run(project: str, name: str | None, config: dict, directory: str | None):
    """A wandb run that the trainer logs each history record to."""
    return require_wandb().init(
        project=project, name=name, config=config, dir=directory, reinit=True
    )
