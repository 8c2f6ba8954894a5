"""The feature browser's latents as Neuronpedia feature dashboards: one JSON file with a list of
features in the field names of Neuronpedia's feature API (modelId, layer, index, maxActApprox,
frac_nonzero, pos_str / pos_values and neg_str / neg_values from the logit lens,
freq_hist_data_bar_heights / _values, activations with tokens, values, maxValue and
maxValueTokenIndex, and binMin / binMax for the contexts sampled from a quantile interval,
explanations), so they can be uploaded or read by tools that read those. The histogram's
values are its bin centres, parallel to its heights (one per bin), as Neuronpedia's pages
index them."""

from __future__ import annotations

import json
from pathlib import Path

from ..io.atomic import atomic_write


def _activation(
    tokenizer, tokens: list[tuple[int, float]], interval: tuple[float, float] | None = None
) -> dict:
    """One context; `interval` [binMin, binMax) for a context sampled from a quantile interval."""
    values = [v for _, v in tokens]
    top = max(range(len(values)), key=values.__getitem__)
    record = {
        "tokens": [tokenizer.decode([t]) for t, _ in tokens],
        "values": values,
        "maxValue": values[top],
        "maxValueTokenIndex": top,
        "minValue": min(values),
    }
    if interval is not None:
        record.update(binMin=interval[0], binMax=interval[1])
    return record


def feature_json(latent, tokenizer, model_id: str, source_id: str) -> dict:
    """One latent (eval/report.Latent) as a Neuronpedia feature record."""
    counts, edges = latent.histogram
    record = {
        "modelId": model_id,
        "layer": source_id,
        "index": str(latent.index),
        "maxActApprox": latent.max_activation,
        "frac_nonzero": latent.density,
        "freq_hist_data_bar_heights": counts,
        "freq_hist_data_bar_values": [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])],
        "activations": [_activation(tokenizer, c) for c in latent.contexts]
        + [
            _activation(tokenizer, c, (sample.low, sample.high))
            for sample in latent.samples
            for c in sample.contexts
        ],
        "explanations": [],
    }
    if latent.logits:
        record.update(
            pos_str=[t for t, _ in latent.logits["top"]],
            pos_values=[v for _, v in latent.logits["top"]],
            neg_str=[t for t, _ in latent.logits["bottom"]],
            neg_values=[v for _, v in latent.logits["bottom"]],
        )
    if latent.explanation:
        record["explanations"].append(
            {
                "description": latent.explanation["explanation"],
                "typeName": "saelab-autointerp-detection",
                "score": latent.explanation.get("score"),
            }
        )
    return record


def write_neuronpedia(latents, tokenizer, path: str | Path, model_id: str, source_id: str) -> Path:
    """Write {"features": [...]} for the latents, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    features = [feature_json(lt, tokenizer, model_id, source_id) for lt in latents]
    atomic_write(path, lambda p: p.write_text(json.dumps({"features": features}, indent=1) + "\n"))
    return path
