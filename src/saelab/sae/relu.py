"""ReLU SAE with the decoder-norm-weighted L1 penalty: f = relu(pre)."""

from dataclasses import dataclass

import torch

from ..checks import check_number
from .architecture import (
    SAELENS_TENSORS,
    Architecture,
    Settings,
    linear_layout_in,
    linear_layout_out,
    pick,
    setting,
)

# W_enc = 0.1 W_dec^T at init: a small encoder starts near-sparse codes, as Anthropic's April
# 2024 update (W_enc = W_dec^T with decoder norms of 0.1); bench/RESULTS.md, "ReLU's encoder
# initialisation".
RELU_ENCODER_INIT_SCALE = 0.1


@dataclass(kw_only=True)
class L1Settings(Settings):
    l1_coefficient: float = setting(
        5.0,
        "L1 penalty weight, against the squared error summed "
        "over d_in (SAELens and Anthropic units)",
        label="l1-{:g}",
    )

    def check(self, d_sae: int) -> None:
        check_number("l1_coefficient", self.l1_coefficient)


def weighted_l1(sae, f: torch.Tensor) -> torch.Tensor:
    """sum_i f_i ||W_dec,i||, averaged over tokens."""
    return (f * sae.W_dec.norm(dim=1)).sum(-1).mean()


class ReLU(Architecture):
    name = "relu"
    settings = L1Settings
    knobs = ("l1_coefficient",)
    encoder_init_scale = RELU_ENCODER_INIT_SCALE
    latent_parallel = True
    saelens_names = ("standard", "relu")
    dictionary_learning_class, dictionary_learning_trainer = "AutoEncoder", "StandardTrainer"

    def activate(self, sae, pre, x):
        return torch.relu(pre)

    def penalty(self, sae, f, pre, x):
        """lam * sum_i f_i ||W_dec,i||, averaged over tokens."""
        return {"l1": sae.cfg.l1_coefficient * weighted_l1(sae, f)}

    def to_saelens(self, sae, tensors):
        return {"architecture": "standard"}, pick(tensors, *SAELENS_TENSORS)

    def from_saelens(self, cfg, tensors):
        return {}, pick(tensors, *SAELENS_TENSORS)

    def to_dictionary_learning(self, cfg, tensors):
        """AutoEncoder: nn.Linear encoder and decoder, b_dec named `bias`."""
        return {}, linear_layout_out(tensors, b_dec="bias")

    def from_dictionary_learning(self, trainer, tensors):
        return {}, linear_layout_in(tensors, b_dec="bias")
