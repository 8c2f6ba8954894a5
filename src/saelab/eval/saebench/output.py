"""Result files in SAEBench's schema (its BaseEvalOutput), one per evaluation:
RUN/eval_results/<name>.json with

  eval_type_id            "absorption_first_letter", "sparse_probing" or "autointerp"
  eval_config             the evaluation's settings
  eval_id                 a fresh UUID;  datetime_epoch_millis
  eval_result_metrics     {category: {metric: number}}, flat within a category
  eval_result_details     a list of flat records (per letter, per task, per latent)
  sae_bench_commit_hash   which code computed it: "saelab <version>" (SAEBench did not run)
  sae_lens_id, sae_lens_release_id, sae_lens_version   None: the SAE is not a SAELens release
  sae_cfg_dict            the SAE's config (architecture, sizes, the model and hook it was
                          trained on)
  eval_result_unstructured  what fits neither (texts of autointerp, the words absorbed), and
                          "intervals": {metric: [low, high]} of the main metrics, 95% percentile
                          bootstrap intervals of the mean over the details (letters, tasks,
                          latents), with "over" naming what was resampled
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import numpy as np

from ... import rundir
from ...io.atomic import atomic_write
from ...io.jsonfile import JSONFileError, check_fields, read_json_object
from ...version import __version__

RESULTS_DIR = rundir.EVAL_RESULTS
LEVEL, RESAMPLES = 0.95, 2000


def bootstrap_interval(values, seed: int = 0) -> list[float]:
    """[low, high]: the 95% percentile bootstrap interval of the mean of `values`, from
    RESAMPLES resamples with replacement; a single value gives [v, v]."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (RESAMPLES, len(values)))].mean(1)
    tail = (1 - LEVEL) / 2 * 100
    return [float(v) for v in np.percentile(means, [tail, 100 - tail])]


def intervals(details: list[dict], keys: dict[str, str], over: str, seed: int = 0) -> dict:
    """{"over": what the details are, metric: bootstrap_interval of detail[key]} for the
    metrics and detail keys of `keys`."""
    return {
        "over": over,
        **{
            metric: bootstrap_interval([d[key] for d in details], seed)
            for metric, key in keys.items()
        },
    }


def interval_text(document: dict, metric: str) -> str:
    """' [low, high]' of a metric's interval in a document, or '' without one."""
    found = (document.get("eval_result_unstructured") or {}).get("intervals", {}).get(metric)
    return f" [{found[0]:.3f}, {found[1]:.3f}]" if found else ""


def eval_output(
    eval_type_id: str,
    sae,
    config: dict,
    metrics: dict[str, dict],
    details: list[dict],
    unstructured=None,
) -> dict:
    """The result document of an evaluation of SAEBench's type `eval_type_id`."""
    for category, values in metrics.items():
        nested = [key for key, value in values.items() if isinstance(value, (dict, list))]
        if nested:
            raise ValueError(
                f"metrics must be flat within a category: {category}.{nested[0]} is not a number"
            )
    return {
        "eval_type_id": eval_type_id,
        "eval_config": config,
        "eval_id": str(uuid.uuid4()),
        "datetime_epoch_millis": int(time.time() * 1000),
        "eval_result_metrics": metrics,
        "eval_result_details": details,
        "sae_bench_commit_hash": f"saelab {__version__}",
        "sae_lens_id": None,
        "sae_lens_release_id": None,
        "sae_lens_version": None,
        "sae_cfg_dict": sae.cfg.to_dict(),
        "eval_result_unstructured": unstructured,
    }


def result_path(out_dir: str | Path, name: str) -> Path:
    return Path(out_dir) / RESULTS_DIR / f"{name}.json"


def write_output(out_dir: str | Path, name: str, document: dict) -> Path:
    """Write the document atomically to out_dir/eval_results/<name>.json."""
    path = result_path(out_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: p.write_text(json.dumps(document, indent=1) + "\n"))
    return path


def read_outputs(out_dir: str | Path, names) -> dict[str, dict]:
    """{name: document} of the result files of evaluations `names` in out_dir/eval_results,
    each checked against the schema's top level before use."""
    return {
        name: read_output(result_path(out_dir, name))
        for name in names
        if result_path(out_dir, name).is_file()
    }


def read_output(path: Path) -> dict:
    """One result document: eval_config and eval_result_metrics objects (the metrics grouped in
    objects), eval_result_details a list of objects, eval_result_unstructured an object."""
    document = read_json_object(path)
    check_fields(
        document,
        str(path),
        optional=("eval_result_details", "eval_result_unstructured"),
        eval_config=dict,
        eval_result_metrics=dict,
        eval_result_details=list,
        eval_result_unstructured=(dict, None),
    )
    parts = [*document["eval_result_metrics"].values(), *document.get("eval_result_details", [])]
    if not all(isinstance(part, dict) for part in parts):
        raise JSONFileError(
            f"{path}: eval_result_metrics must hold objects of metrics and eval_result_details "
            "a list of objects"
        )
    return document


def flat_metrics(outputs: dict[str, dict]) -> dict[str, float]:
    """The scalar metrics of result documents as one flat row, under their SAEBench names
    (unique across its evaluations): mean_absorption_fraction_score, sae_top_1_test_accuracy,
    autointerp_score, ..., and each interval as <metric>_low and <metric>_high."""
    row = {}
    for document in outputs.values():
        for values in document["eval_result_metrics"].values():
            row.update(
                {
                    key: value
                    for key, value in values.items()
                    if isinstance(value, (int, float)) and not isinstance(value, bool)
                }
            )
        found = (document.get("eval_result_unstructured") or {}).get("intervals", {})
        for metric, bounds in found.items():
            if isinstance(bounds, list) and len(bounds) == 2:
                row[f"{metric}_low"], row[f"{metric}_high"] = bounds
    return row
