"""The held-out check during training: reconstruction error and sparsity on held-out data."""

from __future__ import annotations

import torch

from ..data.activations import evaluation_batches


@torch.no_grad()
def heldout_metrics(sae, data, batch_size: int = 4096) -> dict[str, float]:
    """In inference semantics (eval mode; training mode is restored after), over every row x_t
    of `data` with reconstruction x^_t and code f_t:
    heldout_nmse = mean_t ||x_t - x^_t||^2 / ||x_t||^2, heldout_l0 = mean_t #{i : f_ti != 0}.
    A dictionary split over ranks computes them through its loss (every shard takes part)."""
    training = sae.training
    sae.eval()
    nmse = l0 = 0.0
    n = 0
    for batch in evaluation_batches(data, sae.batch_width, batch_size, takes=sae.takes):
        x, target = sae.split(batch.to(sae.W_dec.device))
        if sae.shard.whole:
            f = sae.encode(x)
            x_hat = sae.predict(x, f).double()
            l0 += (f != 0).sum().item()
        else:
            out = sae.loss(x, target=target if sae.cfg.is_transcoder else None)
            x_hat = sae.unscale_output(out.prediction, x).double()
            l0 += out.l0.item() * len(x)
        x = target.double()
        nmse += ((x - x_hat).square().sum(1) / x.square().sum(1).clamp_min(1e-30)).sum().item()
        n += len(x)
    sae.train(training)
    return {"heldout_nmse": nmse / n, "heldout_l0": l0 / n}
