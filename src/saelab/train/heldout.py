"""The held-out check during training: reconstruction error and sparsity on held-out data."""

from __future__ import annotations

import torch

from ..data.activations import evaluation_batches


@torch.no_grad()
def heldout_metrics(sae, data, batch_size: int = 4096) -> dict[str, float]:
    """In inference semantics (eval mode; training mode is restored after), over every row x_t
    of `data` with reconstruction x^_t and code f_t:
    heldout_nmse = mean_t ||x_t - x^_t||^2 / ||x_t||^2, heldout_l0 = mean_t #{i : f_ti != 0}."""
    training = sae.training
    sae.eval()
    nmse = l0 = 0.0
    n = 0
    for batch in evaluation_batches(data, sae.batch_width, batch_size, takes=sae.takes):
        x, target = sae.split(batch.to(sae.W_dec.device))
        f = sae.encode(x)
        x_hat = sae.predict(x, f).double()
        x = target.double()
        nmse += ((x - x_hat).square().sum(1) / x.square().sum(1).clamp_min(1e-30)).sum().item()
        l0 += (f != 0).sum().item()
        n += len(x)
    sae.train(training)
    return {"heldout_nmse": nmse / n, "heldout_l0": l0 / n}
