"""TopK SAE (Gao et al. 2024): keep the k largest entries of relu(pre) in each sample."""

from dataclasses import dataclass

import torch

from ..checks import check_integer
from ..errors import ConfigError
from ..io.jsonfile import is_kind
from .architecture import (
    SAELENS_TENSORS,
    Architecture,
    linear_layout_in,
    linear_layout_out,
    pick,
    setting,
)
from .auxk import AuxKSettings
from .shard import top_k_per_row

DEFAULT_K = 32  # the command line's k where none is given (a Python SAEConfig needs one)


def check_k(k, d_sae: int) -> None:
    """k latents per token: a positive integer no larger than d_sae."""
    check_integer("k", k)
    if k > d_sae:
        raise ConfigError(f"k={k} is larger than d_sae={d_sae}")


@dataclass(kw_only=True)
class KSettings(AuxKSettings):
    k: int | None = setting(
        None,
        "latents per token: exact for topk, the mean over the batch for batchtopk, "
        "the target L0 for jumprelu",
        label="k{}",
        cli_default=DEFAULT_K,
    )

    def check(self, d_sae: int) -> None:
        super().check(d_sae)
        if self.k is None:
            raise ConfigError("this architecture needs k (latents per sample)")
        check_k(self.k, d_sae)


class TopK(Architecture):
    name = "topk"
    settings = KSettings
    knobs = ("k",)
    uses_auxk = True
    latent_parallel = True
    saelens_names = ("topk",)
    dictionary_learning_class, dictionary_learning_trainer = "AutoEncoderTopK", "TopKTrainer"

    def activate(self, sae, pre, x):
        """pre [n, h] -> f [n, h] with at most k nonzeros per row (fewer when fewer are
        positive)."""
        values, indices = pre.topk(sae.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))

    def select(self, sae, pre, x):
        """(rows, cols, values) of each row's k largest pre-activations that are positive (the
        active latents: a non-positive one codes 0), row-major; pre: RowTiles [n, h] (a shard's:
        the rows' top k over all shards)."""
        return top_k_per_row(pre, sae.cfg.k, sae.shard)

    def to_saelens(self, sae, tensors):
        return {"architecture": "topk", "k": sae.cfg.k}, pick(tensors, *SAELENS_TENSORS)

    def from_saelens(self, cfg, tensors):
        k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
        if not is_kind(k, int):
            raise ConfigError(
                f"a SAELens topk SAE needs an integer k (or activation_fn_kwargs.k), got {k!r}"
            )
        return {"k": k}, pick(tensors, *SAELENS_TENSORS)

    def to_dictionary_learning(self, cfg, tensors):
        """AutoEncoderTopK: nn.Linear encoder and decoder, b_dec, k as a tensor, and the
        `threshold` buffer its class has held since early 2025 (-1: unset, as its own
        constructor leaves it; it is used only by encode(use_threshold=True))."""
        out = {**linear_layout_out(tensors, "b_dec"), "k": k_tensor(cfg.k)}
        return {"k": cfg.k}, {**out, "threshold": torch.tensor(-1.0)}

    def from_dictionary_learning(self, trainer, tensors):
        """AutoEncoderTopK's default encode is the top-k, which this is; its optional
        `threshold` (encode(use_threshold=True)) is read and not used."""
        tensors.get("threshold")  # marks it read (io/external.Entries): known, not needed
        return {"k": dictionary_learning_k(trainer, tensors)}, linear_layout_in(tensors, "b_dec")


def k_tensor(k: int) -> torch.Tensor:
    """dictionary_learning's `k` buffer."""
    return torch.tensor(k, dtype=torch.int)


def dictionary_learning_k(trainer: dict, tensors: dict) -> int:
    """k of a dictionary_learning TopK-family SAE: its `k` buffer, else its trainer config's."""
    if "k" in tensors:
        return int(tensors["k"])
    if not is_kind(trainer["k"], int):
        raise ConfigError(f"the trainer config's k must be an integer, got {trainer['k']!r}")
    return trainer["k"]
