"""Generation with an intervention on an SAE's codes beside generation without (saelab steer),
and the top latents of each token of a text (saelab inspect).

Both run the model with the SAE spliced in with its error term (spliced.py): without edits
that is the clean model, so the two generations differ only by the intervention.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

import torch

from .errors import ArgumentError
from .io.atomic import atomic_write
from .spliced import SplicedRun, spliced

MODES = ("greedy", "sampled")


def prompt_ids(lm, prompt: str, room: int = 0) -> torch.Tensor:
    """[1, n] token ids of `prompt`, BOS first (as the SAE saw its contexts); `room`: tokens
    still to generate, which must fit the model's context too."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ArgumentError("the prompt is empty")
    ids = [lm.bos_token_id] + lm.tokenizer(prompt, add_special_tokens=False).input_ids
    limit = getattr(lm.model.config, "max_position_embeddings", None)
    if limit is not None and len(ids) + room > limit:
        more = f" and {room} more to generate" if room else ""
        raise ArgumentError(
            f"the prompt has {len(ids)} tokens (with BOS){more}: more than the model's "
            f"context of {limit}"
        )
    return torch.tensor([ids], device=next(lm.model.parameters()).device)


def continued(
    lm,
    sae,
    ids: torch.Tensor,
    edit: Callable[[SplicedRun], None],
    max_new_tokens: int,
    sample: bool = False,
) -> torch.Tensor:
    """ids [b, n] continued by max_new_tokens [b, n + new] through the model's own generate
    (its KV cache), with the SAE spliced in with its error term and `edit` applied to it."""
    with spliced(lm, sae, error_term=True) as run:
        edit(run)
        return lm.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=sample,
            pad_token_id=lm.tokenizer.eos_token_id,
        )


def _new_text(lm, tokens: torch.Tensor, ids: torch.Tensor) -> str:
    return lm.tokenizer.decode(tokens[0, ids.shape[1] :], skip_special_tokens=True)


def _unchanged(run: SplicedRun) -> None:
    pass


def generations(
    lm, sae, ids: torch.Tensor, edit: Callable[[SplicedRun], None], max_new_tokens: int, seed: int
) -> dict[str, dict[str, str]]:
    """{mode: {"clean": text, "steered": text}} for greedy and sampled generation (the same
    seed for both samples)."""
    out: dict[str, dict[str, str]] = {mode: {} for mode in MODES}
    for mode in MODES:
        for kind, how in (("clean", _unchanged), ("steered", edit)):
            torch.manual_seed(seed)
            tokens = continued(lm, sae, ids, how, max_new_tokens, sample=mode == "sampled")
            out[mode][kind] = _new_text(lm, tokens, ids)
    return out


def greedy_steered(
    lm, sae, ids: torch.Tensor, latent: int, amounts: list[float], max_new_tokens: int
) -> tuple[str, list[str]]:
    """The clean greedy continuation of ids [1, n] and one per amount added to `latent` at
    every position (the feature browser's steering examples)."""
    edits = [_unchanged] + [lambda run, a=a: run.add(latent, a) for a in amounts]
    texts = [_new_text(lm, continued(lm, sae, ids, e, max_new_tokens), ids) for e in edits]
    return texts[0], texts[1:]


@torch.no_grad()
def top_latents(lm, sae, ids: torch.Tensor, top: int) -> list[dict]:
    """Per token of ids [1, n]: {"position", "token", "latents": [(latent, activation)]}, its
    `top` most active latents (active ones only), from one spliced forward pass."""
    with spliced(lm, sae, error_term=True) as run:
        lm.model(ids)
        codes = run.codes[0]
    values, latents = codes.topk(min(top, codes.shape[-1]), dim=-1)
    rows = []
    for position, token in enumerate(ids[0].tolist()):
        active = [(int(i), float(v)) for v, i in zip(values[position], latents[position]) if v > 0]
        text = lm.tokenizer.decode([token])
        rows.append({"position": position, "token": text, "latents": active})
    return rows


def inspection_page(rows: list[dict], title: str, report: str | None, path: Path) -> None:
    """A small HTML table of top_latents' rows, tokens shaded by their largest activation;
    latents link to the feature browser `report` where there is one."""
    peak = max((lat[0][1] for lat in (r["latents"] for r in rows) if lat), default=1.0) or 1.0

    def latent(i: int, v: float) -> str:
        name = f"{i}" if report is None else f"<a href='{report}#latent-{i}'>{i}</a>"
        return f"{name} <span class='v'>{v:.2f}</span>"

    body = "".join(
        f"<tr><td>{r['position']}</td><td class='tok' style='background:rgba(255,140,0,"
        f"{(r['latents'][0][1] / peak) if r['latents'] else 0:.2f})'>"
        f"{html.escape(repr(r['token']))}</td><td>"
        + ", ".join(latent(i, v) for i, v in r["latents"])
        + "</td></tr>"
        for r in rows
    )
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>"
        f"{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "td{padding:2px 8px;border-bottom:1px solid #eee}.tok{font-family:monospace}"
        ".v{color:#777}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><table><tr><th>position</th><th>token</th>"
        f"<th>top latents (activation)</th></tr>{body}</table></body></html>"
    )
    atomic_write(path, lambda p: p.write_text(page))
