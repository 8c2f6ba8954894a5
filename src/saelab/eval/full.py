"""The full evaluation of one SAE (the `core` evaluation): reconstruction metrics, AFA
analysis, decoder statistics, the architecture's own results (BatchTopK's inference L0),
optionally downstream CE/KL; written as eval.json plus PNG plots."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import rundir
from ..data.hooks import HookPoint
from ..io.atomic import atomic_write
from ..options import option
from .afa import afa_over, decoder_orthogonality, summarize
from .downstream import ablation_losses, downstream, transcoder_target
from .metrics import evaluate
from .plots import density_plot, l0_histogram_plot, zf_plot

AFA_TOKENS = 32_768
UNIT_NORM_TOLERANCE = 1e-3  # decoder row norms further from 1 are reported in the summary
EVAL_NAME, PLOTS = rundir.EVAL, rundir.PLOTS


@dataclass
class CoreConfig:
    """The settings of the core evaluation."""

    downstream_contexts: int = option(
        32,
        "held-out contexts for the downstream CE/KL with the SAE spliced in (when a model is "
        "known); 0 skips it",
    )


def full_evaluation(
    sae,
    data,
    out_dir: str | Path,
    model=None,
    input_ids=None,
    layer: int | None = None,
    site: str | None = None,
    batch_size: int = 4096,
    ablations: dict | None = None,
    extra: dict | None = None,
) -> dict:
    """Evaluate `sae` on activations `data`; with model and input_ids also downstream (reusing
    `ablations`, see downstream.ablation_losses, when given). Writes out_dir/eval.json (with
    `extra` fields such as train_tokens added, atomically) and the plots; returns the results."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = evaluate(sae, data, batch_size=batch_size)
    stats = afa_over(sae, data, batch_size=batch_size, max_tokens=AFA_TOKENS)
    results.update(summarize(stats))
    results.update(decoder_orthogonality(sae.W_dec.detach()))
    results.update(sae.arch.evaluation(sae, results))
    if model is not None:
        results.update(downstream(sae, model, input_ids, layer, site, ablations=ablations))
    target = sae.arch.target_l0(sae)
    name = f"{sae.cfg.arch} d_sae={sae.cfg.d_sae}" + (f" k={target}" if target else "")
    l0_histogram_plot(
        results["l0_histogram"], out_dir / PLOTS["l0"], k=target, title=f"L0 per token: {name}"
    )
    density_plot(
        results["latent_density"], out_dir / PLOTS["density"], title=f"Latent density: {name}"
    )
    results["plots"] = {key: PLOTS[key] for key in ("l0", "density")}
    results["plots_skipped"] = {}
    norms = (stats["norm_z"], stats["norm_f_tilde"])  # overflow in an SAE's weights shows here
    if all(torch.isfinite(norm).all() for norm in norms):
        axis = "transcoder" if sae.cfg.is_transcoder else sae.cfg.input_scaling
        zf_plot(*norms, out_dir / PLOTS["zf"], f"ZF plot: {name}", axis)
        results["plots"] = {"zf": PLOTS["zf"], **results["plots"]}
    else:
        results["plots_skipped"]["zf"] = "not drawn: its values are not all finite (NaN or Inf)"
    results.update(extra or {})
    atomic_write(out_dir / EVAL_NAME, lambda p: p.write_text(json.dumps(results, indent=1) + "\n"))
    return results


SUMMARY_KEYS = (
    "nmse",
    "fvu",
    "explained_variance",
    "cosine_similarity",
    "l2_ratio",
    "relative_reconstruction_bias",
    "l0",
    "dead_fraction",
    "silent_fraction",
    "dense_fraction",
    "eps_lbo_median",
    "f_tilde_over_z_median",
    "decoder_max_abs_cos",
    "inference_l0_minus_k",
    "l0_lambda",
    "ce_clean",
    "ce_sae",
    "ce_zero",
    "ce_mean",
    "ce_degradation",
    "ce_loss_recovered",
    "kl",
    "dictionary_recovery",
)


PER_TOKEN_NOTE = (
    "  note: per_token scaling hands each token's mean and std to the output for free, so these "
    "reconstruction and CE numbers are not like-for-like with SAEs that see raw activations"
)


def _what(key: str, results: dict) -> str:
    """The window a dead or silent fraction counts over."""
    if key == "dead_fraction" and "dead_window_tokens" in results:
        return f" (no firing in the last {results['dead_window_tokens']} training tokens)"
    if key == "silent_fraction":
        return f" (no firing on the {results['n_tokens']} held-out tokens: dead or rare)"
    return ""


def summary_lines(results: dict) -> list[str]:
    lines = [
        f"  {key:<30} {results[key]:.4f}{_what(key, results)}"
        for key in SUMMARY_KEYS
        if key in results
    ]
    if results.get("input_scaling") == "per_token":
        lines.append(PER_TOKEN_NOTE)
    low, high = results.get("decoder_norm_min", 1.0), results.get("decoder_norm_max", 1.0)
    if max(abs(low - 1), abs(high - 1)) > UNIT_NORM_TOLERANCE:
        lines.append(
            f"  decoder rows are not unit norm ({low:.4g} to {high:.4g}): kept as saved (the "
            "codes' scale differs from a unit-norm SAE's)"
        )
    for key, why in results.get("plots_skipped", {}).items():
        lines.append(f"  {PLOTS[key]} {why}")
    return lines


def run(sae, context, cfg: CoreConfig) -> dict:
    """full_evaluation of `sae` on context.data into context.out_dir, with downstream CE/KL on
    context.input_ids when there are any (the ablation losses computed once per context and
    hook point written: a transcoder's target, else the context's hook)."""
    model = ablations = None
    if context.input_ids is not None and cfg.downstream_contexts > 0:
        model = context.lm
        written = (
            transcoder_target(sae)
            if sae.cfg.is_transcoder
            else HookPoint(context.layer, context.site)
        )
        key = (written.layer, written.site)
        if key not in context.ablations:
            context.ablations[key] = ablation_losses(model, context.input_ids, *key)
        ablations = context.ablations[key]
    return full_evaluation(
        sae,
        context.data,
        context.out_dir,
        model=model,
        input_ids=context.input_ids,
        layer=context.layer,
        site=context.site,
        batch_size=context.batch_size,
        ablations=ablations,
        extra=context.extra,
    )
