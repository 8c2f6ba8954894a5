"""AuxK dead-latent loss (Gao et al. 2024).

e = (x - x_hat).detach(); the top aux_k of relu(pre) among dead latents only give e_hat =
codes @ W_dec[dead] (no bias); L_aux = mean over tokens of ||e - e_hat||^2; 0 with no dead latents.
"""

import torch


def aux_loss(sae, x: torch.Tensor, x_hat: torch.Tensor, pre: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    dead_idx = dead.nonzero().squeeze(1)
    k = min(sae.cfg.aux_k, dead_idx.numel())
    if k == 0:
        return pre.new_zeros(())
    residual = (x - x_hat).detach()
    dead_pre = pre[:, dead_idx]
    values, chosen = torch.relu(dead_pre).topk(k, dim=-1, sorted=False)
    codes = torch.zeros_like(dead_pre).scatter(-1, chosen, values)
    residual_hat = codes @ sae.W_dec[dead_idx]
    return (residual - residual_hat).square().sum(-1).mean()
