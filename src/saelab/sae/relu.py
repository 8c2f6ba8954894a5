"""ReLU SAE with the decoder-norm-weighted L1 penalty: f = relu(pre)."""

import torch


def activate(sae, pre: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.relu(pre)


def penalty(sae, f: torch.Tensor, pre: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """lam * sum_i f_i ||W_dec,i||, averaged over tokens."""
    l1 = (f * sae.W_dec.norm(dim=1)).sum(-1).mean()
    return {"l1": sae.cfg.l1_coefficient * l1}
