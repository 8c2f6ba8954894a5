"""The approximate-feature-activation analysis of Lee et al. (2025), for any SAE.

Per token, with z the input as the SAE sees it (after its input scaling) and f its code:
  f~       = [f_1 ||W_dec,1||, ..., f_h ||W_dec,h||, ||b_dec||]   (b_dec counts as one more feature)
  eps_LBO  = | ||z||^2 - ||f~||^2 | / ((h - 1) ||f~||^2)            the smallest eps consistent
             with ||z||^2 / (1 + eps (h-1)) <= ||f~||^2 <= ||z||^2 / (1 - eps (h-1))
Norms are reported in the units of the raw input: ||z|| and ||f~|| divided by the input
scaling's multiplier (per_token: times the token's std, so ||z|| = ||x - mean(x)||;
expected_norm: divided by s), which leaves eps_LBO and ||f~|| / ||z|| unchanged.
For a transcoder z is what its decoder sum approximates, y - x W_skip (y: its target).
Decoder quasi-orthogonality: max and mean |cos(w_i, w_j)| over i != j, in row blocks so that
h x h is never held in memory.
"""

from __future__ import annotations

import torch

from ..checks import check_type
from ..data.activations import evaluation_batches
from ..errors import ArgumentError
from ..sae.model import SAE


@torch.no_grad()
def afa_stats(sae, x: torch.Tensor, target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """x [n, d_in] (a transcoder's target y [n, d_out] too) -> per-token norm_z, norm_f_tilde
    (raw input units), eps_lbo (each [n])."""
    check_type("sae", sae, SAE, "a saelab.SAE")
    sae._check_input(x)
    if sae.cfg.is_transcoder and target is None:
        raise ArgumentError("a transcoder's AFA needs its target: afa_stats(sae, x, y)")
    sae.eval()
    x = x.reshape(-1, sae.cfg.d_in)
    stats = sae.input_stats(x)
    z = sae._scale(x, stats)
    if sae.cfg.is_transcoder:  # what the code reconstructs: y' minus the skip path
        z = sae.scale_target(target.reshape(-1, sae.cfg.d_out)) - (
            z @ sae.W_skip if sae.cfg.skip else 0
        )
        stats = (sae.output_scale, 0.0)
    to_raw = (
        1 / torch.as_tensor(stats[0], dtype=x.dtype).reshape(-1)
        if sae.cfg.input_scaling != "none"
        else 1.0
    )
    f = sae.encode(x)
    f_tilde_sq = (f * sae.W_dec.norm(dim=1)).square().sum(-1) + sae.b_dec.square().sum()
    z_sq = z.square().sum(-1)
    h = sae.cfg.d_sae
    return {
        "norm_z": z_sq.sqrt() * to_raw,
        "norm_f_tilde": f_tilde_sq.sqrt() * to_raw,
        "eps_lbo": (z_sq - f_tilde_sq).abs() / ((h - 1) * f_tilde_sq.clamp_min(1e-30)),
    }


def afa_over(
    sae, data, batch_size: int = 4096, max_tokens: int | None = None
) -> dict[str, torch.Tensor]:
    """afa_stats over a whole activation source, concatenated."""
    parts = [
        {key: t.cpu() for key, t in afa_stats(sae, *_pair(sae, batch)).items()}
        for batch in evaluation_batches(data, sae.batch_width, batch_size, max_tokens, sae.takes)
    ]
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


def _pair(sae, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(x,) of an autoencoder's batch, (x, y) of a transcoder's, on the SAE's device."""
    x, target = sae.split(batch.to(sae.W_dec.device))
    return (x, target) if sae.cfg.is_transcoder else (x,)


def summarize(stats: dict[str, torch.Tensor]) -> dict:
    """Median and quartiles of eps_LBO and of ||f~|| / ||z||."""
    ratio = stats["norm_f_tilde"] / stats["norm_z"].clamp_min(1e-30)
    out = {}
    for name, values in (("eps_lbo", stats["eps_lbo"]), ("f_tilde_over_z", ratio)):
        q = torch.quantile(
            values.double()[: 2**24], torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
        )
        out.update(
            {f"{name}_q25": q[0].item(), f"{name}_median": q[1].item(), f"{name}_q75": q[2].item()}
        )
    return out


@torch.no_grad()
def decoder_orthogonality(W_dec: torch.Tensor, block: int = 2048) -> dict:
    """max and mean |cos(w_i, w_j)| over pairs i != j of decoder rows, computed block by block,
    and the smallest and largest row norm (1 for what saelab trains; an SAE loaded from another
    library keeps the decoder it was saved with)."""
    norms = W_dec.norm(dim=1, keepdim=True)
    rows = W_dec / norms
    h = len(rows)
    largest, total = 0.0, 0.0
    for lo in range(0, h, block):
        cos = (rows[lo : lo + block] @ rows.T).abs()
        idx = torch.arange(lo, min(lo + block, h))
        cos[idx - lo, idx] = 0
        largest = max(largest, cos.max().item())
        total += cos.double().sum().item()
    return {
        "decoder_max_abs_cos": largest,
        "decoder_mean_abs_cos": total / (h * (h - 1)),
        "decoder_norm_min": norms.min().item(),
        "decoder_norm_max": norms.max().item(),
    }
