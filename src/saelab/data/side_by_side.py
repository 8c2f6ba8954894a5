"""Several hook points of the same tokens as one source: the caches of points harvested
together (`saelab cache --hookpoints`), row i of each being the same token, read side by side
as rows [n, sum of widths] (a transcoder's x and y; or every point of a run of several). All
are read with the same seed, shard order and permutations, so the rows stay aligned."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..errors import DataError
from .cache import ActivationCache


class SideBySide:
    """caches {hook point name: ActivationCache}, harvested together, as one source; columns
    {name: LongTensor} are each point's columns in its rows."""

    def __init__(self, caches: dict[str, ActivationCache]):
        first = next(iter(caches.values()))
        for cache in caches.values():
            rows = [s["n_tokens"] for s in cache.shards], [s["n_tokens"] for s in first.shards]
            if rows[0] != rows[1] or cache.shard_ids != first.shard_ids:
                raise DataError(
                    f"{first.directory} and {cache.directory} do not hold the same tokens row "
                    "by row: harvest the hook points together (saelab cache --hookpoints)"
                )
        self.caches = caches
        self.columns, start = {}, 0
        for name, cache in caches.items():
            self.columns[name] = torch.arange(start, start + cache.d_in)
            start += cache.d_in
        self.d_in, self.n_tokens = start, first.n_tokens
        self.name = " + ".join(cache.name for cache in caches.values())

    def columns_of(self, names: list[str]) -> torch.Tensor:
        """The columns of several points, in the order named (a transcoder's x, then y)."""
        return torch.cat([self.columns[name] for name in names])

    def split(self, n_heldout: int) -> tuple[SideBySide, SideBySide]:
        parts = {name: cache.split(n_heldout) for name, cache in self.caches.items()}
        return tuple(SideBySide({name: pair[i] for name, pair in parts.items()}) for i in (0, 1))

    def chunks(self, batch_size: int) -> Iterator[torch.Tensor]:
        return _side_by_side([c.chunks(batch_size) for c in self.caches.values()])

    def batches(
        self, batch_size: int, seed: int, skip_tokens: int = 0, part: tuple[int, int] = (0, 1)
    ) -> Iterator[torch.Tensor]:
        return _side_by_side(
            [c.batches(batch_size, seed, skip_tokens, part) for c in self.caches.values()]
        )


def _side_by_side(readers: list[Iterator[torch.Tensor]]) -> Iterator[torch.Tensor]:
    for rows in zip(*readers):
        yield torch.cat(rows, dim=1)
