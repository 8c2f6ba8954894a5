"""AuxK dead-latent loss (Gao et al. 2024).

e = (x - x_hat).detach() (a transcoder: y - y_hat); the top aux_k of relu(pre) among dead
latents only give e_hat = codes @ W_dec[dead] (no bias); L_aux = mean over tokens of
||e - e_hat||^2; 0 with no dead latents. detach=False keeps e's gradient (the top-AFA
authors' code: it then also reaches x_hat). A dictionary split over ranks (sae/shard.py) takes
each token's top aux_k among the dead latents of all shards.
"""

from dataclasses import dataclass

import torch

from ..checks import check_integer, check_number
from .architecture import Settings, setting
from .shard import row_cut
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
    """(indices of the dead latents among this module's, how many each token may use:
    min(aux_k, #dead in the whole dictionary))."""
    dead_idx = dead.nonzero().squeeze(1)
    count = dead_idx.numel()
    if not sae.shard.whole:
        count = int(sae.shard.sum(torch.tensor(count, device=dead.device)))
    return dead_idx, min(sae.cfg.aux_k, count)


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
    k: int,
    detach: bool = True,
) -> torch.Tensor:
    """aux_loss on the sparse path, from each token's k largest dead pre-activations, found
    while the encoder tiles were made (watched: (values, cols) [n, <= k] of this module's dead
    latents, None if it has none; a shard keeps those at or above the row's cut over all
    shards); they go through sparse.select and are decoded with an embedding bag. x: the
    scaled input, target: what x_hat predicts (x itself for an autoencoder)."""
    if k == 0:
        return x.new_zeros(())
    shard = sae.shard
    if watched is None:
        watched = x.new_empty(len(x), 0), torch.empty(len(x), 0, dtype=torch.long, device=x.device)
    values, cols = watched
    keep = torch.ones_like(values, dtype=torch.bool)
    if not shard.whole:
        keep = values >= row_cut(values, k, shard)[:, None]
    rows = torch.arange(len(x), device=x.device)[:, None].expand_as(values)
    shift = shard.shared(sae.input_shift)
    code = select(rows[keep], cols[keep], values[keep], x, shift, sae.W_enc, sae.encoder_bias)
    residual = (target - x_hat).detach() if detach else target - x_hat
    return (residual - shard.sum(decode(code, sae.W_dec))).square().sum(-1).mean()
