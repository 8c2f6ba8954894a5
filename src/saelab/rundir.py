"""The run directory, one owner for it: the names of the files saelab writes into a run, what
state a run is in and what any other folder holds, preparing (refusing what a command must not
write over), locking, recording, reading (eval.json, history) and cleaning up runs. Used by
training, evaluation, sweeps, the report and the command line.

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
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from .errors import SaelabError
from .io.jsonfile import check_fields, is_kind, read_json_object

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
SAE_FORMAT = "saelab-sae"  # cfg.json's "format" (io/format.py)
LOCK = ".saelab.lock"  # held while a command writes into the directory (locked)
CACHE_SHARDS = "shard-*.safetensors"  # what an activation cache directory holds (data/cache.py)
# what other folders hold: a file that tells what a folder is, checked in this order
SAELENS_WEIGHTS = "sae_weights.safetensors"  # io/external.py
DICTIONARY_LEARNING_WEIGHTS = "ae.pt"  # io/dictionary_learning.py
CACHE_MANIFEST = "manifest.json"  # data/cache.py
SWEEP_RESULTS = "results.json"  # sweep.py
MARKERS = {
    SAELENS_WEIGHTS: "a SAELens SAE",
    DICTIONARY_LEARNING_WEIGHTS: "a dictionary_learning SAE",
    CACHE_MANIFEST: "an activation cache",
    SWEEP_RESULTS: "a sweep",
}
OWN = {*FILES, EVAL_RESULTS, LOCK}  # what saelab writes into a run


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


def describe(path: Path) -> str:
    """What a file or folder is, as far as saelab can tell: a saelab run, another library's SAE,
    an activation cache, a sweep, or just a file or folder."""
    if not path.is_dir():
        return "a file"
    names = {p.name for p in path.iterdir()}
    if CFG in names and not _is_saelab_cfg(path / CFG):
        if SAELENS_WEIGHTS in names:
            return "a SAELens SAE"
        return "a sparsify SAE" if WEIGHTS in names else "another library's cfg.json"
    if names & {CFG, WEIGHTS, CHECKPOINT}:
        return "a saelab run"
    what = next((what for marker, what in MARKERS.items() if marker in names), None)
    return what or ("an empty folder" if not names else "a folder")


def _is_saelab_cfg(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == SAE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def strangers(out: Path, runs: list[Path]) -> list[str]:
    """'path (what it is)' for what `out` and the runs in it hold that saelab does not write for
    these runs: other runs, other libraries' SAEs, caches, anything else. A folder that is
    another library's SAE, a cache or a sweep is named as a whole."""
    found = []
    for folder in sorted({out, *runs}):
        if not folder.is_dir():
            continue
        what = describe(folder)
        if what not in ("a saelab run", "a folder", "an empty folder"):
            found.append(f"{folder} ({what})")
            continue
        for entry in sorted(folder.iterdir()):
            ours = entry.name in OWN if folder in runs else entry in runs or entry.name == LOCK
            if not ours:
                found.append(f"{entry.relative_to(out)} ({describe(entry)})")
    return found


def prepare(out: Path, runs: list[Path], resume: bool, overwrite: bool) -> None:
    """Check, before any work, that a training may write the SAEs `runs` (out itself, or its
    sub-runs for a grid) into `out`: a new or empty directory; with resume an interrupted run;
    with overwrite one that holds earlier saelab runs there. Anything saelab did not write for
    these runs is refused unless overwrite (which then leaves it alone), and another library's
    SAE where a run goes is refused always. Nothing is deleted here: a fresh Trainer clears its
    own run's old files when training starts (clear)."""
    if resume and overwrite:
        raise RunError("--resume and --overwrite contradict each other: choose one")
    out = Path(out)
    for run in runs:
        if run.is_dir() and (run / CFG).is_file() and not _is_saelab_cfg(run / CFG):
            raise RunError(
                f"{run} holds {describe(run)}; saelab does not write over another library's "
                "files: choose another --out"
            )
    if resume:
        for run in runs:
            if not (run / CHECKPOINT).is_file():
                finished = state(run) in ("trained", "evaluated")
                raise RunError(
                    f"cannot resume: no {CHECKPOINT} in {run}"
                    + (
                        ": it holds a finished SAE (pass --overwrite to train it again)"
                        if finished
                        else " (train without --resume)"
                    )
                )
        return
    others = strangers(out, runs)
    if others and not overwrite:
        raise RunError(
            f"--out {out} is not free for this training, it holds: {', '.join(others)}; choose "
            "another --out, or pass --overwrite to write beside it (it replaces only saelab's "
            "files of these runs)"
        )
    if overwrite:
        return
    if any(state(run) == "interrupted" for run in runs):
        raise RunError(
            f"{out} holds an interrupted run; pass --resume to continue it or --overwrite"
        )
    if any(state(run) in ("trained", "evaluated") for run in runs):
        raise RunError(
            f"{out} already holds a trained SAE; pass --overwrite or choose another --out"
        )


def not_an_sae(path: Path) -> str:
    """Why a folder without cfg.json is not an SAE, and what to do with it instead."""
    what = describe(path)
    if (path / CHECKPOINT).is_file():
        return (
            f"{path} holds an interrupted training ({CHECKPOINT}, no SAE yet): finish it with "
            f"the same saelab train command plus --resume"
        )
    if what == "an activation cache":
        return f"{path} is an activation cache, not an SAE (pass it with --activations)"
    if what == "a sweep":
        runs = sorted(p.name for p in path.iterdir() if (p / CFG).is_file())
        return f"{path} is a sweep, not an SAE: pass one of its runs ({', '.join(runs[:3])}, ...)"
    return f"{path} has no {CFG}: not an SAE directory of a known format ({what})"


def check_output_folder(out: Path, sae_dir: Path) -> None:
    """An evaluation of the SAE in `sae_dir` may write into `out` unless `out` holds another
    SAE, a cache or a sweep (its eval.json and plots would then describe the wrong SAE)."""
    out = Path(out)
    if out.is_dir() and out.resolve() != Path(sae_dir).resolve():
        what = describe(out)
        if what not in ("a folder", "an empty folder"):
            raise RunError(
                f"--out {out} holds {what}; the evaluation of {sae_dir} would be written over "
                "it: choose a new or empty folder"
            )


def clear(run: Path) -> None:
    """Remove the files saelab wrote for an earlier SAE in `run` (and nothing else)."""
    for name in FILES:
        (run / name).unlink(missing_ok=True)
    shutil.rmtree(run / EVAL_RESULTS, ignore_errors=True)


@contextmanager
def locked(folder: str | Path):
    """Hold `folder` (created if missing) for this process: a second saelab writing into it is
    refused, naming this process, until the work ends. A lock left by a process that no longer
    runs is taken over."""
    folder = Path(folder)
    for path in (folder, *folder.parents):
        if path.exists() and not path.is_dir():
            raise RunError(f"--out {folder}: {path} is a file, not a directory")
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            holder = _lock_holder(lock)
            if holder is not None:
                raise RunError(
                    f"{folder} is in use by saelab process {holder} ({lock}); wait for it to "
                    "finish or choose another --out"
                ) from None
            lock.unlink(missing_ok=True)
    else:
        raise RunError(f"cannot take the lock {lock}")
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{os.getpid()}\n")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _lock_holder(lock: Path) -> int | None:
    """The pid in a lock file if that process still runs, else None."""
    try:
        pid = int(lock.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


@contextmanager
def removed_if_failed(out: str | Path | None, current=lambda: None):
    """Run work that writes into `out` (or into current(), which the work may set); if it fails
    and the directory did not exist before and holds nothing to keep (no checkpoint to resume,
    no trained SAE, no cache shard), remove it: a failed command leaves no half-made run or
    cache behind, and never removes a finished artifact, nor a folder another saelab process
    holds (locked): a command refused by that lock leaves the other's folder alone."""
    existed = out is not None and Path(out).exists()
    try:
        yield
    except BaseException:
        path = current() or out
        held = path is not None and _lock_holder(Path(path) / LOCK) not in (None, os.getpid())
        if path is not None and not existed and not held and Path(path).is_dir():
            if not any(
                any(Path(path).rglob(pattern)) for pattern in (CHECKPOINT, WEIGHTS, CACHE_SHARDS)
            ):
                shutil.rmtree(path, ignore_errors=True)
        raise


METRICS = ("nmse", "fvu", "explained_variance", "mse", "l0", "ce_degradation", "kl_div")


def read_eval(run: Path) -> dict | None:
    """run/eval.json (None if there is none), checked before anyone uses it: plots an object of
    file names in the run, n_tokens an integer, each headline metric (METRICS) a number or
    null."""
    file = Path(run) / EVAL
    if not file.is_file():
        return None
    results = read_json_object(file, RunError)
    present = [key for key in METRICS if key in results]
    check_fields(
        results,
        str(file),
        RunError,
        optional=("plots", "n_tokens", *present),
        plots=dict,
        n_tokens=int,
        **dict.fromkeys(present, (float, None)),
    )
    names = list(results.get("plots", {}).values())
    if not all(isinstance(name, str) and name and Path(name).name == name for name in names):
        raise RunError(f"{file}: plots must map plot names to file names in {run}")
    return results


def write_train_config(run: Path, train_cfg) -> None:
    (Path(run) / TRAIN_CONFIG).write_text(json.dumps(train_cfg.to_dict(), indent=2) + "\n")


def training_dead(history: list[dict]) -> dict:
    """From a run's history (read_history): dead_fraction, the latents that did not fire in the
    last dead_window_tokens training tokens at the last record; {} for a run without one."""
    last = history[-1] if history else {}
    return {key: last[key] for key in ("dead_fraction", "dead_window_tokens") if key in last}


def read_history(run: Path) -> list[dict]:
    """The records of run/history.jsonl, each an object with an integer step and numbers (or
    null) for its metrics; a last line cut off by an interruption is skipped, any other damage
    is a RunError naming the file and line."""
    path = Path(run) / HISTORY
    try:
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    except UnicodeDecodeError:
        raise RunError(f"{path} is not text (damaged?)") from None
    records = []
    for n, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):
                continue
            raise RunError(f"{path}:{n} is not valid JSON (damaged?)") from None
        ok = isinstance(record, dict) and is_kind(record.get("step"), int) and record["step"] >= 0
        if not ok or not all(
            is_kind(record[key], (float, None)) for key in NUMERIC if key in record
        ):
            raise RunError(
                f"{path}:{n} is not a history record (an object with an integer step and numeric "
                f"{', '.join(NUMERIC)})"
            )
        records.append(record)
    return records


def history_curve(run: Path, key: str) -> tuple[list[int], list[float]]:
    """(training tokens, `key`) over the records of a run's history that have `key`; empty
    lists without any."""
    records = [r for r in read_history(run) if key in r]
    return [r["tokens"] for r in records], [r[key] for r in records]


NUMERIC = ("tokens", "loss", "l0", "lr", "dead_fraction", "dead_window_tokens")
