"""Harvest-and-train without a cache: activations flow from the model through a shuffle buffer
that mixes tokens of many contexts, so a batch is not dominated by a few documents."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace

import torch

from .activations import StreamSource
from .batches import rebatch
from .cache import CacheError, CacheSpec
from .harvesting import harvested_batches, packed_contexts


def harvested_activations(lm, spec: CacheSpec, batch_contexts: int = 16) -> Iterator[torch.Tensor]:
    """Activations [m, d_model] of successive batches of packed contexts (see harvested_batches)."""
    return (acts for _, _, acts in harvested_batches(lm, spec, batch_contexts))


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
    return StreamSource(
        shuffle_buffer(harvested_activations(lm, spec), buffer_tokens, seed),
        name=f"{spec.model} L{spec.layer} {spec.site} (streamed)",
        d_in=lm.d_model,
    )


def heldout_activations(lm, spec: CacheSpec, tokens: int) -> torch.Tensor:
    """The first `tokens` activations [<= tokens, d_model] of the held-out documents, in memory."""
    first = list(
        itertools.islice(rebatch(harvested_activations(lm, replace(spec, split="eval")), tokens), 1)
    )
    if not first:
        raise CacheError(
            f"{spec.dataset} gave no held-out tokens to evaluate on (its held-out documents are "
            "empty after tokenization): pass more text, or evaluate on a cache with --activations"
        )
    return first[0]


def heldout_contexts(lm, spec: CacheSpec, n: int) -> torch.Tensor:
    """The first n packed contexts [<= n, ctx_len] of the held-out documents."""
    contexts = list(itertools.islice(packed_contexts(lm, spec, "eval"), n))
    if not contexts:
        raise CacheError(
            f"{spec.dataset} has too little held-out text for one context of {spec.ctx_len} "
            "tokens: pass more text, or a smaller --ctx-len"
        )
    return torch.tensor(contexts)
