"""The feature browser: one self-contained HTML page (no network, images inlined) with an SAE's
metrics and plots and, for each chosen latent, its firing density, a histogram of its nonzero
activations, its top-activating contexts, contexts sampled from lower activation quantiles
(every token shaded by the latent's activation), the logit lens of its decoder direction and,
when eval_results/autointerp.json has one, its explanation and detection score.

By default the latents are chosen across density bands: an equal share from each decade of
firing density (1e-4..1e-3, 1e-3..1e-2, ...), drawn at random within the band among latents
that fire at least MIN_FIRINGS times, because the most frequent latents are the least
interesting ones. It reads an activation cache, which keeps
each activation's context and position and the contexts' token ids (eval/examples.py).
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.cache import ActivationCache
from ..errors import ConfigError
from ..options import check_options, option
from ..steering import greedy_steered, prompt_ids
from .examples import latent_codes, rows_between, top_rows, window
from .logit_lens import logit_lens

BEFORE, AFTER = 24, 6  # tokens shown before and after the activating token
HISTOGRAM_BINS = 30
QUANTILES = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75))  # of the nonzero activations, sampled from
MIN_FIRINGS = 3  # a latent seen fewer times has no density to speak of, nor contexts to compare


STEER_STRENGTHS = (2.0, 6.0)  # times a latent's max activation, for --steer
STEER_TOKENS = 24


@dataclass
class Sample:
    """Contexts drawn from one quantile interval [low, high) of a latent's nonzero activations."""

    label: str
    low: float
    high: float
    contexts: list[list[tuple[int, float]]]
    peaks: list[int]


@dataclass
class Latent:
    index: int
    density: float  # fraction of tokens on which it fires
    max_activation: float
    histogram: tuple[
        list[int], list[float]
    ]  # counts [bins], edges [bins + 1] of nonzero activations
    contexts: list[
        list[tuple[int, float]]
    ]  # per top context: (token id, activation) for each shown token
    peaks: list[int]  # index of the activating token within each shown context
    samples: list[Sample] = field(default_factory=list)  # one per interval of QUANTILES
    logits: dict | None = None  # {"top": [(token, logit)], "bottom": [...]} (eval/logit_lens.py)
    explanation: dict | None = None  # {"explanation", "score", "f1"} from autointerp
    steering: dict | None = None  # {"prompt", "clean", "steered": [(strength, text)]}

    @property
    def band(self) -> str:
        return density_band(self.density)


def density_band(density: float) -> str:
    """The decade of a firing density: '1e-3..1e-2' (densities of 1 fall in '1e-1..1')."""
    if density <= 0:
        return "never fires"
    low = min(-1, math.floor(math.log10(density)))
    return f"1e{low}..{'1' if low == -1 else f'1e{low + 1}'}"


def latents_across_densities(
    counts: torch.Tensor, n_tokens: int, n: int, seed: int = 0, min_count: int = MIN_FIRINGS
) -> list[int]:
    """n latents firing at least min_count times, an equal share from each density band (the
    remainder going to the densest bands, a band short of latents leaving its share to the
    others), random within a band; densest band first, then by index."""
    rng = np.random.default_rng(seed)
    bands: dict[str, list[int]] = {}
    for i in torch.nonzero(counts >= max(1, min_count)).flatten().tolist():
        bands.setdefault(density_band(int(counts[i]) / n_tokens), []).append(i)
    order = sorted(bands, key=lambda b: -int(counts[bands[b][0]]))
    pools = {b: rng.permutation(bands[b]).tolist() for b in order}
    chosen = {b: [] for b in order}
    while sum(map(len, chosen.values())) < n and any(pools.values()):
        for b in order:
            if pools[b] and sum(map(len, chosen.values())) < n:
                chosen[b].append(pools[b].pop())
    return [i for b in order for i in sorted(chosen[b])]


def latent_examples(
    sae,
    cache: ActivationCache,
    latents: list[int] | None = None,
    top_n: int = 32,
    n_contexts: int = 8,
    n_samples: int = 2,
    seed: int = 0,
    batch_size: int = 4096,
) -> list[Latent]:
    """The chosen latents (default: top_n across density bands) with their top contexts and
    n_samples contexts from each lower quantile interval of their activations, at most one per
    packed context."""
    sae = sae.cpu().eval()
    if latents is not None:
        bad = [i for i in latents if not 0 <= i < sae.cfg.d_sae]
        if bad:
            raise ValueError(f"latent(s) {bad} out of range: this SAE has d_sae={sae.cfg.d_sae}")
    if latents is None:
        first = latent_codes(sae, cache, None, batch_size)
        latents = latents_across_densities(first.counts, first.n_tokens, top_n, seed)
    data = latent_codes(sae, cache, latents, batch_size)
    row_of, rng = data.row_of(), np.random.default_rng(seed)
    out = []
    for j, index in enumerate(latents):
        values = data.codes[:, j]
        nonzero = values[values > 0].numpy()
        hist = (
            np.histogram(nonzero, bins=HISTOGRAM_BINS)
            if len(nonzero)
            else (np.zeros(0), np.zeros(1))
        )
        used: set[int] = set()
        shown = [
            window(data, values, row_of, r, BEFORE, AFTER)
            for r in top_rows(values, data.context, n_contexts, used)
        ]
        samples = []
        if len(nonzero) and n_samples:
            for lo, hi in QUANTILES:
                a, b = np.quantile(nonzero, lo), np.quantile(nonzero, hi)
                rows = rows_between(values, data.context, float(a), float(b), n_samples, rng, used)
                if rows:
                    picked = [window(data, values, row_of, r, BEFORE, AFTER) for r in rows]
                    samples.append(
                        Sample(
                            f"quantile {lo:.0%}-{hi:.0%} of its activations ({a:.3g} to {b:.3g})",
                            float(a),
                            float(b),
                            [c for c, _ in picked],
                            [p for _, p in picked],
                        )
                    )
        out.append(
            Latent(
                index=index,
                density=int(data.counts[index]) / data.n_tokens,
                max_activation=float(values.max()),
                histogram=(hist[0].astype(int).tolist(), hist[1].tolist()),
                contexts=[c for c, _ in shown],
                peaks=[p for _, p in shown],
                samples=samples,
            )
        )
    return out


def _token_text(tokenizer, token_id: int) -> str:
    text = tokenizer.decode([token_id])
    return text.replace("\n", "\u23ce") or "\u2205"


def _histogram_svg(
    counts: list[int], edges: list[float], width: int = 260, height: int = 70
) -> str:
    """Bars of the counts, with the value range written under them."""
    if not counts:
        return "<p class='muted'>never fires</p>"
    top, bar = max(counts), width / len(counts)
    bars = "".join(
        f"<rect x='{i * bar:.1f}' y='{height - 14 - h:.1f}' width='{bar - 1:.1f}' "
        f"height='{h:.1f}'/>"
        for i, h in enumerate((height - 16) * c / top for c in counts)
    )
    return (
        f"<svg class='hist' width='{width}' height='{height}' role='img' aria-label='activation "
        f"histogram'>{bars}<text x='0' y='{height - 2}'>{edges[0]:.3g}</text><text x='{width}' "
        f"y='{height - 2}' text-anchor='end'>{edges[-1]:.3g}</text></svg>"
    )


def _context_html(tokenizer, tokens: list[tuple[int, float]], peak: int, scale: float) -> str:
    spans = []
    for q, (token_id, value) in enumerate(tokens):
        alpha = min(1.0, value / scale) if scale > 0 else 0.0
        cls = "tok peak" if q == peak else "tok"
        spans.append(
            f"<span class='{cls}' style='background-color: rgba(255, 110, 0, {alpha:.3f})' "
            f"data-act='{value:.4g}' "
            f"title='{value:.4g}'>{html.escape(_token_text(tokenizer, token_id))}</span>"
        )
    return "<li class='context'>" + "".join(spans) + "</li>"


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    name = html.escape(path.stem)
    return (
        f"<figure><img alt='{name}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{name}</figcaption></figure>"
    )


STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1100px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; }
table.metrics { border-collapse: collapse; } table.metrics td { padding: 2px 12px 2px 0; }
table.metrics td.v { font-variant-numeric: tabular-nums; text-align: right; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
.plots img { max-width: 340px; border: 1px solid #ddd; }
figure { margin: 0; } figcaption { font-size: 12px; color: #666; }
.latent { border: 1px solid #ddd; border-radius: 6px; padding: 10px 14px; margin: 14px 0; }
.latent h3 { margin: 0 0 6px; font-size: 16px; } .stats { color: #555; font-size: 13px; }
.hist rect { fill: #4a78c2; } .hist text { font-size: 10px; fill: #555; }
ol.contexts { padding-left: 22px; margin: 6px 0 0; }
.context { font-family: ui-monospace, monospace; font-size: 12.5px; white-space: pre-wrap;
  margin: 3px 0; }
.tok { border-radius: 2px; } .tok.peak { outline: 1px solid #c04000; }
.muted { color: #888; } #filter { font-size: 14px; padding: 4px 8px; width: 220px; }
nav a { margin-right: 6px; font-size: 12px; }
.latent h4 { margin: 10px 0 2px; font-size: 13px; color: #444; font-weight: 600; }
.row { display: flex; gap: 24px; align-items: flex-start; flex-wrap: wrap; }
.lens { display: flex; gap: 16px; } table.logits { border-collapse: collapse; font-size: 12px; }
table.logits caption { text-align: left; color: #555; } table.logits td { padding: 0 6px 0 0; }
.tokcell { font-family: ui-monospace, monospace; background: #f3f3f3; }
.v { font-variant-numeric: tabular-nums; }
.explanation { margin: 6px 0; }
"""

SCRIPT = """
document.getElementById('filter').addEventListener('input', function (e) {
  var want = e.target.value.split(',').map(function (s) { return s.trim(); }).filter(Boolean);
  document.querySelectorAll('.latent').forEach(function (card) {
    card.hidden = want.length > 0 && want.indexOf(card.dataset.latent) < 0;
  });
});
"""


def _contexts_html(tokenizer, contexts, peaks, scale: float) -> str:
    return (
        "<ol class='contexts'>"
        + "".join(_context_html(tokenizer, c, peak, scale) for c, peak in zip(contexts, peaks))
        + "</ol>"
    )


def _logits_html(logits: dict) -> str:
    def column(title, pairs):
        rows = "".join(
            f"<tr><td class='tokcell'>{html.escape(repr(text)[1:-1])}</td><td "
            f"class='v'>{value:+.3g}</td></tr>"
            for text, value in pairs
        )
        return f"<table class='logits'><caption>{title}</caption>{rows}</table>"

    return (
        "<div class='lens'>"
        + column("promotes (logit lens)", logits["top"])
        + column("suppresses", logits["bottom"])
        + "</div>"
    )


def _latent_html(tokenizer, lt: Latent) -> str:
    parts = [
        f"<section class='latent' id='latent-{lt.index}' data-latent='{lt.index}'>",
        f"<h3>Latent {lt.index}</h3><div class='stats'>density {lt.density:.4%} (band {lt.band}) "
        f"&middot; max activation {lt.max_activation:.4g}</div>",
    ]
    if lt.explanation:
        score = lt.explanation.get("score")
        by = (
            f" ({html.escape(lt.explanation['explainer'])})"
            if lt.explanation.get("explainer")
            else ""
        )
        parts.append(
            f"<p class='explanation'>autointerp{by}: "
            f"<b>{html.escape(lt.explanation['explanation'])}</b>"
            + (
                f" <span class='muted'>(detection accuracy {score:.2f}, F1 "
                f"{lt.explanation['f1']:.2f})</span>"
                if score is not None
                else ""
            )
            + "</p>"
        )
    parts.append(
        "<div class='row'>"
        + _histogram_svg(*lt.histogram)
        + (_logits_html(lt.logits) if lt.logits else "")
        + "</div>"
    )
    if lt.steering:
        rows = "".join(
            f"<tr><td>{label}</td><td class='tokcell'>{html.escape(text)}</td></tr>"
            for label, text in [
                ("clean", lt.steering["clean"]),
                *((f"+{s:g} x max", text) for s, text in lt.steering["steered"]),
            ]
        )
        parts.append(
            f"<table class='steer'><caption>steering: "
            f"{html.escape(lt.steering['prompt'])} &hellip;</caption>{rows}</table>"
        )
    parts.append(
        "<h4>top activations</h4>"
        + _contexts_html(tokenizer, lt.contexts, lt.peaks, lt.max_activation)
    )
    for sample in lt.samples:
        parts.append(
            f"<h4>{html.escape(sample.label)}</h4>"
            + _contexts_html(tokenizer, sample.contexts, sample.peaks, lt.max_activation)
        )
    return "".join(parts) + "</section>"


def _table(values: dict) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td class='v'>{v:.4f}</td></tr>"
        for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    )
    return f"<table class='metrics'>{rows}</table>"


def report_html(
    sae,
    latents: list[Latent],
    tokenizer,
    results: dict | None = None,
    plots: list[Path] | None = None,
    title: str | None = None,
    interp: dict | None = None,
) -> str:
    """The whole page as one string; `interp` holds the metrics of eval_results/ (SAEBench's
    names, eval/saebench/output.flat_metrics)."""
    cfg = sae.cfg
    target = sae.arch.target_l0(sae)
    kind = ("skip transcoder" if cfg.skip else "transcoder") if cfg.is_transcoder else "SAE"
    name = title or f"{cfg.arch} {kind}, d_sae={cfg.d_sae}" + (f", k={target}" if target else "")
    shown = ("model", "layer", "site", "target_layer", "target_site", "dataset")
    meta = ", ".join(f"{k}: {v}" for k, v in cfg.metadata.items() if k in shown)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta "
        f"charset='utf-8'><title>{html.escape(name)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{html.escape(name)}</h1>",
        f"<p class='muted'>{html.escape(meta)}</p>" if meta else "",
    ]
    if results:
        parts.append("<h2>Metrics</h2>" + _table(results))
    if interp:
        parts.append("<h2>Interpretability evaluations (SAEBench)</h2>" + _table(interp))
    if plots:
        parts.append(
            "<h2>Plots</h2><div class='plots'>" + "".join(_image(p) for p in plots) + "</div>"
        )
    parts.append(
        f"<h2>Latents ({len(latents)})</h2><p><input id='filter' placeholder='show latents, e.g. "
        "12, 40'></p>"
    )
    parts.append(
        "<nav>"
        + "".join(f"<a href='#latent-{lt.index}'>{lt.index}</a>" for lt in latents)
        + "</nav>"
    )
    for lt in latents:
        parts.append(_latent_html(tokenizer, lt))
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    return "".join(parts)


@dataclass
class ReportConfig:
    """Which latents the feature browser shows, and how much of each."""

    latents: list[int] | None = option(
        None, "latent indices to show (default: --top across density bands)"
    )
    top: int = option(32, "how many latents to show", low=1)
    contexts: int = option(8, "top-activating contexts per latent", low=1)
    samples: int = option(2, "contexts sampled from each lower quantile of a latent's activations")
    logit_lens: bool = option(
        True, "the logit lens of each latent's decoder direction (loads the model)"
    )
    steer: str | None = option(
        None,
        "a prompt each latent steers: greedy continuations with it added at 2 and 6 times its "
        "max activation, beside the clean one (loads the model)",
        metavar="PROMPT",
    )
    neuronpedia: str | None = option(
        None,
        "also write the latents as Neuronpedia feature dashboards (JSON)",
        metavar="FILE.json",
    )

    def __post_init__(self):
        check_options(self)
        twice = sorted({i for i in self.latents or [] if self.latents.count(i) > 1})
        if twice:
            raise ConfigError(f"--latents lists {', '.join(map(str, twice))} more than once")

    def check(self, d_sae: int) -> None:
        """Every latent asked for exists in a dictionary of d_sae latents."""
        too_large = [i for i in self.latents or [] if i >= d_sae]
        if too_large:
            raise ConfigError(
                f"--latents {', '.join(map(str, too_large))}: this SAE has latents 0..{d_sae - 1}"
            )


def write_report(
    sae,
    cache: ActivationCache,
    path: str | Path,
    tokenizer,
    results: dict | None = None,
    plots: list[Path] | None = None,
    latents: list[int] | None = None,
    top_n: int = 32,
    n_contexts: int = 8,
    n_samples: int = 2,
    lm=None,
    explanations: dict | None = None,
    interp: dict | None = None,
    seed: int = 0,
    steer: str | None = None,
    lens: bool = True,
) -> list[Latent]:
    """Write the feature browser page to `path`; returns the latents shown. With `lm` (the
    model the SAE reads) each latent gets its logit lens (unless not `lens`) and, with `steer`
    (a prompt), its steering example; `explanations` maps latents to their autointerp
    records; `interp` the metrics of eval_results/."""
    chosen = latent_examples(sae, cache, latents, top_n, n_contexts, n_samples, seed)
    if lm is not None and lens and chosen:
        for lt, logits in zip(chosen, logit_lens(sae, lm, [lt.index for lt in chosen])):
            lt.logits = logits
    steer_ids = None if steer is None else prompt_ids(lm, steer, room=STEER_TOKENS)
    for lt in chosen:
        lt.explanation = (explanations or {}).get(lt.index)
        if steer is not None:  # a steering example: the prompt continued clean and steered
            amounts = [s * lt.max_activation for s in STEER_STRENGTHS]
            clean, steered = greedy_steered(lm, sae, steer_ids, lt.index, amounts, STEER_TOKENS)
            lt.steering = {
                "prompt": steer,
                "clean": clean,
                "steered": list(zip(STEER_STRENGTHS, steered)),
            }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report_html(sae, chosen, tokenizer, results, plots, interp=interp))
    return chosen
