"""Which latents carry a prediction (saelab attribute): every active latent at every position
scored by activation x gradient of a metric of the next token (Marks et al. 2024, sparse
feature circuits), with the SAE spliced in with its error term e, and the top ones checked by
really zeroing them.

metric m: log p(target) at the last position, or logit(target) - logit(contrast).
attribution of latent i at position t: -f_ti dm/df_ti, the linear estimate of m's change when
f_ti is zeroed (error term kept); error_attribution: -sum_t e_t . dm/de_t, the same for zeroing
the error. Since a = decode(f) + e with a linear decoder, the latents' and the error's
attributions sum to the linear estimate of replacing the activation by decode(0).
ablation_effect: m with f_ti zeroed minus m, measured; total_effect: m with every latent
zeroed (error kept) minus m, measured. Both in the metric's units, same sign convention.
"""

from __future__ import annotations

import html
from pathlib import Path

import torch

from .errors import ArgumentError
from .io.atomic import atomic_write
from .spliced import spliced
from .steering import prompt_ids


def single_token(lm, text: str, what: str) -> int:
    """The id of `text`, which must be exactly one token."""
    ids = lm.tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise ArgumentError(
            f"the {what} {text!r} is {len(ids)} tokens ({ids}): it must be exactly one "
            "(mind the leading space, e.g. ' Paris')"
        )
    return ids[0]


def metric_of(logits: torch.Tensor, target: int, contrast: int | None) -> torch.Tensor:
    """The metric of the next token after the last position of logits [1, seq, vocab]."""
    last = logits[0, -1].float()
    if contrast is None:
        return last.log_softmax(-1)[target]
    return last[target] - last[contrast]


def attribute(lm, sae, prompt: str, target: str, contrast: str | None = None, top: int = 10):
    """The attribution document (see the module docstring): target, metric, clean metric,
    total_effect, error_attribution and `latents`, every active latent at every position as
    {position, token, latent, activation, attribution, ablation_effect (the top `top` by
    |attribution|; None for the others)}, sorted by |attribution|."""
    ids = prompt_ids(lm, prompt)
    target_id = single_token(lm, target, "target")
    contrast_id = None if contrast is None else single_token(lm, contrast, "contrast")

    def measure(edit=None) -> float:
        with torch.no_grad(), spliced(lm, sae, error_term=True) as run:
            if edit is not None:
                edit(run)
            return float(metric_of(lm.model(ids).logits, target_id, contrast_id))

    clean = measure()
    with spliced(lm, sae, error_term=True, leaves=True) as run:
        value = metric_of(lm.model(ids).logits, target_id, contrast_id)
        f, e = run.codes, run.errors
        grad_f, grad_e = torch.autograd.grad(value, [f, e])
    f, e = f.detach(), e.detach()
    scores = -(f * grad_f)[0]
    error_attribution = float(-(e * grad_e).sum())
    total = measure(lambda run: run.ablate(list(range(sae.cfg.d_sae)))) - clean
    active = (f[0] > 0).nonzero().tolist()
    tokens = [lm.tokenizer.decode([t]) for t in ids[0].tolist()]
    latents = sorted(
        (
            {
                "position": t,
                "token": tokens[t],
                "latent": i,
                "activation": float(f[0, t, i]),
                "attribution": float(scores[t, i]),
                "ablation_effect": None,
            }
            for t, i in active
        ),
        key=lambda row: -abs(row["attribution"]),
    )
    for row in latents[:top]:
        zeroed = measure(lambda run, r=row: run.ablate([r["latent"]], positions=[r["position"]]))
        row["ablation_effect"] = zeroed - clean
    return {
        "prompt": prompt,
        "target": target,
        "contrast": contrast,
        "metric": "logit difference" if contrast is not None else "log probability",
        "clean_metric": clean,
        "total_effect": total,
        "error_attribution": error_attribution,
        "latent_attribution_sum": float(scores.sum()),
        "latents": latents,
    }


def attribution_page(document: dict, report: str | None, path) -> None:
    """A small HTML table of an attribution document's latents; each latent links to its page
    in the feature browser `report` where there is one."""

    def latent(i: int) -> str:
        return f"{i}" if report is None else f"<a href='{report}#latent-{i}'>{i}</a>"

    def number(v) -> str:
        return "" if v is None else f"{v:+.4f}"

    rows = "".join(
        f"<tr><td>{r['position']}</td><td class='tok'>{html.escape(repr(r['token']))}</td>"
        f"<td>{latent(r['latent'])}</td><td>{r['activation']:.3f}</td>"
        f"<td>{number(r['attribution'])}</td><td>{number(r['ablation_effect'])}</td></tr>"
        for r in document["latents"][:200]
    )
    title = f"{document['metric']} of {document['target']!r} after {document['prompt']!r}"
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>"
        f"{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "td{padding:2px 8px;border-bottom:1px solid #eee;text-align:right}"
        ".tok{font-family:monospace;text-align:left}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>clean {document['clean_metric']:.4f}; every latent "
        f"zeroed (error kept): {document['total_effect']:+.4f} measured, "
        f"{document['latent_attribution_sum']:+.4f} by the latents' attributions; the error "
        f"term's attribution {document['error_attribution']:+.4f}</p><table><tr>"
        "<th>position</th><th>token</th><th>latent</th><th>activation</th>"
        "<th>attribution (linear)</th><th>zeroed (measured)</th></tr>"
        f"{rows}</table></body></html>"
    )
    atomic_write(Path(path), lambda p: p.write_text(page))
