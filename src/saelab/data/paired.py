"""A transcoder's data: two sources of the same tokens row by row (the caches of two hook
points harvested together, `saelab cache --hookpoints`), read side by side as batches
[n, d_in + d_out] of its input x and target y. Both are read with the same seed, shard order and
permutations, so row i of one is row i of the other."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..errors import DataError
from .cache import ActivationCache
from .hooks import HookPoint


class PairedSource:
    """inputs and targets, two ActivationCaches harvested together, as one source (target: the
    hook point the targets come from, when known)."""

    def __init__(
        self, inputs: ActivationCache, targets: ActivationCache, target: HookPoint | None = None
    ):
        rows = [s["n_tokens"] for s in inputs.shards], [s["n_tokens"] for s in targets.shards]
        if rows[0] != rows[1] or inputs.shard_ids != targets.shard_ids:
            raise DataError(
                f"{inputs.directory} and {targets.directory} do not hold the same tokens row by "
                "row: harvest both hook points together (saelab cache --hookpoints)"
            )
        self.inputs, self.targets, self.target = inputs, targets, target
        self.d_in = inputs.d_in + targets.d_in
        self.n_tokens = inputs.n_tokens
        self.name = f"{inputs.name} -> {targets.name}"

    def split(self, n_heldout: int) -> tuple[PairedSource, PairedSource]:
        (a, b), (c, d) = self.inputs.split(n_heldout), self.targets.split(n_heldout)
        return PairedSource(a, c, self.target), PairedSource(b, d, self.target)

    def chunks(self, batch_size: int) -> Iterator[torch.Tensor]:
        return _side_by_side(self.inputs.chunks(batch_size), self.targets.chunks(batch_size))

    def batches(
        self, batch_size: int, seed: int, skip_tokens: int = 0, part: tuple[int, int] = (0, 1)
    ) -> Iterator[torch.Tensor]:
        return _side_by_side(
            self.inputs.batches(batch_size, seed, skip_tokens, part),
            self.targets.batches(batch_size, seed, skip_tokens, part),
        )


def _side_by_side(xs: Iterator[torch.Tensor], ys: Iterator[torch.Tensor]):
    for x, y in zip(xs, ys):
        yield torch.cat([x, y], dim=1)
