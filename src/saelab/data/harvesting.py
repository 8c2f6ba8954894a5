"""The harvesting loop shared by the cache and streaming: text -> packed contexts -> hooked
model."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch

from .hooks import HookPoint, harvest_many
from .packing import batched, keep_mask, pack
from .text import documents


def packed_contexts(lm, spec, split: str | None = None) -> Iterator[list[int]]:
    """Contexts of spec.dataset (split defaults to spec.split), packed with lm's tokenizer."""
    docs = documents(spec.dataset, split or spec.split, spec.text_column)
    return pack(docs, lm.tokenizer, spec.ctx_len, lm.bos_token_id, lm.tokenizer.eos_token_id)


def harvested_points(
    lm, spec, points: list[HookPoint], batch_contexts: int = 16, skip_contexts: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]]:
    """(ids [b, ctx_len], keep [b, ctx_len], {point.name: activations [keep.sum(), d] float32 on
    CPU}) for successive batches of packed contexts of spec.dataset, after skipping
    skip_contexts, every hook point from one forward pass; keep is False at BOS/EOS/pad and
    other special tokens unless spec.include_special."""
    special = set() if spec.include_special else lm.special_token_ids | {lm.bos_token_id}
    for ids in batched(
        itertools.islice(packed_contexts(lm, spec), skip_contexts, None), batch_contexts
    ):
        keep = keep_mask(ids, special)
        acts = harvest_many(lm, ids, points)
        yield ids, keep, {name: a.float().cpu()[keep] for name, a in acts.items()}


def harvested_batches(
    lm, spec, batch_contexts: int = 16, skip_contexts: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """harvested_points at spec's one hook point: (ids, keep, activations [keep.sum(), d])."""
    point = HookPoint(spec.layer, spec.site)
    for ids, keep, acts in harvested_points(lm, spec, [point], batch_contexts, skip_contexts):
        yield ids, keep, acts[point.name]
