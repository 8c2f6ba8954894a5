"""Streams of activation tensors re-cut into batches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch


def rebatch(pieces: Iterable[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    """Re-cut a stream of [m_i, d] tensors into [batch_size, d] batches (the last may be short)."""
    buffer, size = [], 0
    for piece in pieces:
        buffer.append(piece)
        size += len(piece)
        while size >= batch_size:
            joined = torch.cat(buffer)
            yield joined[:batch_size]
            buffer, size = [joined[batch_size:]], size - batch_size
    if size:
        yield torch.cat(buffer)
