"""TopK SAE (Gao et al. 2024): keep the k largest entries of relu(pre) in each sample."""

import torch


def activate(sae, pre: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """pre [n, h] -> f [n, h] with at most k nonzeros per row (fewer when fewer are positive)."""
    values, indices = pre.topk(sae.cfg.k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))


def select(sae, pre: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of each row's k largest pre-activations that are positive (the active
    latents: a non-positive one codes 0), row-major."""
    values, indices = pre.topk(sae.cfg.k, dim=-1, sorted=False)
    n, k = indices.shape
    rows = torch.arange(n, device=pre.device).repeat_interleave(k)
    positive = values.flatten() > 0
    return rows[positive], indices.flatten()[positive]


def penalty(sae, f, pre, x) -> dict[str, torch.Tensor]:
    return {}
