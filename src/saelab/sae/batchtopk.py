"""BatchTopK SAE (Bussmann, Leask, Nanda 2024).

Training: keep the n*k largest entries of a = relu(pre) over the whole batch [n, h].
Inference: f = a * (a > theta), with theta the running average of the smallest positive value
kept by the batch top-k during training, so codes do not depend on the batch. The average is a
plain mean over the first 1 / (1 - m) batches and an EMA with momentum m after that, so the
large minima of the first, untrained batches fade out quickly. Only a training step moves theta
(`update_threshold`, called by the trainer); encoding in training mode never does.
"""

from dataclasses import dataclass

import torch

from ..config import check_number
from ..errors import SaelabError
from .architecture import SAELENS_TENSORS, Architecture, pick, setting
from .topk import KSettings


class ThresholdNotEstimated(SaelabError, RuntimeError):
    """A batchtopk SAE is used in eval mode before training estimated its threshold."""


@dataclass(kw_only=True)
class BatchTopKSettings(KSettings):
    threshold_momentum: float = setting(0.9, "EMA momentum of the inference threshold (after a plain mean over "
                                             "the first 1 / (1 - momentum) steps)")

    def check(self, d_sae: int) -> None:
        super().check(d_sae)
        check_number("threshold_momentum", self.threshold_momentum, high=1.0)


class BatchTopK(Architecture):
    name = "batchtopk"
    settings = BatchTopKSettings
    knobs = ("k",)
    uses_auxk = True
    unset_when_nan = ("threshold",)
    optional_in_file = ("threshold_updates",)

    def add_state(self, sae):
        sae.register_buffer("threshold", torch.tensor(float("nan")))
        sae.register_buffer("threshold_updates", torch.tensor(0))

    def activate(self, sae, pre, x):
        a = torch.relu(pre)
        if not sae.training:
            return a * (a > _threshold(sae))
        mask = torch.zeros_like(a, dtype=torch.bool)
        mask[self.select(sae, pre.detach(), x)] = True
        return a * mask

    @torch.no_grad()
    def select(self, sae, pre, x):
        """Row-major (rows, cols) of the active entries of a = relu(pre) [n, h]; in training
        mode the batch top-k over the global batch (n summed over ranks), in eval mode a > theta."""
        if not sae.training:  # theta > 0, so relu(pre) > theta iff pre > theta
            return (pre > _threshold(sae)).nonzero(as_tuple=True)
        ranks = sae.collectives
        return global_batch_topk(pre, sae.cfg.k, ranks.world_size, ranks.gather)

    def after_step(self, sae, out):
        update_threshold(sae, sae.collectives.reduce(out.smallest_active.clone(), "min"))

    def record(self, sae):
        return {"threshold": sae.threshold.item()}

    def evaluation(self, sae, results):
        """The inference L0 under the learned threshold against the trained k."""
        return {"trained_k": sae.cfg.k, "inference_l0_minus_k": results["l0"] - sae.cfg.k}

    def to_saelens(self, sae, tensors):
        """A jumprelu SAE with the global threshold on every latent."""
        threshold = tensors["threshold"].expand(sae.cfg.d_sae).contiguous()
        return {"architecture": "jumprelu"}, {**pick(tensors, *SAELENS_TENSORS), "threshold": threshold}


def global_batch_topk(pre: torch.Tensor, k: int, n_ranks: int, gather) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's part of the top n*k positive entries of the global batch, exactly.

    pre [n, h] is this rank's slice of a global batch of n * n_ranks rows; gather concatenates
    a tensor over ranks. Each rank offers its `budget` = n * n_ranks * k largest entries (the
    global top `budget` can hold no more of them); the budget-th largest offer of all ranks is
    the cut and every rank keeps its positive offers at or above it (ties at the cut aside: all
    tied entries are kept, as a single process would keep a top-k's choice among them)."""
    budget = pre.shape[0] * n_ranks * k
    values, rows, cols = local_offers(pre, budget, k)
    offered = gather(values)
    cut = offered.topk(min(budget, offered.numel()), sorted=False).values.min()
    keep = (values >= cut) & (values > 0)
    order = (rows[keep] * pre.shape[1] + cols[keep]).argsort()
    return rows[keep][order], cols[keep][order]


def local_offers(pre: torch.Tensor, budget: int, k: int) -> tuple[torch.Tensor, ...]:
    """(values, rows, cols) of this rank's min(budget, n*h) largest entries of pre [n, h],
    found from per-row candidates: 4k per row, and never fewer than the budget in all."""
    n, h = pre.shape
    per_row = min(h, max(4 * k, -(-budget // n)))
    return top_entries(pre, min(budget, pre.numel()), per_row)


def top_entries(a: torch.Tensor, count: int, per_row: int) -> tuple[torch.Tensor, ...]:
    """(values, rows, cols) of the `count` largest entries of a [n, h], exactly, without a
    selection over all n*h values. A pool holds each row's `per_row` largest entries; the
    result is the pool's `count` largest. A row whose smallest pooled entry is at or above the
    result's minimum might hold more, so only such rows get their pooled depth doubled (up to
    h) and the selection is repeated: a few rows with many large entries (real activations'
    massive tokens) never force a full sort. Needs count <= n * per_row."""
    n, h = a.shape
    depth = min(per_row, h)
    top, cols = a.topk(depth, dim=1, sorted=False)
    pool_values, pool_cols = top.flatten(), cols.flatten()
    pool_rows = torch.arange(n, device=a.device).repeat_interleave(depth)
    row_floor, row_depth = top.min(dim=1).values, torch.full((n,), depth, device=a.device)
    while True:
        values, pos = pool_values.topk(count, sorted=False)
        deeper = (row_floor >= values.min()) & (row_depth < h)
        if not deeper.any():
            return values, pool_rows[pos], pool_cols[pos]
        rows = deeper.nonzero().squeeze(1)
        depth = min(2 * int(row_depth[rows].max()), h)
        top, cols = a[rows].topk(depth, dim=1, sorted=False)
        kept = ~deeper[pool_rows]
        pool_values = torch.cat([pool_values[kept], top.flatten()])
        pool_cols = torch.cat([pool_cols[kept], cols.flatten()])
        pool_rows = torch.cat([pool_rows[kept], rows.repeat_interleave(depth)])
        row_floor[rows], row_depth[rows] = top.min(dim=1).values, depth


def _threshold(sae) -> torch.Tensor:
    if torch.isnan(sae.threshold):
        raise ThresholdNotEstimated(
            "this batchtopk SAE has no inference threshold yet (training estimates it); train it "
            "first, or call sae.train() to encode with batch top-k over the given batch (batch-"
            "dependent codes; encoding never changes the threshold)"
        )
    return sae.threshold


@torch.no_grad()
def update_threshold(sae, smallest_kept: torch.Tensor) -> None:
    """After a training step whose batch top-k kept nothing smaller than `smallest_kept` (over
    all ranks; inf if it kept nothing): theta <- m_t theta + (1 - m_t) smallest_kept,
    m_t = min(m, 1 - 1/t) at update t."""
    if not torch.isfinite(smallest_kept):
        return
    sae.threshold_updates += 1
    momentum = min(sae.cfg.threshold_momentum, 1 - 1 / sae.threshold_updates.item())
    if torch.isnan(sae.threshold):
        sae.threshold.copy_(smallest_kept)
    else:
        sae.threshold.lerp_(smallest_kept.to(sae.threshold), 1 - momentum)

