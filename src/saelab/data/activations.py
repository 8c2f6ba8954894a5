"""Activation sources: what `train` and `evaluate` accept as data, turned into batches [n, d_in].
A source has `name`, `d_in`, `n_tokens` (None if unknown), `batches(batch_size, seed,
skip_tokens)` (endless or until exhausted, for training) and `chunks(batch_size)` (each row once).

- a tensor or numpy array [N, d_in] (leading dimensions are flattened), or a `.npy` file (memory
  mapped, never loaded whole): shuffled batches; the order is a function of (seed, position),
  so a resumed run sees exactly the batches an uninterrupted run would have seen;
- an iterable of such tensors: consumed in order and re-cut into batches;
- an activation-cache directory (see cache.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .batches import rebatch
from .cache import ActivationCache


def check_batch(batch: torch.Tensor, d_in: int, where: str) -> None:
    """Raise a DataError naming the problem if batch is not [n, d_in] finite floats."""
    if batch.ndim != 2 or batch.shape[1] != d_in:
        raise DataError(
            f"{where}: activations have shape {tuple(batch.shape)}, but the SAE has d_in={d_in}"
        )
    if not torch.isfinite(batch).all():
        bad = (~torch.isfinite(batch)).sum().item()
        raise DataError(f"{where}: activations contain {bad} NaN/Inf values")


MAX_ZERO_ROWS = 0.01  # share of all-zero rows in the first batch above which data is refused


def check_zero_rows(batch: torch.Tensor, where: str, note: bool = True) -> None:
    """All-zero rows (padding leaking into a cache looks like this): a note when some of
    `batch`'s rows are (unless not `note`), a DataError when more than MAX_ZERO_ROWS are."""
    zero = int((batch == 0).all(dim=1).sum())
    if zero > MAX_ZERO_ROWS * len(batch):
        raise DataError(
            f"{where}: {zero} of {len(batch)} activation rows are all zeros (padding or masked "
            f"positions in the data?); saelab refuses data with more than {MAX_ZERO_ROWS:.0%}"
        )
    if zero and note:
        print(f"note: {where}: {zero} of {len(batch)} activation rows are all zeros")


def check_d_in(source, d_in: int, takes: str | None = None) -> None:
    """Raise a DataError when a source's width is known and differs from the SAE's d_in (or
    what `takes` names: a transcoder's d_in + d_out)."""
    if source.d_in is not None and source.d_in != d_in:
        raise DataError(
            f"activations have d_in={source.d_in}, but the SAE " + (takes or f"has d_in={d_in}")
        )


def evaluation_batches(
    data, d_in: int, batch_size: int = 4096, max_tokens: int | None = None, takes=None
) -> Iterator[torch.Tensor]:
    """Every row of `data` once (at most max_tokens), in checked batches [<= batch_size, d_in]
    (takes: see check_d_in)."""
    source = open_source(data)
    check_d_in(source, d_in, takes)
    n = 0
    for i, x in enumerate(source.chunks(batch_size)):
        if max_tokens is not None:
            x = x[: max_tokens - n]
            if not len(x):
                return
        check_batch(x, d_in, f"{source.name}, evaluation batch {i}")
        if i == 0:
            check_zero_rows(x, f"{source.name}, evaluation batch 0", note=False)
        n += len(x)
        yield x
    if n == 0:
        raise DataError(f"{source.name}: no evaluation tokens")


class ArraySource:
    """Rows [start, stop) of a 2-d array (torch tensor or numpy array / memmap)."""

    def __init__(self, array, start: int = 0, stop: int | None = None, name: str = "tensor"):
        if array.ndim < 2:
            raise DataError(
                f"{name}: activations must be [tokens, d_in], got shape {tuple(array.shape)}"
            )
        floating = (
            array.is_floating_point()
            if isinstance(array, torch.Tensor)
            else np.issubdtype(array.dtype, np.floating)
        )
        if not floating:
            raise DataError(f"{name}: activations must be floating point, got {array.dtype}")
        if array.ndim > 2:
            array = array.reshape(-1, array.shape[-1])
        self.array, self.name = array, name
        self.start, self.stop = start, array.shape[0] if stop is None else stop
        self.d_in = int(array.shape[1])
        if self.n_tokens <= 0:
            raise DataError(f"{name}: no activations (empty data set)")

    @property
    def n_tokens(self) -> int:
        return self.stop - self.start

    def split(self, n_heldout: int) -> tuple[ArraySource, ArraySource]:
        """The first rows for training and the last n_heldout rows for evaluation."""
        if not 0 < n_heldout < self.n_tokens:
            raise DataError(f"{self.name}: cannot hold out {n_heldout} of {self.n_tokens} tokens")
        cut = self.stop - n_heldout
        return (
            ArraySource(self.array, self.start, cut, self.name),
            ArraySource(self.array, cut, self.stop, self.name),
        )

    def _rows(self, index: torch.Tensor) -> torch.Tensor:
        if isinstance(self.array, torch.Tensor):
            return self.array[index + self.start].float()
        rows = np.sort(index.numpy()) + self.start
        return torch.from_numpy(np.asarray(self.array[rows], dtype=np.float32))

    def batches(
        self, batch_size: int, seed: int, skip_tokens: int = 0, part: tuple[int, int] = (0, 1)
    ) -> Iterator[torch.Tensor]:
        """Endless shuffled batches: stream position p reads row perm_e[p mod N] with e = p // N
        and perm_e = randperm(N) seeded by seed * 1_000_003 + e.

        part=(r, n): data-parallel rank r of n reads only its share, rows r*b .. (r+1)*b - 1 of
        each global batch of n*b rows (b = batch_size; skip_tokens counts this rank's rows), so
        the global batches are the same for every n."""
        r, n = part
        perms: dict[int, torch.Tensor] = {}

        def perm(epoch: int) -> torch.Tensor:
            if epoch not in perms:
                if len(perms) > 1:
                    perms.clear()
                gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
                perms[epoch] = torch.randperm(self.n_tokens, generator=gen)
            return perms[epoch]

        position = skip_tokens * n
        while True:
            positions = torch.arange(position + r * batch_size, position + (r + 1) * batch_size)
            epochs, offsets = positions // self.n_tokens, positions % self.n_tokens
            index = torch.cat([perm(int(e))[offsets[epochs == e]] for e in epochs.unique()])
            position += batch_size * n
            yield self._rows(index)

    def chunks(self, batch_size: int) -> Iterator[torch.Tensor]:
        """All rows once, in order."""
        for lo in range(0, self.n_tokens, batch_size):
            index = torch.arange(lo, min(lo + batch_size, self.n_tokens))
            yield self._rows(index)


class StreamSource:
    """An iterable of tensors [m, d_in], consumed once, in order."""

    def __init__(self, iterable: Iterable, name: str = "iterable", d_in: int | None = None):
        self.iterable, self.name, self.d_in = iterable, name, d_in
        self.n_tokens = None

    def _pieces(self) -> Iterator[torch.Tensor]:
        for i, piece in enumerate(self.iterable):
            piece = torch.as_tensor(piece)
            if not piece.is_floating_point():
                raise DataError(
                    f"{self.name}, piece {i}: activations must be floating point, got {piece.dtype}"
                )
            piece = piece.float()
            yield piece.reshape(-1, piece.shape[-1])

    def chunks(self, batch_size: int) -> Iterator[torch.Tensor]:
        return rebatch(self._pieces(), batch_size)

    def batches(
        self, batch_size: int, seed: int, skip_tokens: int = 0, part: tuple[int, int] = (0, 1)
    ) -> Iterator[torch.Tensor]:
        """Full batches in stream order, after skipping the first skip_tokens tokens. A stream
        cannot be split: with part=(r, n) every rank reads global batches of n * batch_size
        rows and keeps its share."""
        r, n = part
        skipped = 0
        for batch in self.chunks(batch_size * n):
            if len(batch) < batch_size * n:
                return
            if skipped < skip_tokens * n:
                skipped += len(batch)
                continue
            yield batch[r * batch_size : (r + 1) * batch_size]


def open_source(data, name: str | None = None) -> ArraySource | StreamSource:
    """Turn what the user passed (tensor, array, .npy path, iterable) into a source."""
    if hasattr(data, "batches") and hasattr(data, "chunks"):
        return data
    if isinstance(data, (str, Path)):
        path = Path(data)
        if not path.exists():
            raise DataError(f"no activation file or cache at {path}")
        if path.is_dir():
            return ActivationCache(path)
        if path.suffix != ".npy":
            raise DataError(
                f"{path}: expected a .npy file of activations [tokens, d_in] or a cache directory"
            )
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise DataError(
                f"{path}: not a readable .npy array ({err or type(err).__name__})"
            ) from None
        if not np.issubdtype(array.dtype, np.floating):
            raise DataError(f"{path}: activations must be floating point, got {array.dtype}")
        return ArraySource(array, name=str(path))
    if isinstance(data, (torch.Tensor, np.ndarray)):
        return ArraySource(data, name=name or "tensor")
    if isinstance(data, Iterable):
        return StreamSource(data, name=name or "iterable")
    raise DataError(
        f"cannot read activations from {type(data).__name__}; pass a tensor, .npy path or iterable"
    )
