"""Reconstruction metrics over an evaluation set, streamed, accumulated in float64.

Per token t with input x_t, reconstruction x^_t and code f_t:
  nmse        = mean_t ||x_t - x^_t||^2 / ||x_t||^2                     (BatchTopK paper)
  fvu         = sum_t ||x_t - x^_t||^2 / sum_t ||x_t - mean(x)||^2      (mean over the data set)
  explained_variance = 1 - fvu
  mse         = mean over tokens and dimensions of (x - x^)^2
  cosine_similarity = mean_t <x_t, x^_t> / (||x_t|| ||x^_t||)
  l2_ratio    = mean_t ||x^_t|| / ||x_t||                               (shrinkage)
  relative_reconstruction_bias = E||x^||^2 / E<x, x^>
  l0          = mean_t #{i : f_ti != 0}, with its histogram
  latent_density = per latent, the fraction of tokens on which it is active
  silent_fraction = fraction of latents never active on these tokens (rare ones too: a latent of
                   density p is silent on n tokens with probability (1 - p)^n; training's
                   dead_fraction, from the run's history, is the other count);
  dense_fraction = active on > 10% of tokens
  input_scaling  = the SAE's input scaling. With `per_token` the SAE sees (x - mean) / std and its
                   output is mapped back with the token's own mean and std, which it gets for
                   free: its nmse/fvu (and CE) are not like-for-like with SAEs on raw activations.
"""

from __future__ import annotations

import torch

from ..checks import check_type
from ..data.activations import evaluation_batches
from ..sae.model import SAE

DENSE_DENSITY = 0.1


class _Variance:
    """Sum of squared deviations from the running mean (Chan et al. merge), in float64."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, x: torch.Tensor) -> None:
        n_b, mean_b = len(x), x.mean(0)
        m2_b = (x - mean_b).square().sum().item()
        delta = mean_b - self.mean
        total = self.n + n_b
        self.m2 += m2_b + (delta.square().sum() * self.n * n_b / total).item()
        self.mean = self.mean + delta * (n_b / total)
        self.n = total


@torch.no_grad()
def evaluate(sae, data, batch_size: int = 4096, max_tokens: int | None = None) -> dict:
    """Metrics of `sae` (in eval mode: inference semantics) on `data`; see the module doc."""
    check_type("sae", sae, SAE, "a saelab.SAE")
    sae.eval()
    sums = dict.fromkeys(["nmse", "sse", "cos", "l2_ratio", "xhat_sq", "x_dot_xhat", "l0"], 0.0)
    variance = _Variance()
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    l0_counts = torch.zeros(sae.cfg.d_sae + 1, dtype=torch.float64)
    n = 0
    device = sae.W_dec.device
    fired, l0_counts = fired.to(device), l0_counts.to(device)
    for batch in evaluation_batches(data, sae.batch_width, batch_size, max_tokens, sae.takes):
        x, target = sae.split(batch.to(device))
        f = sae.encode(x)
        x_hat = sae.predict(x, f).double()
        x = target.double()  # what x_hat reconstructs: a transcoder's y
        x_sq, xhat_sq = x.square().sum(1), x_hat.square().sum(1)
        err = (x - x_hat).square().sum(1)
        dot = (x * x_hat).sum(1)
        active = f != 0
        l0 = active.sum(1)
        sums["nmse"] += (err / x_sq.clamp_min(1e-30)).sum().item()
        sums["sse"] += err.sum().item()
        sums["cos"] += (dot / (x_sq * xhat_sq).sqrt().clamp_min(1e-30)).sum().item()
        sums["l2_ratio"] += (xhat_sq.sqrt() / x_sq.sqrt().clamp_min(1e-30)).sum().item()
        sums["xhat_sq"] += xhat_sq.sum().item()
        sums["x_dot_xhat"] += dot.sum().item()
        sums["l0"] += l0.sum().item()
        variance.add(x)
        fired += active.sum(0)
        l0_counts += torch.bincount(l0, minlength=sae.cfg.d_sae + 1)
        n += len(x)
    density = fired / n
    fvu = _ratio(sums["sse"], variance.m2)
    last = int(l0_counts.nonzero().max())
    return {
        "n_tokens": n,
        "nmse": sums["nmse"] / n,
        "fvu": fvu,
        "explained_variance": 1 - fvu,
        "mse": sums["sse"] / (n * sae.cfg.width_out),
        "cosine_similarity": sums["cos"] / n,
        "l2_ratio": sums["l2_ratio"] / n,
        "relative_reconstruction_bias": _ratio(sums["xhat_sq"], sums["x_dot_xhat"]),
        "l0": sums["l0"] / n,
        "l0_histogram": [int(c) for c in l0_counts[: last + 1]],
        "latent_density": density.tolist(),
        "silent_fraction": (density == 0).double().mean().item(),
        "dense_fraction": (density > DENSE_DENSITY).double().mean().item(),
        "input_scaling": sae.cfg.input_scaling,
    }


def _ratio(a: float, b: float) -> float:
    """a / b, with IEEE semantics where b is 0 (inf, or NaN for 0 / 0) instead of an error."""
    return float(torch.tensor(a, dtype=torch.float64) / b)
