"""Configuration dataclasses: validated on construction, round-trip through JSON dicts."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .errors import SaelabError

ARCHS = ("relu", "topk", "batchtopk", "jumprelu", "topafa")
INPUT_SCALINGS = ("none", "expected_norm", "per_token")


class ConfigError(SaelabError, ValueError):
    """A configuration value is missing, out of range or inconsistent."""


def _from_dict(cls, d: dict):
    """Build `cls` from a dict, naming unknown keys instead of ignoring them."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    return cls(**d)


@dataclass
class SAEConfig:
    """What an SAE is: architecture, sizes, sparsity and input scaling.

    k: latents per sample for topk, mean latents per sample for batchtopk, the target L0 for
    jumprelu when `l0_coefficient` is None; unused by relu and topafa.
    input_scale: the scalar s of `expected_norm` (inputs are multiplied by s inside the SAE);
    estimated by the trainer, folded into the weights when the SAE is saved.
    """

    arch: str
    d_in: int
    d_sae: int
    k: int | None = None
    l1_coefficient: float = 5.0
    l0_coefficient: float | None = None
    jumprelu_bandwidth: float = 0.001
    jumprelu_init_threshold: float = 0.001
    afa_coefficient: float = 1 / 32
    aux_k: int = 512
    aux_coefficient: float = 1 / 32
    threshold_momentum: float = 0.9
    input_scaling: str = "per_token"
    input_scale: float = 1.0
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ConfigError(f"unknown arch {self.arch!r}; choose one of {', '.join(ARCHS)}")
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.arch in ("topk", "batchtopk") and self.k is None:
            raise ConfigError(f"arch {self.arch!r} needs k (latents per sample)")
        if self.arch == "jumprelu" and (self.k is None) == (self.l0_coefficient is None):
            raise ConfigError(
                "jumprelu needs exactly one of k (a target L0) or l0_coefficient (a fixed L0 penalty)"
            )
        if self.k is not None:
            if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k <= 0:
                raise ConfigError(f"k must be a positive integer, got {self.k!r}")
            if self.k > self.d_sae:
                raise ConfigError(f"k={self.k} is larger than d_sae={self.d_sae}")
        if self.input_scaling not in INPUT_SCALINGS:
            raise ConfigError(
                f"unknown input_scaling {self.input_scaling!r}; choose one of {', '.join(INPUT_SCALINGS)}"
            )
        if not (math.isfinite(self.input_scale) and self.input_scale > 0):
            raise ConfigError(f"input_scale must be a positive finite number, got {self.input_scale}")
        for name in ("l1_coefficient", "afa_coefficient", "aux_coefficient"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0")
        if self.l0_coefficient is not None and self.l0_coefficient < 0:
            raise ConfigError("l0_coefficient must be >= 0")
        if self.jumprelu_bandwidth <= 0 or self.jumprelu_init_threshold <= 0:
            raise ConfigError("jumprelu_bandwidth and jumprelu_init_threshold must be > 0")
        if self.aux_k < 0:
            raise ConfigError("aux_k must be >= 0")
        if not 0 <= self.threshold_momentum < 1:
            raise ConfigError("threshold_momentum must be in [0, 1)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SAEConfig:
        return _from_dict(cls, d)


@dataclass
class TrainConfig:
    """How to train: optimizer, schedule, dead-latent window, logging and checkpoints.

    total_tokens: None means one pass over a finite data set.
    warmup_tokens: linear learning-rate warmup; decay_fraction: the last part of training over
    which the learning rate decays linearly to 0.
    dead_tokens: a latent is dead when it has not fired for this many training tokens.
    checkpoint_every_tokens: None disables checkpoints (they need `out_dir`).
    sparse: train topk/batchtopk/topafa through the sparse path (sae/sparse.py); False uses
    the dense reference path (same results to float tolerance, slower).
    wandb_project: also log the history to this Weights & Biases project (needs wandb).
    bf16: run the loss under bfloat16 autocast (the encoder matmul, and for relu/jumprelu the
    decoder matmul, in bfloat16; the sparse path selects on bfloat16 pre-activations and keeps
    everything else in float32). Off by default: CPUs without native bfloat16 run it slower.
    compile: torch.compile the loss (off by default; see bench/RESULTS.md for when it helps).
    """

    batch_size: int = 4096
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.99)
    total_tokens: int | None = None
    warmup_tokens: int = 100_000
    decay_fraction: float = 0.2
    grad_clip: float | None = 1.0
    dead_tokens: int = 100_000
    seed: int = 0
    out_dir: str | None = None
    checkpoint_every_tokens: int | None = None
    resume: bool = False
    log_every: int = 10
    progress: bool = True
    sparse: bool = True
    wandb_project: str | None = None
    bf16: bool = False
    compile: bool = False

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if self.batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive finite number, got {self.lr}")
        if self.total_tokens is not None and self.total_tokens <= 0:
            raise ConfigError(f"total_tokens must be positive, got {self.total_tokens}")
        if self.warmup_tokens < 0 or self.dead_tokens <= 0:
            raise ConfigError("warmup_tokens must be >= 0 and dead_tokens > 0")
        if not 0 <= self.decay_fraction <= 1:
            raise ConfigError("decay_fraction must be in [0, 1]")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError("grad_clip must be positive or None")
        if self.checkpoint_every_tokens is not None:
            if self.checkpoint_every_tokens <= 0:
                raise ConfigError("checkpoint_every_tokens must be positive")
            if self.out_dir is None:
                raise ConfigError("checkpoints need out_dir")
        if self.resume and self.out_dir is None:
            raise ConfigError("resume needs out_dir (where the checkpoint is)")
        if self.log_every <= 0:
            raise ConfigError("log_every must be positive")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return _from_dict(cls, d)
