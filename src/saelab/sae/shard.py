"""A dictionary split over ranks (latent parallelism): which latents this process holds and how
it reaches the other shards.

Shard r of L holds latents [start, stop) of d_sae: W_enc[:, start:stop], b_enc[start:stop],
W_dec[start:stop], per-latent thresholds. Every shard reads the same rows x and holds b_dec
(and a skip transcoder's W_skip) whole. Then
  pre_r   = (x - b_dec) @ W_enc_r + b_enc_r                  (this shard's pre-activations)
  x_hat   = sum_r f_r @ W_dec_r + b_dec                      (`sum`: an all-reduce over shards)
and the selection is exact over the whole dictionary: a token's top k is cut at the k-th
largest of all shards' own top k (`row_cut`), BatchTopK's n*k over the global batch at the
cut of all ranks' offers (batchtopk.global_batch_topk). The loss is computed alike on every
shard, so `sum`'s backward passes the gradient through, and b_dec's gradient through the
encoder is summed over shards (`shared`). A penalty that is a sum over latents (L0, L1) is
summed over shards. The default LatentShard is the whole dictionary in one process, where
all of this is the identity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import ConfigError


def _same(t):
    return t


@dataclass(frozen=True)
class LatentShard:
    """Latents [start, stop) of the dictionary, shard `index` of `count`. sum: forward the sum
    over shards, backward the identity; shared: forward the identity, backward the sum over
    shards; gather: concatenate along dim 0 over shards, in shard order (no gradient)."""

    start: int
    stop: int
    index: int = 0
    count: int = 1
    sum: Callable[[torch.Tensor], torch.Tensor] = field(default=_same, compare=False)
    shared: Callable[[torch.Tensor], torch.Tensor] = field(default=_same, compare=False)
    gather: Callable[[torch.Tensor], torch.Tensor] = field(default=_same, compare=False)

    @property
    def whole(self) -> bool:
        return self.count == 1

    @property
    def width(self) -> int:
        return self.stop - self.start

    @property
    def latents(self) -> slice:
        return slice(self.start, self.stop)


def latent_slices(d_sae: int, count: int) -> list[tuple[int, int]]:
    """[start, stop) of each of `count` equal shards of d_sae latents."""
    if d_sae % count:
        raise ConfigError(
            f"d_sae={d_sae} is not divisible by latent_parallel={count}: the shards must be equal"
        )
    width = d_sae // count
    return [(i * width, (i + 1) * width) for i in range(count)]


def draw_rows(generator, n_rows: int, width: int, rows: slice) -> torch.Tensor:
    """Rows `rows` of torch.randn(n_rows, width, generator=generator), drawn in blocks so that
    only those rows are ever held (blocks of a multiple of 16 values: torch's CPU normal
    sampler then draws the same stream as one call; a test checks it). The generator ends where
    the one call would leave it."""
    start, stop, _ = rows.indices(n_rows)
    step = 16 // math.gcd(width, 16)
    block = max(step, (2**22 // max(width, 1)) // step * step)
    kept = []
    for first in range(0, n_rows, block):
        last = min(first + block, n_rows)
        drawn = torch.randn(last - first, width, generator=generator)
        if first < stop and last > start:
            kept.append(drawn[max(start, first) - first : min(stop, last) - first])
    return torch.cat(kept) if kept else torch.empty(0, width)


def row_cut(values: torch.Tensor, k: int, shard: LatentShard) -> torch.Tensor:
    """Each row's k-th largest value over all shards [n], from each shard's own candidates
    values [n, m] (its m <= k largest of the row: so the union holds the row's top k)."""
    n, m = values.shape
    if m < k:
        values = torch.cat([values, values.new_full((n, k - m), -torch.inf)], dim=1)
    every = shard.gather(values).reshape(shard.count, n, k).permute(1, 0, 2).reshape(n, -1)
    return every.topk(k, dim=1, sorted=False).values.min(dim=1).values


def top_k_per_row(pre, k: int, shard: LatentShard) -> tuple[torch.Tensor, ...]:
    """(rows, cols, values), row-major, of the positive entries among each row's k largest of
    pre [n, h] (a RowTiles of this shard's columns), over the whole dictionary: a shard keeps
    its entries at or above the row's cut over all shards (ties at the cut all kept)."""
    n, h = pre.shape
    tops = [tile.topk(min(k, h), dim=1, sorted=False) for _, tile in pre]
    values = torch.cat([t.values for t in tops])
    cols = torch.cat([t.indices for t in tops])
    keep = values > 0
    if not shard.whole:
        keep &= values >= row_cut(values, k, shard)[:, None]
    rows = torch.arange(n, device=values.device)[:, None].expand_as(values)
    return rows[keep], cols[keep], values[keep]


def check_shardable(sae) -> None:
    """Refuse an SAE that cannot be split over latents, naming why."""
    arch = sae.arch
    if not arch.latent_parallel:
        raise ConfigError(
            f"{arch.name} SAEs cannot be split over ranks (latent_parallel): its rule or loss "
            "is not a sum over latents; use data parallelism (latent_parallel 1)"
        )


def take_shard(sae, shard: LatentShard) -> None:
    """Keep only this shard's latents of a whole SAE, in place (before an optimizer exists)."""
    check_shardable(sae)
    if not sae.shard.whole:
        if sae.shard != shard:
            raise ConfigError("this SAE is already split over another mesh")
        return
    for name, dim in sae.arch.latent_dims(sae).items():
        param = getattr(sae, name)
        kept = param.detach().narrow(dim, shard.start, shard.width)
        kept = kept.clone(memory_format=torch.contiguous_format)
        setattr(sae, name, torch.nn.Parameter(kept, requires_grad=param.requires_grad))
    sae.shard = shard
