"""The run directory, one owner for it: the names of the files saelab writes into a run, what
state a run is in, and preparing, recording and cleaning up runs. Used by training, evaluation,
sweeps, the report and the command line.

RUN/
  cfg.json, sae.safetensors   the SAE (io/format.py)
  checkpoint.pt               while training (train/checkpoint.py), removed when it finishes
  history.jsonl               one record per log step (train/loop.py)
  train_config.json           the TrainConfig it was trained with
  eval.json, *.png            the evaluation (eval/full.py)
  eval_results/<name>.json    SAEBench's evaluations (eval/saebench/)
  report.html                 the feature browser (eval/report.py)
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

from .errors import SaelabError

CFG = "cfg.json"
WEIGHTS = "sae.safetensors"
CHECKPOINT = "checkpoint.pt"
HISTORY = "history.jsonl"
TRAIN_CONFIG = "train_config.json"
EVAL = "eval.json"
EVAL_RESULTS = "eval_results"
PLOTS = {"zf": "zf_plot.png", "l0": "l0_histogram.png", "density": "latent_density.png"}
REPORT = "report.html"
FILES = (CFG, WEIGHTS, CHECKPOINT, HISTORY, TRAIN_CONFIG, EVAL, *PLOTS.values(), REPORT)
CACHE_SHARDS = "shard-*.safetensors"  # what an activation cache directory holds (data/cache.py)


class RunError(SaelabError):
    """A run directory that cannot be used as asked (occupied, interrupted, a file)."""


def state(run: Path) -> str:
    """'evaluated', 'trained', 'interrupted' or 'new'."""
    run = Path(run)
    if (run / EVAL).is_file() and (run / WEIGHTS).is_file():
        return "evaluated"
    if (run / WEIGHTS).is_file():
        return "trained"
    return "interrupted" if (run / CHECKPOINT).is_file() else "new"


def prepare(out: Path, resume: bool, overwrite: bool) -> Path:
    """A directory to train into (it and its sub-runs, one per SAE of a grid): new, or with
    resume an interrupted run, or with overwrite one whose saelab files are removed first."""
    if resume and overwrite:
        raise RunError("--resume and --overwrite contradict each other: choose one")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file, not a run directory")
    if resume:
        return out
    runs = [out, *(p for p in out.glob("*") if p.is_dir())] if out.is_dir() else []
    if overwrite:
        for run in runs:
            for name in FILES:
                (run / name).unlink(missing_ok=True)
            shutil.rmtree(run / EVAL_RESULTS, ignore_errors=True)
    elif any(state(run) == "interrupted" for run in runs):
        raise RunError(
            f"{out} holds an interrupted run; pass --resume to continue it or --overwrite"
        )
    elif any(state(run) in ("trained", "evaluated") for run in runs):
        raise RunError(
            f"{out} already holds a trained SAE; pass --overwrite or choose another --out"
        )
    return out


@contextmanager
def removed_if_failed(out: str | Path | None, current=lambda: None):
    """Run work that writes into `out` (or into current(), which the work may set); if it fails
    and the directory did not exist before and holds nothing to keep (no checkpoint to resume,
    no trained SAE, no cache shard), remove it: a failed command leaves no half-made run or
    cache behind, and never removes a finished artifact."""
    existed = out is not None and Path(out).exists()
    try:
        yield
    except BaseException:
        path = current() or out
        if path is not None and not existed and Path(path).is_dir():
            if not any(
                any(Path(path).rglob(pattern)) for pattern in (CHECKPOINT, WEIGHTS, CACHE_SHARDS)
            ):
                shutil.rmtree(path, ignore_errors=True)
        raise


def write_train_config(run: Path, train_cfg) -> None:
    (Path(run) / TRAIN_CONFIG).write_text(json.dumps(train_cfg.to_dict(), indent=2) + "\n")


def training_dead(history: list[dict]) -> dict:
    """From a run's history (read_history): dead_fraction, the latents that did not fire in the
    last dead_window_tokens training tokens at the last record; {} for a run without one."""
    last = history[-1] if history else {}
    return {key: last[key] for key in ("dead_fraction", "dead_window_tokens") if key in last}


def read_history(run: Path) -> list[dict]:
    """The records of run/history.jsonl; a line cut off by an interruption is skipped."""
    path = Path(run) / HISTORY
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records
