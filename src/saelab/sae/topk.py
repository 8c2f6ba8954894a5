"""TopK SAE (Gao et al. 2024): keep the k largest entries of relu(pre) in each sample."""

import torch


def activate(sae, pre: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """pre [n, h] -> f [n, h] with at most k nonzeros per row (fewer when fewer are positive)."""
    values, indices = pre.topk(sae.cfg.k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))


def select(sae, pre: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of each row's k largest pre-activations, row-major."""
    indices = pre.topk(sae.cfg.k, dim=-1, sorted=False).indices
    n, k = indices.shape
    return torch.arange(n, device=pre.device).repeat_interleave(k), indices.flatten()


def penalty(sae, f, pre, x) -> dict[str, torch.Tensor]:
    return {}
