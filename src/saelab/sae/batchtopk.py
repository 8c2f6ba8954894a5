"""BatchTopK SAE (Bussmann, Leask, Nanda 2024).

Training: keep the n*k largest entries of a = relu(pre) over the whole batch [n, h].
Inference: f = a * (a > theta), with theta the running average of the smallest positive value
kept by the batch top-k during training, so codes do not depend on the batch. The average is a
plain mean over the first 1 / (1 - m) batches and an EMA with momentum m after that, so the
large minima of the first, untrained batches fade out quickly. Only a training step moves theta
(`update_threshold`, called by the trainer); encoding in training mode never does.

The batch top-k is exact and never sorts all n*h entries (`global_batch_topk`): once theta is
known, a first cut keeps the entries at or above BOUND_MARGIN * theta (raised as the tiles go
by when it keeps too many) and an exact top-k runs over those; when it keeps too few, per-row
candidates do the same, exactly.
"""

import warnings
from dataclasses import dataclass

import torch

from ..checks import check_number
from ..errors import SaelabError
from .architecture import (
    SAELENS_TENSORS,
    Architecture,
    Collectives,
    linear_layout_in,
    linear_layout_out,
    pick,
    setting,
)
from .sparse import RowTiles, SparseCode, masked_entries
from .topk import KSettings, dictionary_learning_k, k_tensor

# the first cut starts at this fraction of the running threshold (bench/RESULTS.md)
BOUND_MARGIN = 0.8


class ThresholdNotEstimated(SaelabError, RuntimeError):
    """A batchtopk SAE is used in eval mode before training estimated its threshold."""


@dataclass(kw_only=True)
class BatchTopKSettings(KSettings):
    threshold_momentum: float = setting(
        0.9,
        "EMA momentum of the inference threshold (after a plain mean over "
        "the first 1 / (1 - momentum) steps)",
    )

    def check(self, d_sae: int) -> None:
        super().check(d_sae)
        check_number("threshold_momentum", self.threshold_momentum, high=1.0)


class BatchTopK(Architecture):
    name = "batchtopk"
    settings = BatchTopKSettings
    knobs = ("k",)
    uses_auxk = True
    latent_parallel = True
    unset_when_nan = ("threshold",)
    optional_in_file = ("threshold_updates",)
    dictionary_learning_class, dictionary_learning_trainer = "BatchTopKSAE", "BatchTopKTrainer"

    def add_state(self, sae):
        sae.register_buffer("threshold", torch.tensor(float("nan")))
        sae.register_buffer("threshold_updates", torch.tensor(0))

    def activate(self, sae, pre, x):
        a = torch.relu(pre)
        if not sae.training:
            return a * (a > _threshold(sae))
        mask = torch.zeros_like(a, dtype=torch.bool)
        rows, cols, _ = self.select(sae, RowTiles.of(pre.detach()), x)
        mask[rows, cols] = True
        return a * mask

    @torch.no_grad()
    def select(self, sae, pre, x):
        """Row-major (rows, cols, values) of the active entries of a = relu(pre) (pre: RowTiles
        [n, h]); in training mode the batch top-k over the global batch (n summed over ranks),
        in eval mode a > theta."""
        if not sae.training:  # theta > 0, so relu(pre) > theta iff pre > theta
            theta = _threshold(sae)
            return pre.per_row(lambda tile, rows: masked_entries(tile, tile > theta))
        bound = None if torch.isnan(sae.threshold) else BOUND_MARGIN * sae.threshold
        return global_batch_topk(pre, sae.cfg.k, sae.collectives, bound)

    def after_step(self, sae, out):
        update_threshold(sae, sae.collectives.reduce(smallest_active(out.code), "min"))

    def record(self, sae):
        return {"threshold": sae.threshold.item()}

    def evaluation(self, sae, results):
        """The inference L0 under the learned threshold against the trained k."""
        return {"trained_k": sae.cfg.k, "inference_l0_minus_k": results["l0"] - sae.cfg.k}

    def to_saelens(self, sae, tensors):
        """A jumprelu SAE with the global threshold on every latent."""
        threshold = tensors["threshold"].expand(sae.cfg.d_sae).contiguous()
        return {"architecture": "jumprelu"}, {
            **pick(tensors, *SAELENS_TENSORS),
            "threshold": threshold,
        }

    def to_dictionary_learning(self, cfg, tensors):
        """BatchTopKSAE: AutoEncoderTopK's layout and the threshold [] (-1 while unset)."""
        return {"k": cfg.k}, {
            **linear_layout_out(tensors, "b_dec"),
            "k": k_tensor(cfg.k),
            "threshold": dictionary_learning_threshold(tensors["threshold"]),
        }

    def from_dictionary_learning(self, trainer, tensors):
        return {"k": dictionary_learning_k(trainer, tensors)}, {
            **linear_layout_in(tensors, "b_dec"),
            "threshold": threshold_from_dictionary_learning(tensors["threshold"]),
        }


def dictionary_learning_threshold(threshold: torch.Tensor) -> torch.Tensor:
    """saelab's threshold [] (NaN: not yet estimated) as dictionary_learning's (-1)."""
    threshold = threshold.reshape(())
    return torch.tensor(-1.0) if torch.isnan(threshold) else threshold


def threshold_from_dictionary_learning(threshold: torch.Tensor) -> torch.Tensor:
    """dictionary_learning's threshold (negative: not yet estimated) as saelab's (NaN). An SAE
    without one loads, with a warning: it encodes only in training mode (batch top-k)."""
    threshold = threshold.float().reshape(())
    if threshold >= 0:
        return threshold
    warnings.warn(
        "this dictionary_learning SAE has no inference threshold (threshold -1: untrained, or "
        "saved before its trainer estimated one); it cannot encode in eval mode until trained",
        stacklevel=2,
    )
    return torch.tensor(float("nan"))


def smallest_active(code) -> torch.Tensor:
    """The smallest positive value of a batch's codes (a SparseCode or dense [n, h]; inf if
    none): the cut of this batch's top-k, which the threshold averages."""
    values = code.values if isinstance(code, SparseCode) else code[code > 0]
    values = values[values > 0]
    return values.min() if values.numel() else torch.tensor(float("inf"), device=values.device)


def global_batch_topk(
    pre: RowTiles, k: int, ranks: Collectives = Collectives(), bound: torch.Tensor | None = None
) -> tuple[torch.Tensor, ...]:
    """This rank's part (rows, cols, values), row-major, of the top n*k positive entries of the
    global batch, exactly.

    pre [n, h] is this rank's block of a global batch of n * data_ranks rows (and, split over
    latents, of this rank's shard of the dictionary's columns). Each rank offers
    candidates that hold every one of its entries that can be among the global top `budget` =
    n * data_ranks * k; the budget-th largest offer of all ranks is the cut and every rank keeps
    its positive offers at or above it (ties at the cut aside: all tied entries are kept, as a
    single process would keep a top-k's choice among them). The offers: with a `bound`, the
    entries at or above it or above a bound raised on the way (`entries_at_or_above`), if all
    ranks together offer at least `budget` (then every entry left out is below the cut);
    otherwise, or without a bound, each rank's `budget` largest entries from per-row candidates."""
    n, h = pre.shape
    budget = n * ranks.data_ranks * k
    offers = None
    if bound is not None:
        offers = entries_at_or_above(pre, bound, budget)
        count = torch.tensor(len(offers[0]), device=bound.device)
        most = int(ranks.reduce(count.clone(), "max"))
        if ranks.reduce(count, "sum") < budget:
            offers = None
    if offers is None:
        offers, most = local_offers(pre, budget, k), budget
    values, rows, cols = offers
    padded = torch.cat([values, values.new_full((most - len(values),), -torch.inf)])
    offered = ranks.gather(padded)
    cut = offered.topk(min(budget, offered.numel()), sorted=False).values.min()
    keep = (values >= cut) & (values > 0)
    values, rows, cols = values[keep], rows[keep], cols[keep]
    order = (rows * h + cols).argsort()
    return rows[order], cols[order], values[order]


def entries_at_or_above(pre: RowTiles, bound: torch.Tensor, keep: int) -> tuple[torch.Tensor, ...]:
    """(values, rows, cols) of the entries of pre [n, h] at or above a bound that starts at
    `bound` and, whenever more than 2 * keep entries are at or above it after a tile, rises to
    the keep-th largest of them. So every entry left out is below the final bound, and if the
    bound rose, at least `keep` entries are at or above it; at most 2 * keep entries and one
    tile's are ever held."""
    parts, count = [], 0
    for rows, tile in pre:
        local, cols, values = masked_entries(tile, tile >= bound)
        parts.append((values, local + rows.start, cols))
        count += len(local)
        if count > 2 * keep:
            values, tile_rows, tile_cols = (torch.cat(part) for part in zip(*parts))
            bound = values.topk(keep, sorted=False).values.min()
            kept = values >= bound
            parts, count = [(values[kept], tile_rows[kept], tile_cols[kept])], int(kept.sum())
    return tuple(torch.cat(part) for part in zip(*parts))


def local_offers(pre: RowTiles, budget: int, k: int) -> tuple[torch.Tensor, ...]:
    """(values, rows, cols) of this rank's min(budget, n*h) largest entries of pre [n, h],
    found from per-row candidates: 4k per row, and never fewer than the budget in all."""
    n, h = pre.shape
    per_row = min(h, max(4 * k, -(-budget // n)))
    return top_entries(pre, min(budget, n * h), per_row)


def top_entries(pre: RowTiles, count: int, per_row: int) -> tuple[torch.Tensor, ...]:
    """(values, rows, cols) of the `count` largest entries of pre [n, h], exactly, without a
    selection over all n*h values and without holding pre whole. A pool holds each row's
    `per_row` largest entries, taken tile by tile; the result is the pool's `count` largest. A
    row whose smallest pooled entry is at or above the result's minimum might hold more, so
    only such rows are computed again, their pooled depth doubled (up to h), and the selection
    is repeated: a few rows with many large entries (real activations' massive tokens) never
    force a full sort. Needs count <= n * per_row."""
    n, h = pre.shape
    depth = min(per_row, h)
    tops = [tile.topk(depth, dim=1, sorted=False) for _, tile in pre]
    top, cols = torch.cat([t.values for t in tops]), torch.cat([t.indices for t in tops])
    pool_values, pool_cols = top.flatten(), cols.flatten()
    pool_rows = torch.arange(n, device=top.device).repeat_interleave(depth)
    row_floor, row_depth = top.min(dim=1).values, torch.full((n,), depth, device=top.device)
    while True:
        values, pos = pool_values.topk(count, sorted=False)
        deeper = (row_floor >= values.min()) & (row_depth < h)
        if not deeper.any():
            return values, pool_rows[pos], pool_cols[pos]
        rows = deeper.nonzero().squeeze(1)
        depth = min(2 * int(row_depth[rows].max()), h)
        top, cols = pre.rows(rows).topk(depth, dim=1, sorted=False)
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
