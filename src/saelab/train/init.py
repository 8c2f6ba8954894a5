"""Initialisation from data: the input scale (from many tokens), then b_dec and the
architecture's own initialisation from the first training batch."""

from __future__ import annotations

import itertools
import math

import torch

from ..data.activations import check_batch
from .distributed import all_reduce

NORM_TOKENS = 2**18  # tokens behind the expected_norm scale (SAELens: about 1000 batches)
NORM_SEED = 2_718_281  # a fixed data order: the scale does not depend on the training seed
NORM_BATCH = 4096


@torch.no_grad()
def mean_squares(source, part: tuple[int, int] = (0, 1), group=None) -> torch.Tensor | None:
    """E[x_j^2] of every column j [d] over min(NORM_TOKENS, all) tokens of a source, in float64
    (so E||x||^2 of any group of columns is the sum of theirs: a transcoder's x and y, or one
    hook point of several side by side): every row when the source has no more, else
    NORM_TOKENS rows of a fixed shuffle (under torchrun each rank reads its share and the sums
    are reduced over `group`, the data ranks). None for a stream, which cannot be read twice."""
    if source.n_tokens is None:
        return None
    if source.n_tokens <= NORM_TOKENS:
        batches, shared = source.chunks(NORM_BATCH), False
    else:
        n_batches = max(1, NORM_TOKENS // (NORM_BATCH * part[1]))
        batches, shared = (
            itertools.islice(source.batches(NORM_BATCH, NORM_SEED, part=part), n_batches),
            True,
        )
    sums, count = torch.zeros(source.d_in, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    for i, x in enumerate(batches):
        check_batch(x, source.d_in, f"{source.name}, input-norm batch {i}")
        sums += x.double().square().sum(0)
        count += len(x)
    if shared:
        all_reduce(sums, group=group)
        all_reduce(count, group=group)
    return sums / count


def geometric_median(x: torch.Tensor, iters: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """argmin_m sum_t ||x_t - m|| by Weiszfeld iterations from the mean. x [n, d] -> [d]."""
    median = x.mean(0)
    for _ in range(iters):
        weights = 1 / (x - median).norm(dim=1).clamp_min(1e-8)
        update = (weights[:, None] * x).sum(0) / weights.sum()
        shift = (update - median).norm()
        median = update
        if shift <= tol * median.norm().clamp_min(1.0):
            break
    return median


@torch.no_grad()
def initialize_from_data(sae, x: torch.Tensor, squared_norms: list[float] | None = None) -> None:
    """x [n, d_in] raw activations of the first batch (a transcoder's [n, d_in + d_out]);
    squared_norms E||x||^2 (a transcoder's E||x||^2, E||y||^2) over many tokens
    (from mean_squares; the batch's own when None). Sets s (expected_norm: s^2 E||x||^2 = d_in;
    a transcoder's s_out^2 E||y||^2 = d_out too), b_dec to the geometric median of the scaled
    batch (a transcoder's: the scaled target's mean), then the architecture's own
    initialisation (jumprelu: thresholds near the target L0)."""
    cfg = sae.cfg
    x, target = sae.split(x)
    if cfg.input_scaling == "expected_norm":
        parts = (x, target) if cfg.is_transcoder else (x,)
        if squared_norms is None:
            squared_norms = [part.double().square().sum(1).mean().item() for part in parts]
        scales = [math.sqrt(part.shape[1] / norm) for part, norm in zip(parts, squared_norms)]
        sae.input_scale.fill_(scales[0])
        cfg.input_scale = scales[0]
        if cfg.is_transcoder:
            sae.output_scale.fill_(scales[1])
            cfg.output_scale = scales[1]
    scaled = sae._scale(x, sae.input_stats(x))
    if cfg.is_transcoder:  # the output bias starts at the target's mean
        sae.b_dec.copy_(sae.scale_target(target).double().mean(0).float())
    else:
        sae.b_dec.copy_(geometric_median(scaled.double()).float())
    sae.arch.initialize(sae, scaled)
    sae.initialized = True
