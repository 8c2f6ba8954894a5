"""What an SAE architecture is: one object per architecture owns everything particular to it
(its settings, extra tensors, activation rule, loss terms, what follows an optimizer step, what
it logs and how SAELens and dictionary_learning store it). The SAE module, the trainer, the
evaluation, the file formats, sweeps and the command line ask it; none of them branches on an
architecture's name.

Adding an architecture: one file in sae/ with a subclass of Architecture (and of Settings for
its keywords), plus one line in registry.py.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import torch

from ..errors import ConfigError
from ..options import option
from .shard import draw_rows


def setting(default, help: str, label: str | None = None, cli_default=None, choices=None):
    """A settings field: `help` is its command-line help (flags.py makes the flag); `label` (a
    format string) names the field's value in a sweep point's name (sweep.py); `cli_default`:
    the command line's default where the dataclass has none (k: an SAEConfig without k is an
    error, the command line has one); `choices`: the values a string setting may take."""
    return option(default, help, label=label, cli_default=cli_default, choices=choices)


@dataclass(kw_only=True)
class Settings:
    """An architecture's keywords of SAEConfig; `check` validates them (with d_sae)."""

    def check(self, d_sae: int) -> None:
        pass


def setting_names(settings) -> list[str]:
    """The keywords of a Settings class (or instance)."""
    return [f.name for f in fields(settings)]


SAELENS_TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec")


def from_linear(weight: torch.Tensor) -> torch.Tensor:
    """A torch Linear's weight [out, in] as saelab's [in, out] (and back: it is a transpose)."""
    return weight.float().T.contiguous()


def linear_layout_in(tensors: dict, b_dec: str) -> dict[str, torch.Tensor]:
    """saelab's W_enc, b_enc, W_dec, b_dec from dictionary_learning's nn.Linear layout
    (encoder.weight [d_sae, d_in], encoder.bias, decoder.weight [d_in, d_sae]) whose decoder
    bias is named `b_dec`."""
    return {
        "W_enc": from_linear(tensors["encoder.weight"]),
        "b_enc": tensors["encoder.bias"],
        "W_dec": from_linear(tensors["decoder.weight"]),
        "b_dec": tensors[b_dec],
    }


def linear_layout_out(tensors: dict, b_dec: str) -> dict[str, torch.Tensor]:
    """The inverse of linear_layout_in."""
    return {
        "encoder.weight": tensors["W_enc"].T,
        "encoder.bias": tensors["b_enc"],
        "decoder.weight": tensors["W_dec"].T,
        b_dec: tensors["b_dec"],
    }


def pick(tensors: dict[str, torch.Tensor], *names: str) -> dict[str, torch.Tensor]:
    """The named tensors; a ConfigError names those that are missing (and the file, when
    `tensors` knows it: io/external.Entries)."""
    missing = [name for name in names if name not in tensors]
    if missing:
        raise ConfigError(
            f"{getattr(tensors, 'file', 'the file')} has no tensor(s) {', '.join(missing)} "
            f"(it has {', '.join(sorted(tensors))})"
        )
    return {name: tensors[name] for name in names}


@dataclass(frozen=True)
class Collectives:
    """How an SAE reaches the other ranks: concatenate a tensor over all ranks, reduce one in
    place over all ranks ("sum", "mean", "max", "min"); data_ranks: how many slices the global
    batch is cut into (the ranks of one latent shard each read one). The default is a single
    process; the trainer sets torch.distributed's (train/distributed.py) under torchrun."""

    data_ranks: int = 1
    gather: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
    reduce: Callable[..., torch.Tensor] = lambda t, op="sum": t


class Architecture:
    """The default behaviour; subclasses override what differs. `name` is the value of
    SAEConfig.arch, `settings` the dataclass of its keywords, `knobs` the settings a sweep may
    vary (the first whose axis is given is used)."""

    name: str = ""
    settings: type[Settings] = Settings
    knobs: tuple[str, ...] = ()
    uses_auxk = False  # AuxK loss on dead latents (settings need aux_k, aux_coefficient)
    # whether a dictionary of this architecture can be split over ranks (sae/shard.py): its
    # rule is per latent or has a cross-shard selection, its penalties are sums over latents
    latent_parallel = False
    encoder_init_scale = 1.0  # W_enc = scale * W_dec^T at initialisation
    encoder_bias = "b_enc"  # the name of the encoder bias parameter
    unset_when_nan: tuple[str, ...] = ()  # saved tensors that may be NaN (not yet estimated)
    optional_in_file: tuple[str, ...] = ()  # training state that files of older versions lack
    saelens_names: tuple[str, ...] = ()  # SAELens "architecture" values read as this one
    # dictionary_learning's dict_class and trainer_class of this architecture (None: it has none)
    dictionary_learning_class: str | None = None
    dictionary_learning_trainer: str | None = None

    # -- tensors ------------------------------------------------------------------------------
    def initial_weights(
        self, cfg, generator, latents: slice = slice(None)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_enc [d_in, h], W_dec [h, d_in]) of a new SAE's `latents` (h of them; those of the
        whole dictionary drawn with the same generator): unit-norm Gaussian decoder rows,
        W_enc = encoder_init_scale * W_dec^T. A transcoder's W_dec [h, d_out] and W_enc are
        drawn apart the same way (its input and output are different vectors)."""
        W_dec = draw_rows(generator, cfg.d_sae, cfg.width_out, latents)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        if cfg.is_transcoder:
            W_enc = draw_rows(generator, cfg.d_sae, cfg.d_in, latents)
            W_enc /= W_enc.norm(dim=1, keepdim=True)
            return (W_enc.T * self.encoder_init_scale).contiguous(), W_dec
        return (W_dec.T * self.encoder_init_scale).contiguous(), W_dec

    def latent_dims(self, sae) -> dict[str, int]:
        """The tensors that hold one entry per latent, and along which dimension (what a shard
        of the dictionary keeps a slice of)."""
        return {"W_enc": 1, self.encoder_bias: 0, "W_dec": 0}

    def add_state(self, sae) -> None:
        """Register extra parameters and buffers on a new SAE."""

    def to_file(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The state as saved (e.g. a threshold instead of its logarithm); from_file inverts it."""
        return tensors

    def from_file(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return tensors

    # -- the code ----------------------------------------------------------------------------
    def activate(self, sae, pre: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Dense codes [n, h] from the pre-activation [n, h] (x: the scaled input [n, d])."""
        raise NotImplementedError

    # select(sae, pre, x) -> (rows, cols, values) of the active entries, row-major, for the
    # sparse training path (sae/sparse.py), where pre is a RowTiles [n, h] that never exists
    # whole; None: the architecture trains through the dense path.
    select = None

    # -- the loss ----------------------------------------------------------------------------
    def reconstruction(self, sae, x: torch.Tensor, code, x_hat: torch.Tensor) -> torch.Tensor:
        """The reconstruction term: mean over tokens of ||x - x_hat||^2 (summed over its
        width; x: the target, a transcoder's y)."""
        return (x - x_hat).square().sum(-1).mean()

    def penalty(self, sae, f, pre: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra weighted loss terms (f: dense codes, or a SparseCode with pre a RowTiles on the
        sparse path; x: what the code reconstructs: the scaled input of an autoencoder, a
        transcoder's target less its skip path)."""
        return {}

    def loss_unit(self, sae) -> float:
        """The factor on every loss term: 1 in saelab's units (squared errors summed over d_in),
        1 / d_in for a recipe whose errors are means over elements."""
        return 1.0

    def detach_aux_residual(self, sae) -> bool:
        """Whether AuxK's target x - x_hat is held fixed (Gao et al.), or its gradient also
        reaches the main reconstruction."""
        return True

    def training_recipe(self, sae, train_cfg) -> dict:
        """TrainConfig fields this SAE trains with where train_cfg keeps TrainConfig's default
        (an explicit value wins): an authors' learning rate, schedule, clipping, dead window."""
        return {}

    def after_step(self, sae, out) -> None:
        """After each optimizer step and the decoder renormalisation (out: the step's LossOutput,
        computed before the step): multipliers, thresholds."""

    def record(self, sae) -> dict[str, float]:
        """What the history logs of this architecture after a step."""
        return {}

    # -- initialisation and evaluation -------------------------------------------------------
    def initialize(self, sae, x_scaled: torch.Tensor) -> None:
        """Data-dependent initialisation from the first (scaled) batch, after b_dec."""

    def target_l0(self, sae) -> int | None:
        """The L0 the architecture was asked for, if any (marked on the L0 histogram)."""
        return getattr(sae.cfg.settings, "k", None)

    def evaluation(self, sae, results: dict) -> dict:
        """Extra evaluation results, from the reconstruction metrics."""
        return {}

    # -- other libraries ---------------------------------------------------------------------
    def to_saelens(
        self, sae, tensors: dict[str, torch.Tensor]
    ) -> tuple[dict, dict[str, torch.Tensor]]:
        """(SAELens config fields, tensors) for SAELens' layout."""
        raise ConfigError(f"SAELens has no {self.name} architecture")

    def from_saelens(
        self, cfg: dict, tensors: dict[str, torch.Tensor]
    ) -> tuple[dict, dict[str, torch.Tensor]]:
        """(settings keywords, saelab-named tensors) from an SAELens config and tensors."""
        raise ConfigError(f"cannot read {self.name} SAEs from SAELens")

    def to_dictionary_learning(self, cfg, tensors: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        """(trainer config fields beyond sizes and classes, ae.pt tensors) from saelab's file
        tensors (input scale folded in) for dictionary_learning's dictionary_learning_class."""
        raise ConfigError(f"dictionary_learning has no {self.name} SAE")

    def from_dictionary_learning(self, trainer: dict, tensors: dict[str, torch.Tensor]):
        """(settings keywords, saelab-named tensors) from a dictionary_learning trainer config
        and ae.pt tensors."""
        raise ConfigError(f"cannot read {self.name} SAEs from dictionary_learning")
