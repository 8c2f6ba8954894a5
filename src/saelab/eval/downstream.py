"""Downstream loss with the SAE spliced into the model at its hook site (a transcoder: its
output, computed from its input hook point, replaces its target's activation; ce_zero and
ce_mean then ablate the target, e.g. the MLP).

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

from ..data.hooks import (
    DEFAULT_SITE,
    HookPoint,
    _hf_model,
    harvest,
    splice,
    splice_point,
    splice_transcoder,
)


def _keep_bos(fn):
    def replaced(acts: torch.Tensor) -> torch.Tensor:
        out = fn(acts).to(acts.dtype).clone()
        out[:, 0] = acts[:, 0]
        return out

    return replaced


def _keep_bos_of_target(sae):
    """fn(x, a) of splice_transcoder: the transcoder's output from x, a itself at BOS."""

    def replaced(x: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
        out = sae(x.float()).to(acts.dtype).clone()
        out[:, 0] = acts[:, 0]
        return out

    return replaced


def recorded_point(sae, target: bool = False) -> HookPoint:
    """The hook point an SAE reads (target: the one a transcoder writes), as its metadata
    records it."""
    keys = ("target_layer", "target_site") if target else ("layer", "site")
    meta = sae.cfg.metadata
    if any(meta.get(key) is None for key in keys):
        what = "transcoder records no target hook point" if target else "SAE records no hook point"
        raise ValueError(
            f"this {what} (metadata {', '.join(keys)}): it cannot be spliced; set "
            f"sae.cfg.metadata.update({'=..., '.join(keys)}=...) to say where it belongs"
        )
    return HookPoint(meta[keys[0]], meta[keys[1]])


def transcoder_target(sae) -> HookPoint:
    """The hook point a transcoder writes, as its metadata records it."""
    return recorded_point(sae, target=True)


def _logits(net, ids, mask):
    return net(input_ids=ids, attention_mask=mask).logits.float()


def _prepare(model, input_ids, layer, site, attention_mask, batch_size, d_in: int | None = None):
    """(hf model, [(ids, mask)] batches), after checking the model, the site and the inputs."""
    net = _hf_model(model)
    splice_point(net, layer, site)  # a clear error for a site the model cannot splice
    if not hasattr(net, "get_output_embeddings") or net.get_output_embeddings() is None:
        raise ValueError(
            f"{type(net).__name__} has no language-model head: downstream CE needs a causal LM"
        )
    if d_in is not None and net.config.hidden_size != d_in:
        raise ValueError(
            f"the SAE has d_in={d_in}, but {site} of this model has width {net.config.hidden_size}"
        )
    if input_ids.ndim != 2 or input_ids.shape[1] < 3:
        raise ValueError(f"input_ids must be [batch, seq >= 3], got {tuple(input_ids.shape)}")
    device = next(net.parameters()).device
    mask_all = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    batches = [
        (input_ids[i : i + batch_size].to(device), mask_all[i : i + batch_size].to(device))
        for i in range(0, len(input_ids), batch_size)
    ]
    return net, batches


def _predictions(net, ids, mask):
    """Logits [m, vocab] of the predictions at positions 1 .. seq-2 whose input and target are
    real tokens, and their targets [m]."""
    valid = (mask[:, 1:-1] * mask[:, 2:]).bool()
    return _logits(net, ids, mask)[:, 1:-1][valid], ids[:, 2:][valid]


@torch.inference_mode()
def ablation_losses(
    model,
    input_ids: torch.Tensor,
    layer: int,
    site: str = DEFAULT_SITE,
    attention_mask: torch.Tensor | None = None,
    batch_size: int = 8,
) -> dict:
    """ce_zero and ce_mean: CE with the site zero-ablated or replaced by its mean over the
    evaluation tokens. They do not depend on the SAE, so a sweep computes them once."""
    net, batches = _prepare(model, input_ids, layer, site, attention_mask, batch_size)
    total, count = 0.0, 0
    for ids, mask in batches:
        acts = harvest(net, ids, layer, site, attention_mask=mask)[:, 1:]
        keep = mask[:, 1:].bool()
        total = total + acts[keep].double().sum(0)
        count += int(keep.sum())
    mean = (total / count).float()
    sums, n = {"zero": 0.0, "mean": 0.0}, 0
    for ids, mask in batches:
        for name, fn in (("zero", torch.zeros_like), ("mean", lambda a: mean.expand_as(a))):
            with splice(net, layer, site, _keep_bos(fn)):
                logits, targets = _predictions(net, ids, mask)
            sums[name] += F.cross_entropy(logits, targets, reduction="sum").item()
        n += len(targets)
    return {"ce_zero": sums["zero"] / n, "ce_mean": sums["mean"] / n}


@torch.inference_mode()
def downstream(
    sae,
    model,
    input_ids: torch.Tensor,
    layer: int,
    site: str = DEFAULT_SITE,
    attention_mask: torch.Tensor | None = None,
    batch_size: int = 8,
    ablations: dict | None = None,
) -> dict:
    """CE/KL metrics of `sae` spliced into `model` (a LanguageModel or causal LM module).
    `ablations`: the result of ablation_losses on the same inputs, if already computed."""
    source = target = HookPoint(layer, site)
    if sae.cfg.is_transcoder:  # its output replaces the target hook point's activation
        target = transcoder_target(sae)
        meta = sae.cfg.metadata
        if meta.get("layer", layer) != layer or meta.get("site", site) != site:
            raise ValueError(
                f"this transcoder reads layers.{meta.get('layer')}.{meta.get('site')} (its "
                f"metadata): spliced at {source.name} it would read other activations"
            )
    net, batches = _prepare(
        model, input_ids, target.layer, target.site, attention_mask, batch_size, d_in=sae.cfg.d_in
    )
    sae = sae.to(next(net.parameters()).device).eval()
    ablations = ablations or ablation_losses(
        net, input_ids, target.layer, target.site, attention_mask, batch_size
    )
    sums, n = {"clean": 0.0, "sae": 0.0, "kl": 0.0}, 0
    for ids, mask in batches:
        clean, targets = _predictions(net, ids, mask)
        if sae.cfg.is_transcoder:
            spliced = splice_transcoder(net, source, target, _keep_bos_of_target(sae))
        else:
            spliced = splice(net, layer, site, _keep_bos(lambda a: sae(a.float())))
        with spliced:
            logits, _ = _predictions(net, ids, mask)
        sums["clean"] += F.cross_entropy(clean, targets, reduction="sum").item()
        sums["sae"] += F.cross_entropy(logits, targets, reduction="sum").item()
        sums["kl"] += F.kl_div(
            logits.log_softmax(-1), clean.log_softmax(-1), log_target=True, reduction="sum"
        ).item()
        n += len(targets)
    ce_clean, ce_sae, ce_zero = sums["clean"] / n, sums["sae"] / n, ablations["ce_zero"]
    gap = ce_zero - ce_clean
    return {
        "ce_clean": ce_clean,
        "ce_sae": ce_sae,
        "ce_zero": ce_zero,
        "ce_mean": ablations["ce_mean"],
        "ce_degradation": ce_sae - ce_clean,
        "ce_loss_recovered": (ce_zero - ce_sae) / gap if gap != 0 else float("nan"),
        "kl": sums["kl"] / n,
        "n_predictions": n,
    }
