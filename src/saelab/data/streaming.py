"""Harvest-and-train without a cache: activations flow from the model through a shuffle buffer
that mixes tokens of many contexts, so a batch is not dominated by a few documents."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .activations import StreamSource
from .cache import CacheSpec
from .hooks import harvest
from .packing import batched, keep_mask, pack
from .text import documents


def harvested_activations(lm, spec: CacheSpec, batch_contexts: int = 16) -> Iterator[torch.Tensor]:
    """Activations [m, d_model] of successive batches of packed contexts, special tokens left
    out unless spec.include_special."""
    special = set() if spec.include_special else lm.special_token_ids | {lm.bos_token_id}
    docs = documents(spec.dataset, spec.split, spec.text_column)
    for ids in batched(pack(docs, lm.tokenizer, spec.ctx_len, lm.bos_token_id, lm.tokenizer.eos_token_id),
                       batch_contexts):
        yield harvest(lm, ids, spec.layer, spec.site).float().cpu()[keep_mask(ids, special)]


def shuffle_buffer(pieces: Iterator[torch.Tensor], size: int, seed: int) -> Iterator[torch.Tensor]:
    """Fill a buffer of `size` rows, shuffle it, emit half, refill; at the end emit the rest."""
    gen = torch.Generator().manual_seed(seed)
    buffer, count = [], 0
    for piece in pieces:
        buffer.append(piece)
        count += len(piece)
        if count >= size:
            rows = torch.cat(buffer)
            rows = rows[torch.randperm(len(rows), generator=gen)]
            half = len(rows) // 2
            yield rows[:half]
            buffer, count = [rows[half:]], len(rows) - half
    if count:
        rows = torch.cat(buffer)
        yield rows[torch.randperm(len(rows), generator=gen)]


def streamed_source(lm, spec: CacheSpec, buffer_tokens: int = 65536, seed: int = 0) -> StreamSource:
    source = StreamSource(shuffle_buffer(harvested_activations(lm, spec), buffer_tokens, seed),
                          name=f"{spec.model} L{spec.layer} {spec.site} (streamed)")
    source.d_in = lm.d_model
    return source
