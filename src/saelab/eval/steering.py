"""How well latents steer (saelab eval --evals steering): for each latent and strength, what a
steering user cares about, measured on held-out contexts of the SAE's own text.

A latent i is steered by adding s x m_i to its code at every position (run.add, spliced.py,
error term kept, BOS left alone), m_i its largest activation on the contexts, so a strength s
means the same for every latent. For each (latent, strength):
- promoted_logprob_change: mean over positions and over the `promoted` tokens its logit lens
  promotes most of log p_steered - log p_clean (the intended effect; nats);
- kl: mean over positions of KL(p_clean || p_steered) (the side effect; nats);
- fluency_ce: CE under the clean model of `generated` greedy tokens continuing each context's
  first `prompt_tokens`, generated steered (nats per token; the clean generation's own CE,
  clean_fluency_ce, is its reference).
Latents: --steer-latents, else the `n_latents` that fire on most tokens of the contexts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data.cache import CacheSpec
from ..data.hooks import DEFAULT_SITE
from ..data.streaming import heldout_contexts
from ..options import option
from ..spliced import spliced
from ..steering import continued
from .logit_lens import logit_lens_ids
from .saebench.output import eval_output, interval_text, intervals

EVAL_TYPE_ID = "saelab_steering"


@dataclass
class SteeringConfig:
    model_name: str = ""
    layer: int = 0
    site: str = DEFAULT_SITE
    latents: list[int] = option(
        help="latents to steer, a comma list (default: the --steer-n most frequent)",
        flag="steer-latents",
        default_factory=list,
    )
    n_latents: int = option(8, "how many latents to steer by default", flag="steer-n", low=1)
    strengths: list[float] = option(
        help="strengths, in units of each latent's largest activation on the contexts",
        flag="steer-strengths",
        default_factory=lambda: [1.0, 4.0],
    )
    contexts: int = 8
    promoted: int = 10
    prompt_tokens: int = 8
    generated: int = 16
    random_seed: int = 0


@torch.no_grad()
def _log_probs(lm, ids: torch.Tensor) -> torch.Tensor:
    return lm.model(ids).logits.float().log_softmax(-1)


@torch.no_grad()
def steering(sae, lm, ids: torch.Tensor, cfg: SteeringConfig) -> dict:
    """The document (see the module docstring) for contexts ids [n, ctx_len], BOS first."""
    with spliced(lm, sae, error_term=True) as run:
        clean = _log_probs(lm, ids)
        codes = run.codes[:, 1:]
    latents = cfg.latents or (codes > 0).sum((0, 1)).topk(cfg.n_latents).indices.tolist()
    peaks = codes.amax((0, 1))
    promoted = logit_lens_ids(sae, lm, latents, cfg.promoted)
    prompts = ids[:, : cfg.prompt_tokens]

    def fluency(edit) -> float:
        out = continued(lm, sae, prompts, edit, cfg.generated)
        logits = lm.model(out).logits.float()[:, cfg.prompt_tokens - 1 : -1]
        return float(F.cross_entropy(logits.flatten(0, 1), out[:, cfg.prompt_tokens :].flatten()))

    clean_fluency = fluency(lambda run: None)
    details = []
    for latent, tokens in zip(latents, promoted):
        for strength in cfg.strengths:
            amount = strength * float(peaks[latent])
            with spliced(lm, sae, error_term=True) as run:
                run.add(latent, amount)
                steered = _log_probs(lm, ids)
            change = (steered - clean)[:, 1:, tokens].mean()
            kl = (clean.exp() * (clean - steered)).sum(-1)[:, 1:].mean()
            details.append(
                {
                    "latent": latent,
                    "strength": strength,
                    "added": amount,
                    "promoted_logprob_change": float(change),
                    "kl": float(kl),
                    "fluency_ce": fluency(lambda run, a=amount, i=latent: run.add(i, a)),
                }
            )
    keys = ("promoted_logprob_change", "kl", "fluency_ce")
    means, spread = {"clean_fluency_ce": clean_fluency}, {}
    for s in cfg.strengths:  # flat names, one per strength (SAEBench's metrics are unique)
        mine = [d for d in details if d["strength"] == s]
        means.update({f"{k}_s{s:g}": float(np.mean([d[k] for d in mine])) for k in keys})
        spread.update(intervals(mine, {f"{k}_s{s:g}": k for k in keys}, "latents", cfg.random_seed))
    metrics = {"steering": means}
    config = {**asdict(cfg), "latents": latents}
    return eval_output(EVAL_TYPE_ID, sae, config, metrics, details, {"intervals": spread})


def run(sae, context, cfg: SteeringConfig) -> dict:
    """The steering document on held-out contexts of the text the SAE records (its dataset)."""
    meta = sae.cfg.metadata
    spec = CacheSpec(
        model=cfg.model_name,
        layer=context.layer,
        site=context.site,
        dataset=meta.get("dataset", "builtin:wiki"),
        split="eval",
        ctx_len=meta.get("ctx_len", 128),
    )
    ids = heldout_contexts(context.lm, spec, cfg.contexts)
    return steering(sae, context.lm, ids.to(next(context.lm.model.parameters()).device), cfg)


def summary(document: dict) -> list[str]:
    values = document["eval_result_metrics"]["steering"]
    n = len(document["eval_result_details"])
    return [f"  steering ({n} latent x strength; nats; 95% intervals over latents)"] + [
        f"    {key:<34} {value:.4f}{interval_text(document, key)}" for key, value in values.items()
    ]
