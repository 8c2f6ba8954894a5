"""Latent activations over an activation cache, with the text around them: what the feature
browser and autointerp show.

An activation cache keeps each row's packed context and position and every context's token
ids, so for any row the tokens around it, with the latent's activation on each, can be
rebuilt (0 on tokens the cache left out, such as BOS).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.cache import ActivationCache


@dataclass
class LatentCodes:
    """Codes of some latents on every row of a cache, in storage order."""

    counts: torch.Tensor  # [d_sae] rows on which each latent fires
    codes: torch.Tensor | None  # [N, L] of the chosen latents, or None
    context: torch.Tensor  # [N] packed context of each row
    position: torch.Tensor  # [N] position of each row in its context
    token_ids: dict[int, torch.Tensor]  # context -> its token ids [ctx_len]

    @property
    def n_tokens(self) -> int:
        return len(self.context)

    def row_of(self) -> dict[tuple[int, int], int]:
        return {
            (int(c), int(p)): r
            for r, (c, p) in enumerate(zip(self.context.tolist(), self.position.tolist()))
        }


@torch.inference_mode()
def latent_codes(
    sae, cache: ActivationCache, latents: list[int] | None, batch_size: int = 4096
) -> LatentCodes:
    """One pass over the cache: firing counts of every latent and the codes of `latents`."""
    if cache.d_in != sae.cfg.d_in:
        raise ValueError(
            f"the SAE has d_in={sae.cfg.d_in}, but the activations in {cache.directory} have "
            f"d_in={cache.d_in}"
        )
    counts = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    kept, contexts, positions, token_ids = [], [], [], {}
    for i in range(len(cache.shards)):
        shard = cache.load_shard(i)
        acts = shard["activations"].float()
        for start in range(0, len(acts), batch_size):
            codes = sae.encode(acts[start : start + batch_size])
            counts += (codes > 0).sum(0)
            if latents is not None:
                kept.append(codes[:, latents])  # indexing with a list copies
        contexts.append(shard["context"])
        positions.append(shard["position"])
        first = int(shard["first_context"])
        token_ids.update({first + j: row for j, row in enumerate(shard["tokens"])})
    return LatentCodes(
        counts,
        torch.cat(kept) if latents is not None else None,
        torch.cat(contexts),
        torch.cat(positions),
        token_ids,
    )


def window(
    data: LatentCodes, values: torch.Tensor, row_of: dict, row: int, before: int, after: int
) -> tuple[list[tuple[int, float]], int]:
    """([(token id, activation)] of the tokens around `row` within its context, index of the
    row's own token in that list); `values` [N] are one latent's codes."""
    c, p = int(data.context[row]), int(data.position[row])
    ids = data.token_ids[c].tolist()
    lo, hi = max(0, p - before), min(len(ids), p + after + 1)
    return [
        (ids[q], float(values[row_of[c, q]]) if (c, q) in row_of else 0.0) for q in range(lo, hi)
    ], p - lo


def one_per_context(rows, context: torch.Tensor, n: int, used: set | None = None) -> list[int]:
    """The first n of `rows` (an iterable of row indices) whose contexts are not in `used` yet,
    one per context; adds their contexts to `used`."""
    used = set() if used is None else used
    out = []
    for r in rows:
        if len(out) == n:
            break
        c = int(context[r])
        if c not in used:
            used.add(c)
            out.append(int(r))
    return out


def top_rows(
    values: torch.Tensor, context: torch.Tensor, n: int, used: set | None = None
) -> list[int]:
    """The n rows with the largest positive values, one per context, largest first."""
    order = values.argsort(descending=True, stable=True)
    return one_per_context((r for r in order.tolist() if values[r] > 0), context, n, used)


def sampled_rows(
    context: torch.Tensor,
    n: int,
    rng: np.random.Generator,
    used: set | None = None,
    within: torch.Tensor | None = None,
) -> list[int]:
    """n rows drawn uniformly without replacement among `within` (a bool mask [N]; default all
    rows), one per context."""
    candidates = (
        torch.nonzero(within).flatten().numpy() if within is not None else np.arange(len(context))
    )
    return one_per_context(rng.permutation(candidates).tolist(), context, n, used)


def rows_between(
    values: torch.Tensor,
    context: torch.Tensor,
    low: float,
    high: float,
    n: int,
    rng: np.random.Generator,
    used: set | None = None,
    closed: bool = False,
) -> list[int]:
    """n rows drawn uniformly among those whose positive value lies in [low, high) ([low, high]
    when closed), one per context."""
    inside = (values > 0) & (values >= low) & ((values <= high) if closed else (values < high))
    return sampled_rows(context, n, rng, used, within=inside)


def weighted_rows(
    values: torch.Tensor,
    context: torch.Tensor,
    n: int,
    rng: np.random.Generator,
    used: set | None = None,
    below: float = float("inf"),
) -> list[int]:
    """n rows drawn without replacement with probability proportional to value^2 among those
    with 0 < value < below, one per context: SAEBench's importance-weighted examples
    (sae_bench_utils/indexing_utils.py get_iw_sample_indices, squared values, over the
    activations below the weakest top example). Exponential keys e / w, smallest first, are a
    draw without replacement in proportion to w (Efraimidis and Spirakis)."""
    candidates = torch.nonzero((values > 0) & (values < below)).flatten().numpy()
    if n <= 0 or len(candidates) == 0:
        return []
    weights = values.double().numpy()[candidates] ** 2
    order = candidates[np.argsort(rng.exponential(size=len(candidates)) / weights, kind="stable")]
    return one_per_context(order.tolist(), context, n, used)
