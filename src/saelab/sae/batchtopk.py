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
    if not sae.training:
        return a * (a > _threshold(sae))
    mask = torch.zeros_like(a, dtype=torch.bool)
    mask[select(sae, pre.detach(), x)] = True
    return a * mask


@torch.no_grad()
def select(sae, pre: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-major (rows, cols) of the active entries of a = relu(pre) [n, h]; in training mode
    the batch top-k (updating the threshold), in eval mode a > theta.

    In one process: the n*k largest positive entries. Under torchrun the batch is the global
    batch (n summed over ranks): each rank offers its n*k largest values, the (n*k)-th largest
    of all offers is the cut, every rank keeps its offers at or above it (ties at the cut
    aside, the single-process selection)."""
    if not sae.training:  # theta > 0, so relu(pre) > theta iff pre > theta
        return (pre > _threshold(sae)).nonzero(as_tuple=True)
    # the largest entries of pre are those of relu(pre) wherever they are positive, and only
    # positive ones are kept: select on pre and clip the candidates, not all of pre
    budget = pre.shape[0] * world_size() * sae.cfg.k
    values, rows, cols = top_entries(pre, min(budget, pre.numel()), per_row=4 * sae.cfg.k)
    values = values.clamp_min(0)
    kept = values
    if is_distributed():
        everything = all_gather_cat(values)
        kept = everything.topk(min(budget, everything.numel()), sorted=False).values
    cut = kept.min()
    _update_threshold(sae, kept)
    keep = (values >= cut) & (values > 0)
    order = (rows[keep] * pre.shape[1] + cols[keep]).argsort()
    return rows[keep][order], cols[keep][order]


def top_entries(a: torch.Tensor, count: int, per_row: int) -> tuple[torch.Tensor, ...]:
    """(values, rows, cols) of the `count` largest entries of a [n, h], exactly, without a
    selection over all n*h values: first each row's `per_row` largest, then the largest among
    those. Exact unless some row has all its candidates at or above the result's minimum (it
    might hold more); then the selection is redone over everything."""
    n, h = a.shape
    if per_row < h:
        candidates, cand_cols = a.topk(per_row, dim=1, sorted=False)
        values, pos = candidates.flatten().topk(count, sorted=False)
        if not (candidates.min(dim=1).values >= values.min()).any():
            return values, pos // per_row, cand_cols.flatten()[pos]
    values, flat = a.flatten().topk(count, sorted=False)
    return values, flat // h, flat % h


def _threshold(sae) -> torch.Tensor:
    if torch.isnan(sae.threshold):
        raise ThresholdNotEstimated(
            "this batchtopk SAE has no inference threshold yet (it is estimated during training); "
            "train it first, or call sae.train() to encode with batch top-k over the given batch"
        )
    return sae.threshold


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
