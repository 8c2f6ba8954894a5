"""Downstream loss with the SAE spliced into the model at its hook site.

For next-token prediction over input_ids [batch, seq] (causal LMs):
  ce_clean, ce_sae, ce_zero, ce_mean: mean cross-entropy with the site's activation left alone,
      replaced by the SAE's reconstruction, by zeros, or by its mean over the evaluation tokens
  ce_degradation    = ce_sae - ce_clean
  ce_loss_recovered = (ce_zero - ce_sae) / (ce_zero - ce_clean)
  kl                = mean over positions of KL(p_clean || p_sae)
Position 0 (BOS) is never replaced, and the prediction made at position 0 is left out of every
average: the BOS activation is an outlier that no SAE is trained on, and its logits do not
depend on the splice. Padding (attention_mask == 0) is left out too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.hooks import _hf_model, harvest, site_module, splice


def _keep_bos(fn):
    def replaced(acts: torch.Tensor) -> torch.Tensor:
        out = fn(acts).to(acts.dtype).clone()
        out[:, 0] = acts[:, 0]
        return out
    return replaced


def _logits(net, ids, mask):
    return net(input_ids=ids, attention_mask=mask).logits.float()


@torch.inference_mode()
def downstream(sae, model, input_ids: torch.Tensor, layer: int, site: str = "resid_post",
               attention_mask: torch.Tensor | None = None, batch_size: int = 8) -> dict:
    """CE/KL metrics of `sae` spliced into `model` (a LanguageModel or causal LM module)."""
    net = _hf_model(model)
    site_module(net, layer, site)  # a clear error for a layer/site the model does not have
    if not hasattr(net, "get_output_embeddings") or net.get_output_embeddings() is None:
        raise ValueError(f"{type(net).__name__} has no language-model head: downstream CE needs a causal LM")
    d_model = net.config.hidden_size
    if d_model != sae.cfg.d_in:
        raise ValueError(f"the SAE has d_in={sae.cfg.d_in}, but {site} of this model has width {d_model}")
    if input_ids.ndim != 2 or input_ids.shape[1] < 3:
        raise ValueError(f"input_ids must be [batch, seq >= 3], got {tuple(input_ids.shape)}")
    device = next(net.parameters()).device
    sae = sae.to(device).eval()
    mask_all = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    batches = [(input_ids[i : i + batch_size].to(device), mask_all[i : i + batch_size].to(device))
               for i in range(0, len(input_ids), batch_size)]

    total, count = torch.zeros(d_model, dtype=torch.float64, device=device), 0
    for ids, mask in batches:
        acts = harvest(net, ids, layer, site, attention_mask=mask)[:, 1:]
        keep = mask[:, 1:].bool()
        total += acts[keep].double().sum(0)
        count += int(keep.sum())
    mean = (total / count).float()

    variants = {
        "sae": _keep_bos(lambda a: sae(a.float())),
        "zero": _keep_bos(torch.zeros_like),
        "mean": _keep_bos(lambda a: mean.expand_as(a)),
    }
    sums = dict.fromkeys(["clean", "sae", "zero", "mean", "kl"], 0.0)
    n = 0
    for ids, mask in batches:
        # predictions at positions 1 .. seq-2 of tokens 2 .. seq-1, where both are real tokens
        valid = (mask[:, 1:-1] * mask[:, 2:]).bool()
        targets = ids[:, 2:][valid]
        clean = _logits(net, ids, mask)[:, 1:-1][valid]
        sums["clean"] += F.cross_entropy(clean, targets, reduction="sum").item()
        clean_logp = clean.log_softmax(-1)
        for name, fn in variants.items():
            with splice(net, layer, site, fn):
                logits = _logits(net, ids, mask)[:, 1:-1][valid]
            sums[name] += F.cross_entropy(logits, targets, reduction="sum").item()
            if name == "sae":
                sums["kl"] += F.kl_div(logits.log_softmax(-1), clean_logp, log_target=True, reduction="sum").item()
        n += int(valid.sum())
    ce = {name: sums[name] / n for name in ("clean", "sae", "zero", "mean")}
    gap = ce["zero"] - ce["clean"]
    return {
        "ce_clean": ce["clean"],
        "ce_sae": ce["sae"],
        "ce_zero": ce["zero"],
        "ce_mean": ce["mean"],
        "ce_degradation": ce["sae"] - ce["clean"],
        "ce_loss_recovered": (ce["zero"] - ce["sae"]) / gap if gap != 0 else float("nan"),
        "kl": sums["kl"] / n,
        "n_predictions": n,
    }
