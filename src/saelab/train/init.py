"""Initialisation from the first training batch: input scale, b_dec, jumprelu thresholds."""

from __future__ import annotations

import math

import torch


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
def initialize_from_data(sae, x: torch.Tensor) -> None:
    """x [n, d_in] raw activations. Sets s (expected_norm: E||s x||^2 = d_in), b_dec to the
    geometric median of the scaled batch, and for jumprelu with a target L0 k each latent's
    threshold to its (1 - k/d_sae) quantile of pre-activations, so training starts near L0 = k."""
    cfg = sae.cfg
    if cfg.input_scaling == "expected_norm":
        scale = math.sqrt(cfg.d_in / x.double().square().sum(1).mean().item())
        sae.input_scale.fill_(scale)
        cfg.input_scale = scale
    scaled = sae._scale(x, sae.input_stats(x))
    sae.b_dec.copy_(geometric_median(scaled.double()).float())
    if cfg.arch == "jumprelu" and cfg.k is not None:
        pre = sae.pre_activation(scaled)
        rank = max(1, min(len(x), round(len(x) * (1 - cfg.k / cfg.d_sae))))
        quantile = pre.kthvalue(rank, dim=0).values
        sae.log_threshold.copy_(quantile.clamp_min(cfg.jumprelu_init_threshold).log())
