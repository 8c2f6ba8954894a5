"""Tokenise documents and pack them into fixed-length contexts that start with BOS.

Stream: doc_1 EOS doc_2 EOS ...; cut into pieces of ctx_len - 1 tokens; each context is
[BOS] + piece. The last incomplete piece is dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch


def pack(
    docs: Iterable[str], tokenizer, ctx_len: int, bos_id: int, eos_id: int | None
) -> Iterator[list[int]]:
    if ctx_len < 2:
        raise ValueError(f"context length must be at least 2, got {ctx_len}")
    buffer: list[int] = []
    for doc in docs:
        buffer.extend(tokenizer(doc, add_special_tokens=False, verbose=False)["input_ids"])
        if eos_id is not None:
            buffer.append(eos_id)
        while len(buffer) >= ctx_len - 1:
            yield [bos_id] + buffer[: ctx_len - 1]
            del buffer[: ctx_len - 1]


def batched(contexts: Iterable[list[int]], n: int) -> Iterator[torch.Tensor]:
    """Groups of n contexts as [n, ctx_len] int64 (the last group may be smaller)."""
    group = []
    for ctx in contexts:
        group.append(ctx)
        if len(group) == n:
            yield torch.tensor(group)
            group = []
    if group:
        yield torch.tensor(group)


def keep_mask(input_ids: torch.Tensor, special_ids: Iterable[int]) -> torch.Tensor:
    """True where a position is an ordinary token (not BOS/EOS/pad or another special token)."""
    return ~torch.isin(input_ids, torch.tensor(sorted(special_ids), dtype=input_ids.dtype))


def right_padded(
    sequences: list[list[int]], pad_id: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists of different lengths as (ids [n, longest], attention mask [n, longest]),
    padded on the right with pad_id (0 when the tokenizer has none), which a causal model's
    earlier positions never see."""
    ids = torch.full(
        (len(sequences), max(map(len, sequences))),
        pad_id if pad_id is not None else 0,
        dtype=torch.long,
    )
    mask = torch.zeros_like(ids)
    for row, tokens in enumerate(sequences):
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, : len(tokens)] = 1
    return ids, mask
