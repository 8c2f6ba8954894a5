"""Top-AFA SAE (Lee et al. 2025): k chosen per sample by matching the code norm to the input.

a = relu(pre); target t = ||x - b_dec||; scores s_i = (a_i ||W_dec,i||)^2 sorted descending with
cumulative sums c_j; k* = argmin_j |sqrt(c_j) - t| + 1; keep those k* latents.
Loss term: lam_afa * (||f||_2 - ||x||_2)^2, averaged over tokens.
"""

import torch


def chosen_k(sae, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """k* per sample [n] and the latent order by score [n, h]."""
    target = (x - sae.b_dec).norm(dim=-1, keepdim=True)
    scores = (a * sae.W_dec.norm(dim=1)).square()
    sorted_scores, order = scores.sort(dim=-1, descending=True)
    gap = (sorted_scores.cumsum(-1).sqrt() - target).abs()
    return gap.argmin(-1) + 1, order


def activate(sae, pre: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    a = torch.relu(pre)
    with torch.no_grad():
        k_star, order = chosen_k(sae, a, x)
        ranks = torch.arange(a.shape[-1], device=a.device)
        keep = torch.zeros_like(a, dtype=torch.bool).scatter(-1, order, ranks < k_star[:, None])
    return a * keep


def penalty(sae, f, pre, x) -> dict[str, torch.Tensor]:
    afa = (f.norm(dim=-1) - x.norm(dim=-1)).square().mean()
    return {"afa": sae.cfg.afa_coefficient * afa}
