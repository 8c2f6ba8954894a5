"""Configuration dataclasses: validated on construction, round-trip through JSON dicts."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .errors import SaelabError

INPUT_SCALINGS = ("none", "expected_norm", "per_token")


class ConfigError(SaelabError, ValueError):
    """A configuration value is missing, out of range or inconsistent."""


def check_integer(name: str, value, low: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        kind = {0: "a non-negative integer", 1: "a positive integer"}.get(
            low, f"an integer >= {low}"
        )
        raise ConfigError(f"{name} must be {kind}, got {value!r}")


def check_number(
    name: str, value, low: float = 0.0, strict: bool = False, high: float = math.inf
) -> None:
    """A finite number in [low, high) (low excluded when strict); NaN and Inf are refused."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low) or value >= high:
        bound = f"{'>' if strict else '>='} {low:g}" + (
            f" and < {high:g}" if high < math.inf else ""
        )
        raise ConfigError(f"{name} must be a finite number {bound}, got {value!r}")


def _from_dict(cls, d: dict):
    """Build `cls` from a dict, naming unknown keys instead of ignoring them."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    return cls(**d)


class SAEConfig:
    """What an SAE is: architecture, sizes, input scaling, and the architecture's own settings
    as keywords (k, l1_coefficient, l0_coefficient, afa_coefficient, aux_k, ...: see each
    architecture's Settings in sae/). A keyword the architecture does not take is an error
    (None counts as not given). Settings read as attributes: cfg.k.

    input_scale: the scalar s of `expected_norm` (inputs are multiplied by s inside the SAE);
    estimated by the trainer, folded into the weights when the SAE is saved.
    """

    def __init__(
        self,
        arch: str,
        d_in: int,
        d_sae: int,
        input_scaling: str = "per_token",
        input_scale: float = 1.0,
        metadata: dict | None = None,
        **settings,
    ):
        from .sae.architecture import setting_names
        from .sae.registry import architecture

        spec = architecture(arch)
        self.arch, self.d_in, self.d_sae = arch, d_in, d_sae
        self.input_scaling, self.input_scale = input_scaling, input_scale
        self.metadata = {} if metadata is None else metadata
        for name in ("d_in", "d_sae"):
            check_integer(name, getattr(self, name))
        if self.input_scaling not in INPUT_SCALINGS:
            raise ConfigError(
                f"unknown input_scaling {self.input_scaling!r}; choose one of {', '.join(INPUT_SCALINGS)}"
            )
        check_number("input_scale", self.input_scale, strict=True)
        if not isinstance(self.metadata, dict):
            raise ConfigError(f"metadata must be a JSON object, got {type(self.metadata).__name__}")
        names = setting_names(spec.settings)
        given = {key: value for key, value in settings.items() if value is not None}
        wrong = sorted(set(given) - set(names))
        if wrong:
            raise ConfigError(
                f"{', '.join(wrong)} do(es) not apply to arch {arch!r} "
                f"(its settings: {', '.join(names) or 'none'})"
            )
        self.settings = spec.settings(**given)
        try:
            self.settings.check(d_sae)
        except ConfigError as err:
            raise ConfigError(f"arch {arch!r}: {err}") from None

    def __getattr__(self, name: str):
        from .sae.architecture import setting_names

        settings = self.__dict__.get("settings")
        if settings is not None and name in setting_names(settings):
            return getattr(settings, name)
        raise AttributeError(f"{self.__dict__.get('arch')} SAEs have no setting {name!r}")

    def get(self, name: str, default=None):
        """A setting's value, or `default` when the architecture has no such setting."""
        return getattr(self.settings, name, default)

    def __eq__(self, other) -> bool:
        return isinstance(other, SAEConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"SAEConfig({', '.join(f'{k}={v!r}' for k, v in self.to_dict().items())})"

    def to_dict(self) -> dict:
        return {
            "arch": self.arch,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            **dataclasses.asdict(self.settings),
            "input_scaling": self.input_scaling,
            "input_scale": self.input_scale,
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, d: dict, legacy: bool = False) -> SAEConfig:
        """The config of to_dict. legacy: a cfg.json of saelab 0.1, which wrote every
        architecture's settings: those the architecture does not take are dropped."""
        from .sae.architecture import setting_names
        from .sae.registry import ARCHITECTURES, architecture

        d = dict(d)
        if "arch" not in d:
            raise ConfigError("the config has no arch")
        common = {"arch", "d_in", "d_sae", "input_scaling", "input_scale", "metadata"}
        own = set(setting_names(architecture(d["arch"]).settings))
        known = {name for spec in ARCHITECTURES.values() for name in setting_names(spec.settings)}
        unknown = sorted(set(d) - common - known)
        if unknown:
            raise ConfigError(f"unknown SAEConfig field(s): {', '.join(unknown)}")
        if legacy:
            d = {key: value for key, value in d.items() if key in common or key in own}
        try:
            return cls(**d)
        except TypeError as err:
            raise ConfigError(str(err)) from None

    def replace(self, **changes) -> SAEConfig:
        return SAEConfig.from_dict({**self.to_dict(), **changes})


@dataclass
class TrainConfig:
    """How to train: optimizer, schedule, dead-latent window, logging and checkpoints.

    lr: Adam's learning rate; None scales it with the dictionary size (train/schedule.default_lr:
    2e-3 at d_sae 4608, times sqrt(4608 / d_sae)).
    total_tokens: None means one pass over a finite data set.
    warmup_tokens: linear learning-rate warmup; decay_fraction: the last part of training over
    which the learning rate decays linearly to 0.
    dead_tokens: a latent is dead when it has not fired for this many training tokens.
    checkpoint_every_tokens: None disables checkpoints (they need `out_dir`).
    eval_every_tokens: every this many training tokens (and after the last step) record the
    held-out NMSE and L0 (inference semantics) in the history as heldout_nmse and heldout_l0;
    None never does. Needs held-out data passed to train_many.
    sparse: train topk/batchtopk/topafa through the sparse path (sae/sparse.py); False uses
    the dense reference path (same results to float tolerance, slower).
    wandb_project: also log the history to this Weights & Biases project (needs wandb).
    bf16: run the loss under bfloat16 autocast (the encoder matmul, and for relu/jumprelu the
    decoder matmul, in bfloat16; the sparse path selects on bfloat16 pre-activations and keeps
    everything else in float32). Off by default: CPUs without native bfloat16 run it slower.
    compile: torch.compile the loss (off by default; see bench/RESULTS.md for when it helps).
    """

    batch_size: int = 4096
    lr: float | None = None
    betas: tuple[float, float] = (0.9, 0.99)
    total_tokens: int | None = None
    warmup_tokens: int = 100_000
    decay_fraction: float = 0.2
    grad_clip: float | None = 1.0
    dead_tokens: int = 100_000
    seed: int = 0
    out_dir: str | None = None
    checkpoint_every_tokens: int | None = None
    eval_every_tokens: int | None = None
    resume: bool = False
    log_every: int = 10
    progress: bool = True
    sparse: bool = True
    wandb_project: str | None = None
    bf16: bool = False
    compile: bool = False

    def __post_init__(self):
        self.betas = tuple(self.betas)
        check_integer("batch_size", self.batch_size)
        if self.lr is not None:
            check_number("lr", self.lr, strict=True)
        if len(self.betas) != 2:
            raise ConfigError(f"betas must be two numbers, got {self.betas!r}")
        for beta in self.betas:
            check_number("betas", beta, high=1.0)
        if self.total_tokens is not None:
            check_integer("total_tokens", self.total_tokens)
        check_integer("warmup_tokens", self.warmup_tokens, low=0)
        check_integer("dead_tokens", self.dead_tokens)
        check_number("decay_fraction", self.decay_fraction, high=1.0 + 1e-12)
        if self.grad_clip is not None:
            check_number("grad_clip", self.grad_clip, strict=True)
        check_integer("seed", self.seed, low=0)
        check_integer("log_every", self.log_every)
        if self.checkpoint_every_tokens is not None:
            check_integer("checkpoint_every_tokens", self.checkpoint_every_tokens)
            if self.out_dir is None:
                raise ConfigError("checkpoints need out_dir")
        if self.eval_every_tokens is not None:
            check_integer("eval_every_tokens", self.eval_every_tokens)
        if self.resume and self.out_dir is None:
            raise ConfigError("resume needs out_dir (where the checkpoint is)")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return _from_dict(cls, d)
