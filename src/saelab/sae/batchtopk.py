"""BatchTopK SAE (Bussmann, Leask, Nanda 2024).

Training: keep the n*k largest entries of a = relu(pre) over the whole batch [n, h].
Inference: f = a * (a > theta), with theta the running average of the smallest positive value
kept by the batch top-k during training, so codes do not depend on the batch. The average is a
plain mean over the first 1 / (1 - m) batches and an EMA with momentum m after that, so the
large minima of the first, untrained batches fade out quickly.
"""

import torch

from ..train.distributed import all_gather_cat, is_distributed, world_size


class ThresholdNotEstimated(RuntimeError):
    """A batchtopk SAE is used in eval mode before training estimated its threshold."""


def activate(sae, pre: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    a = torch.relu(pre)
    if sae.training:
        return _batch_topk(sae, a)
    theta = sae.threshold
    if torch.isnan(theta):
        raise ThresholdNotEstimated(
            "this batchtopk SAE has no inference threshold yet (it is estimated during training); "
            "train it first, or call sae.train() to encode with batch top-k over the given batch"
        )
    return a * (a > theta)


def _batch_topk(sae, a: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        return _global_batch_topk(sae, a)
    flat = a.flatten()
    values, indices = flat.topk(min(a.shape[0] * sae.cfg.k, flat.numel()), sorted=False)
    _update_threshold(sae, values.detach())
    return torch.zeros_like(flat).scatter(0, indices, values).view_as(a)


def _global_batch_topk(sae, a: torch.Tensor) -> torch.Tensor:
    """Top n*k over the global batch (all ranks, n = global batch size): each rank offers its
    n*k largest values, the (n*k)-th largest of all offers is the cut, every rank keeps what is
    at or above it. Ties at the cut aside, this is the single-process batch top-k."""
    budget = a.shape[0] * world_size() * sae.cfg.k
    flat = a.flatten()
    offers = flat.detach().topk(min(budget, flat.numel()), sorted=False).values
    everything = all_gather_cat(offers)
    kept = everything.topk(min(budget, everything.numel()), sorted=False).values
    _update_threshold(sae, kept)
    return a * (a >= kept.min())


@torch.no_grad()
def _update_threshold(sae, kept: torch.Tensor) -> None:
    """theta <- m_t * theta + (1 - m_t) * min(kept > 0), m_t = min(m, 1 - 1/t) at update t."""
    positive = kept[kept > 0]
    if positive.numel() == 0:
        return
    sae.threshold_updates += 1
    momentum = min(sae.cfg.threshold_momentum, 1 - 1 / sae.threshold_updates.item())
    if torch.isnan(sae.threshold):
        sae.threshold.copy_(positive.min())
    else:
        sae.threshold.lerp_(positive.min(), 1 - momentum)


def penalty(sae, f, pre, x) -> dict[str, torch.Tensor]:
    return {}
