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


def _integer(name: str, value, low: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        kind = {0: "a non-negative integer", 1: "a positive integer"}.get(low, f"an integer >= {low}")
        raise ConfigError(f"{name} must be {kind}, got {value!r}")


def _number(name: str, value, low: float = 0.0, strict: bool = False, high: float = math.inf) -> None:
    """A finite number in [low, high) (low excluded when strict); NaN and Inf are refused."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low) or value >= high:
        bound = f"{'>' if strict else '>='} {low:g}" + (f" and < {high:g}" if high < math.inf else "")
        raise ConfigError(f"{name} must be a finite number {bound}, got {value!r}")


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
            _integer(name, getattr(self, name))
        if self.arch in ("topk", "batchtopk") and self.k is None:
            raise ConfigError(f"arch {self.arch!r} needs k (latents per sample)")
        if self.arch == "jumprelu" and (self.k is None) == (self.l0_coefficient is None):
            raise ConfigError(
                "jumprelu needs exactly one of k (a target L0) or l0_coefficient (a fixed L0 penalty)"
            )
        if self.k is not None:
            _integer("k", self.k)
            if self.k > self.d_sae:
                raise ConfigError(f"k={self.k} is larger than d_sae={self.d_sae}")
        if self.input_scaling not in INPUT_SCALINGS:
            raise ConfigError(
                f"unknown input_scaling {self.input_scaling!r}; choose one of {', '.join(INPUT_SCALINGS)}"
            )
        _number("input_scale", self.input_scale, strict=True)
        for name in ("l1_coefficient", "afa_coefficient", "aux_coefficient"):
            _number(name, getattr(self, name))
        if self.l0_coefficient is not None:
            _number("l0_coefficient", self.l0_coefficient)
        _number("jumprelu_bandwidth", self.jumprelu_bandwidth, strict=True)
        _number("jumprelu_init_threshold", self.jumprelu_init_threshold, strict=True)
        _integer("aux_k", self.aux_k, low=0)
        _number("threshold_momentum", self.threshold_momentum, high=1.0)
        if not isinstance(self.metadata, dict):
            raise ConfigError(f"metadata must be a JSON object, got {type(self.metadata).__name__}")

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
        _integer("batch_size", self.batch_size)
        _number("lr", self.lr, strict=True)
        if len(self.betas) != 2:
            raise ConfigError(f"betas must be two numbers, got {self.betas!r}")
        for beta in self.betas:
            _number("betas", beta, high=1.0)
        if self.total_tokens is not None:
            _integer("total_tokens", self.total_tokens)
        _integer("warmup_tokens", self.warmup_tokens, low=0)
        _integer("dead_tokens", self.dead_tokens)
        _number("decay_fraction", self.decay_fraction, high=1.0 + 1e-12)
        if self.grad_clip is not None:
            _number("grad_clip", self.grad_clip, strict=True)
        _integer("seed", self.seed, low=0)
        _integer("log_every", self.log_every)
        if self.checkpoint_every_tokens is not None:
            _integer("checkpoint_every_tokens", self.checkpoint_every_tokens)
            if self.out_dir is None:
                raise ConfigError("checkpoints need out_dir")
        if self.resume and self.out_dir is None:
            raise ConfigError("resume needs out_dir (where the checkpoint is)")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return _from_dict(cls, d)
