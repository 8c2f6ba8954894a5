"""The feature browser: one self-contained HTML page (no network, images inlined) with an SAE's
metrics and plots and, for each chosen latent, its firing density, a histogram of its nonzero
activations and its top-activating contexts with every token shaded by the latent's activation.

It reads an activation cache, which keeps each activation's context and position and the
contexts' token ids, so the text around an activation can be shown.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.cache import ActivationCache
from ..io.jsonfile import read_json_object
from .full import EVAL_NAME

BEFORE, AFTER = 24, 6  # tokens shown before and after the activating token
HISTOGRAM_BINS = 30


@dataclass
class Latent:
    index: int
    density: float  # fraction of tokens on which it fires
    max_activation: float
    histogram: tuple[list[int], list[float]]  # counts [bins], edges [bins + 1] of nonzero activations
    contexts: list[list[tuple[int, float]]]  # per top context: (token id, activation) for each shown token
    peaks: list[int]  # index of the activating token within each shown context


@torch.inference_mode()
def _codes_of(sae, cache: ActivationCache, latents: list[int] | None, batch_size: int):
    """One pass over the cache in storage order: (firing counts [d_sae], codes of `latents` [N, L]
    or None, context [N], position [N], {context: token ids [ctx_len]})."""
    counts = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    kept, contexts, positions, token_ids = [], [], [], {}
    for i in range(len(cache.shards)):
        shard = cache.load_shard(i)
        acts = shard["activations"].float()
        for start in range(0, len(acts), batch_size):
            codes = sae.encode(acts[start : start + batch_size])
            counts += (codes > 0).sum(0)
            if latents is not None:
                kept.append(codes[:, latents].clone())
        contexts.append(shard["context"])
        positions.append(shard["position"])
        first = int(shard["first_context"])
        token_ids.update({first + j: row for j, row in enumerate(shard["tokens"])})
    codes = torch.cat(kept) if latents is not None else None
    return counts, codes, torch.cat(contexts), torch.cat(positions), token_ids


def latent_examples(sae, cache: ActivationCache, latents: list[int] | None = None, top_n: int = 32,
                    n_contexts: int = 8, batch_size: int = 4096) -> list[Latent]:
    """The chosen latents (default: the top_n by firing frequency) with their top contexts,
    at most one per packed context."""
    sae = sae.cpu().eval()
    if latents is not None:
        bad = [i for i in latents if not 0 <= i < sae.cfg.d_sae]
        if bad:
            raise ValueError(f"latent(s) {bad} out of range: this SAE has d_sae={sae.cfg.d_sae}")
    if cache.d_in != sae.cfg.d_in:
        raise ValueError(f"the SAE has d_in={sae.cfg.d_in}, but the activations in {cache.directory} have d_in={cache.d_in}")
    if latents is None:
        counts = _codes_of(sae, cache, None, batch_size)[0]
        firing = torch.nonzero(counts).flatten()
        latents = firing[counts[firing].argsort(descending=True, stable=True)][:top_n].tolist()
    counts, codes, context, position, token_ids = _codes_of(sae, cache, latents, batch_size)
    n_tokens = len(context)
    row_of = {(int(c), int(p)): r for r, (c, p) in enumerate(zip(context.tolist(), position.tolist()))}
    out = []
    for j, index in enumerate(latents):
        values = codes[:, j]
        nonzero = values[values > 0].numpy()
        hist = np.histogram(nonzero, bins=HISTOGRAM_BINS) if len(nonzero) else (np.zeros(0), np.zeros(1))
        shown, peaks, used = [], [], set()
        for r in values.argsort(descending=True).tolist():
            if len(shown) == n_contexts or values[r] <= 0:
                break
            c, p = int(context[r]), int(position[r])
            if c in used:
                continue
            used.add(c)
            ids = token_ids[c].tolist()
            lo, hi = max(0, p - BEFORE), min(len(ids), p + AFTER + 1)
            shown.append([(ids[q], float(values[row_of[c, q]]) if (c, q) in row_of else 0.0) for q in range(lo, hi)])
            peaks.append(p - lo)
        out.append(Latent(index=index, density=int(counts[index]) / n_tokens, max_activation=float(values.max()),
                          histogram=(hist[0].astype(int).tolist(), hist[1].tolist()), contexts=shown, peaks=peaks))
    return out


def _token_text(tokenizer, token_id: int) -> str:
    text = tokenizer.decode([token_id])
    return text.replace("\n", "\u23ce") or "\u2205"


def _histogram_svg(counts: list[int], edges: list[float], width: int = 260, height: int = 70) -> str:
    """Bars of the counts, with the value range written under them."""
    if not counts:
        return "<p class='muted'>never fires</p>"
    top, bar = max(counts), width / len(counts)
    bars = "".join(f"<rect x='{i * bar:.1f}' y='{height - 14 - h:.1f}' width='{bar - 1:.1f}' height='{h:.1f}'/>"
                   for i, h in enumerate((height - 16) * c / top for c in counts))
    return (f"<svg class='hist' width='{width}' height='{height}' role='img' aria-label='activation histogram'>"
            f"{bars}<text x='0' y='{height - 2}'>{edges[0]:.3g}</text>"
            f"<text x='{width}' y='{height - 2}' text-anchor='end'>{edges[-1]:.3g}</text></svg>")


def _context_html(tokenizer, tokens: list[tuple[int, float]], peak: int, scale: float) -> str:
    spans = []
    for q, (token_id, value) in enumerate(tokens):
        alpha = min(1.0, value / scale) if scale > 0 else 0.0
        cls = "tok peak" if q == peak else "tok"
        spans.append(f"<span class='{cls}' style='background-color: rgba(255, 110, 0, {alpha:.3f})' "
                     f"data-act='{value:.4g}' title='{value:.4g}'>{html.escape(_token_text(tokenizer, token_id))}</span>")
    return "<li class='context'>" + "".join(spans) + "</li>"


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<figure><img alt='{html.escape(path.stem)}' src='data:image/png;base64,{data}'><figcaption>{html.escape(path.stem)}</figcaption></figure>"


STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1100px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; }
table.metrics { border-collapse: collapse; } table.metrics td { padding: 2px 12px 2px 0; }
table.metrics td.v { font-variant-numeric: tabular-nums; text-align: right; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; } .plots img { max-width: 340px; border: 1px solid #ddd; }
figure { margin: 0; } figcaption { font-size: 12px; color: #666; }
.latent { border: 1px solid #ddd; border-radius: 6px; padding: 10px 14px; margin: 14px 0; }
.latent h3 { margin: 0 0 6px; font-size: 16px; } .stats { color: #555; font-size: 13px; }
.hist rect { fill: #4a78c2; } .hist text { font-size: 10px; fill: #555; }
ol.contexts { padding-left: 22px; margin: 6px 0 0; }
.context { font-family: ui-monospace, monospace; font-size: 12.5px; white-space: pre-wrap; margin: 3px 0; }
.tok { border-radius: 2px; } .tok.peak { outline: 1px solid #c04000; }
.muted { color: #888; } #filter { font-size: 14px; padding: 4px 8px; width: 220px; }
nav a { margin-right: 6px; font-size: 12px; }
"""

SCRIPT = """
document.getElementById('filter').addEventListener('input', function (e) {
  var want = e.target.value.split(',').map(function (s) { return s.trim(); }).filter(Boolean);
  document.querySelectorAll('.latent').forEach(function (card) {
    card.hidden = want.length > 0 && want.indexOf(card.dataset.latent) < 0;
  });
});
"""


def report_html(sae, latents: list[Latent], tokenizer, results: dict | None = None,
                plots: list[Path] | None = None, title: str | None = None) -> str:
    """The whole page as one string."""
    cfg = sae.cfg
    target = sae.arch.target_l0(sae)
    name = title or f"{cfg.arch} SAE, d_sae={cfg.d_sae}" + (f", k={target}" if target else "")
    meta = ", ".join(f"{k}: {v}" for k, v in cfg.metadata.items() if k in ("model", "layer", "site", "dataset"))
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(name)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(name)}</h1>",
             f"<p class='muted'>{html.escape(meta)}</p>" if meta else ""]
    if results:
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td class='v'>{v:.4f}</td></tr>" for k, v in results.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool))
        parts.append(f"<h2>Metrics</h2><table class='metrics'>{rows}</table>")
    if plots:
        parts.append("<h2>Plots</h2><div class='plots'>" + "".join(_image(p) for p in plots) + "</div>")
    parts.append(f"<h2>Latents ({len(latents)})</h2><p><input id='filter' placeholder='show latents, e.g. 12, 40'></p>")
    parts.append("<nav>" + "".join(f"<a href='#latent-{lt.index}'>{lt.index}</a>" for lt in latents) + "</nav>")
    for lt in latents:
        contexts = "".join(_context_html(tokenizer, c, peak, lt.max_activation) for c, peak in zip(lt.contexts, lt.peaks))
        parts.append(
            f"<section class='latent' id='latent-{lt.index}' data-latent='{lt.index}'>"
            f"<h3>Latent {lt.index}</h3><div class='stats'>density {lt.density:.4%} &middot; "
            f"max activation {lt.max_activation:.4g}</div>{_histogram_svg(*lt.histogram)}"
            f"<ol class='contexts'>{contexts}</ol></section>")
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    return "".join(parts)


def write_report(sae, cache: ActivationCache, path: str | Path, tokenizer, results: dict | None = None,
                 plots: list[Path] | None = None, latents: list[int] | None = None, top_n: int = 32,
                 n_contexts: int = 8) -> list[Latent]:
    """Write the feature browser page to `path`; returns the latents shown."""
    chosen = latent_examples(sae, cache, latents, top_n, n_contexts)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report_html(sae, chosen, tokenizer, results, plots))
    return chosen


def read_results(run: Path) -> dict | None:
    file = run / EVAL_NAME
    return read_json_object(file) if file.is_file() else None
