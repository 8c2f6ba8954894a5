"""AuxK dead-latent loss (Gao et al. 2024).

e = (x - x_hat).detach() (a transcoder: y - y_hat); the top aux_k of relu(pre) among dead
latents only give e_hat = codes @ W_dec[dead] (no bias); L_aux = mean over tokens of
||e - e_hat||^2; 0 with no dead latents. detach=False keeps e's gradient (the top-AFA authors'
code: it then also reaches x_hat).
"""

from dataclasses import dataclass

import torch

from ..checks import check_integer, check_number
from .architecture import Settings, setting
from .sparse import decode, select


@dataclass(kw_only=True)
class AuxKSettings(Settings):
    """The AuxK keywords of the architectures that use it."""

    aux_k: int = setting(512, "AuxK: dead latents used per token (Gao et al.)")
    aux_coefficient: float = setting(
        1 / 32,
        "AuxK loss weight, relative to the reconstruction error as in the "
        "BatchTopK and top-AFA reference code",
    )

    def check(self, d_sae: int) -> None:
        check_integer("aux_k", self.aux_k, low=0)
        check_number("aux_coefficient", self.aux_coefficient)


def dead_latents(sae, dead: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(indices of the dead latents, how many each token may use: min(aux_k, #dead))."""
    dead_idx = dead.nonzero().squeeze(1)
    return dead_idx, min(sae.cfg.aux_k, dead_idx.numel())


def aux_loss(
    sae,
    x: torch.Tensor,
    x_hat: torch.Tensor,
    pre: torch.Tensor,
    dead: torch.Tensor,
    detach: bool = True,
) -> torch.Tensor:
    dead_idx, k = dead_latents(sae, dead)
    if k == 0:
        return pre.new_zeros(())
    residual = (x - x_hat).detach() if detach else x - x_hat
    dead_pre = pre[:, dead_idx]
    values, chosen = torch.relu(dead_pre).topk(k, dim=-1, sorted=False)
    codes = torch.zeros_like(dead_pre).scatter(-1, chosen, values)
    residual_hat = codes @ sae.W_dec[dead_idx]
    return (residual - residual_hat).square().sum(-1).mean()


def aux_loss_sparse(
    sae,
    x,
    target,
    x_hat,
    watched: tuple[torch.Tensor, torch.Tensor] | None,
    detach: bool = True,
) -> torch.Tensor:
    """aux_loss on the sparse path, from each token's largest dead pre-activations, found while
    the encoder tiles were made (watched: (values, cols) [n, k], or None with no dead latent);
    they go through sparse.select and are decoded with an embedding bag. x: the scaled input,
    target: what x_hat predicts (x itself for an autoencoder)."""
    if watched is None:
        return x.new_zeros(())
    values, cols = watched
    rows = torch.arange(len(x), device=x.device).repeat_interleave(values.shape[1])
    code = select(
        rows, cols.flatten(), values.flatten(), x, sae.input_shift, sae.W_enc, sae.encoder_bias
    )
    residual = (target - x_hat).detach() if detach else target - x_hat
    return (residual - decode(code, sae.W_dec)).square().sum(-1).mean()
