"""Generated activations with a known ground-truth dictionary (for tests and the offline demo).

Each sample is x = sum_{i in S} c_i d_i rescaled to norm sqrt(d_in): unit feature directions
d_i, positive coefficients c_i ~ U(0.5, 1.5), and a very unequal number |S| of active features
per sample (log-uniform between 1 and max_active), so that equal norms hide unequal sparsity.
"""

from __future__ import annotations

import math

import torch


def random_dictionary(n_features: int, d_in: int, generator: torch.Generator) -> torch.Tensor:
    """[n_features, d_in] random unit rows."""
    d = torch.randn(n_features, d_in, generator=generator)
    return d / d.norm(dim=1, keepdim=True)


def synthetic_activations(
    n_tokens: int, d_in: int, n_features: int, max_active: int = 32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (x [n_tokens, d_in], dictionary [n_features, d_in])."""
    if not 1 <= max_active <= n_features:
        raise ValueError(f"max_active must be in [1, n_features={n_features}], got {max_active}")
    gen = torch.Generator().manual_seed(seed)
    dictionary = random_dictionary(n_features, d_in, gen)
    return torch.cat(
        [_samples(n, dictionary, max_active, gen) for n in _chunk_sizes(n_tokens)]
    ), dictionary


def _chunk_sizes(n_tokens: int, chunk: int = 8192) -> list[int]:
    return [min(chunk, n_tokens - lo) for lo in range(0, n_tokens, chunk)]


def _samples(
    n: int, dictionary: torch.Tensor, max_active: int, gen: torch.Generator
) -> torch.Tensor:
    n_features, d_in = dictionary.shape
    counts = (
        (torch.rand(n, generator=gen) * math.log(max_active + 1)).exp().floor().clamp(1, max_active)
    )
    # a uniformly random subset of `count` features: the first `count` of max_active random picks
    picks = torch.rand(n, n_features, generator=gen).topk(max_active, dim=1).indices
    values = (0.5 + torch.rand(n, max_active, generator=gen)) * (
        torch.arange(max_active) < counts[:, None]
    )
    x = torch.zeros(n, n_features).scatter_(1, picks, values) @ dictionary
    return x * (math.sqrt(d_in) / x.norm(dim=1, keepdim=True))
