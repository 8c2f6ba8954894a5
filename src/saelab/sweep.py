"""Sweeps: a grid of SAEs trained on the same batches, each fully evaluated, one results table
and Pareto plots.

A grid is the product of its axes. Every point has an architecture, an expansion factor
(d_sae = expansion * d_in), an input scaling, a seed and one sparsity knob, a setting that the
architecture names (Architecture.knobs: k for topk/batchtopk, the target L0 k or
`l0_coefficient` for jumprelu, `l1_coefficient` for relu, `afa_coefficient` for topafa); a
grid may also vary any other setting of its architectures (topafa_recipe, jumprelu_bandwidth,
aux_k, ...), which then appears in the point's name where it is not the default. A sweep is
the union of one or more grids (several `[[grid]]` tables in a TOML file), so, say, the
input-scaling axis can cover only topk and batchtopk.

On a transcoder's data (--target-site: rows of its input x and target y side by side) the
`kind` axis puts SAEs, transcoders and skip transcoders of one block on one figure: `sae` (an
autoencoder of the target y, as the skip-transcoder paper compares them), `transcoder` and
`skip_transcoder` (y from x); there every point names its kind, which its name carries, and
all are judged on the same target.

A sweep directory OUT holds one run per point (OUT/<point name>/, as `saelab train` writes),
`results.csv` and `results.json` (one row per point), the Pareto plots (seed means with error
bars when a configuration has several seeds, whose means and spreads are in `summary.csv`) and,
with held-out curves (TrainConfig.eval_every_tokens), `curves_nmse.png`. Running the same
sweep again skips finished points, evaluates trained ones and resumes interrupted ones from
their checkpoints.
"""

from __future__ import annotations

import csv
import json
import re
import statistics
from dataclasses import asdict, dataclass, fields, replace
from itertools import product
from pathlib import Path

import tomllib
import torch
from tqdm.auto import tqdm

from . import rundir
from .checks import check_choice, check_integer
from .config import (
    DEFAULT_ARCH,
    DEFAULT_EXPANSION,
    DEFAULT_INPUT_SCALING,
    INPUT_SCALINGS,
    TRANSCODER_INPUT_SCALING,
    SAEConfig,
    TrainConfig,
)
from .errors import ConfigError
from .eval.plots import curve_plot, pareto_plot
from .eval.registry import (
    EVALUATIONS,
    EvalContext,
    check_context,
    evaluate_with,
    evaluations,
    read_results,
    up_to_date,
)
from .eval.saebench.output import flat_metrics
from .io.jsonfile import read_json_object
from .sae.architecture import setting_names
from .sae.model import SAE
from .sae.registry import ARCHITECTURES, architecture
from .train.checkpoint import load_checkpoint
from .train.loop import NON_RESULT_KEYS, first_difference, train_many

RESULTS = ("results.csv", rundir.SWEEP_RESULTS)
KINDS = ("sae", "transcoder", "skip_transcoder")  # on a transcoder's data (see above)
SUMMARY, CURVES = "summary.csv", "curves_nmse.png"
# (metric in eval.json, axis label, file) of the Pareto plots; x is always l0
PARETO = (
    ("nmse", "normalized MSE", "pareto_nmse.png"),
    ("ce_degradation", "CE degradation (nats)", "pareto_ce.png"),
    ("explained_variance", "explained variance", "pareto_ev.png"),
    ("mse", "MSE ||x - x_hat||^2 per token", "pareto_mse.png"),
)


def knob_label(knob: str) -> str:
    """The format of a knob's value in a point's name (from its settings field: k{}, l1-{:g})."""
    for arch in ARCHITECTURES.values():
        for f in fields(arch.settings):
            if f.name == knob and f.metadata.get("label"):
                return f.metadata["label"]
    return knob + "-{}"


def setting_default(f):
    """The command line's default of a settings field: its cli_default, else the dataclass's."""
    return f.default if f.metadata["cli_default"] is None else f.metadata["cli_default"]


def default_axes() -> dict[str, list]:
    """Every axis a grid may name, with its default: the knobs of all architectures take their
    settings' defaults (setting_default; none for a knob without a default)."""
    axes = {
        "arch": [DEFAULT_ARCH],
        "expansion": [DEFAULT_EXPANSION],
        "seed": [0],
        "input_scaling": [DEFAULT_INPUT_SCALING],
        "kind": [None],
    }
    for arch in ARCHITECTURES.values():
        defaults = {f.name: setting_default(f) for f in fields(arch.settings)}
        for knob in arch.knobs:
            axes.setdefault(knob, [] if defaults[knob] is None else [defaults[knob]])
    for name in variant_settings():
        axes.setdefault(name, [])
    return axes


def variant_settings() -> dict[str, set[str]]:
    """The architectures' other settings (topafa_recipe, jumprelu_bandwidth, aux_k, ...), which
    a grid may also vary: {setting: the architectures that take it}. A point names a value other
    than the setting's default (topafa-...-authors, jumprelu-...-bw0.001; see variant_label)."""
    knobs = {knob for spec in ARCHITECTURES.values() for knob in spec.knobs}
    owners: dict[str, set[str]] = {}
    for arch in ARCHITECTURES.values():
        for f in fields(arch.settings):
            if f.name not in knobs:
                owners.setdefault(f.name, set()).add(arch.name)
    return owners


def variant_label(setting: str, value) -> str:
    """A variant's part of a point's name: a choice by its value (authors), another setting by
    its label (bw{:g}) or its name (aux_k-512)."""
    for arch in ARCHITECTURES.values():
        for f in fields(arch.settings):
            if f.name == setting:
                if f.metadata.get("choices"):
                    return str(value)
                return (f.metadata.get("label") or setting + "-{}").format(value)
    raise ConfigError(f"unknown setting {setting}")


@dataclass(frozen=True)
class Point:
    """One SAE of a sweep: its architecture's sparsity knob (a setting) and its value."""

    arch: str
    expansion: int
    input_scaling: str
    seed: int
    knob: str | None = None
    value: float | int | None = None
    variant: tuple[tuple[str, object], ...] = ()  # (setting, value) of variant_settings
    kind: str | None = None  # on a transcoder's data: one of KINDS

    @property
    def name(self) -> str:
        sparsity = knob_label(self.knob).format(self.value) if self.knob else "default"
        variant = "".join(f"-{variant_label(name, value)}" for name, value in self.variant)
        kind = f"-{self.kind}" if self.kind else ""
        return (
            f"{self.arch}-{sparsity}{variant}{kind}-x{self.expansion}-{self.input_scaling}"
            f"-s{self.seed}"
        )

    def row(self) -> dict:
        """The point as columns of the results table (the knob under its own name)."""
        row = {
            "arch": self.arch,
            "expansion": self.expansion,
            "input_scaling": self.input_scaling,
            "seed": self.seed,
        }
        row.update({self.knob: self.value} if self.knob else {}, **dict(self.variant))
        return {**row, **({"kind": self.kind} if self.kind else {})}

    def sae_config(self, d_in: int, d_out: int | None = None, **options) -> SAEConfig:
        """The SAEConfig of this point; `options` sets other settings (aux_k, metadata, ...),
        each only for the architectures that take it. d_out: the target's width on a
        transcoder's data (a `sae` point is then an autoencoder of the target)."""
        if d_out is not None and self.kind == "sae":
            d_in, d_out = d_out, None
            meta = dict(options.get("metadata") or {})
            if "target_site" in meta:  # it reads and writes the target's hook point
                meta.update(layer=meta.pop("target_layer"), site=meta.pop("target_site"))
            options = {**options, "metadata": meta}
        spec = architecture(self.arch)
        takes = set(setting_names(spec.settings)) - set(spec.knobs)
        settings = {key: value for key, value in options.items() if key in takes}
        knob = {self.knob: self.value} if self.knob else {}
        settings.update(self.variant)
        return SAEConfig(
            arch=self.arch,
            d_in=d_in,
            d_sae=self.expansion * d_in,
            input_scaling=self.input_scaling,
            metadata=options.get("metadata"),
            d_out=d_out,
            skip=d_out is not None and self.kind == "skip_transcoder",
            **settings,
            **knob,
        )


def expand(axes: dict) -> list[Point]:
    """The points of one grid; `axes` maps axis names to lists (missing axes take default_axes).
    Each architecture varies the first of its knobs whose axis is not empty."""
    defaults = default_axes()
    unknown = sorted(set(axes) - set(defaults))
    if unknown:
        raise ConfigError(
            f"unknown sweep axis {', '.join(unknown)}; axes are {', '.join(defaults)}"
        )
    all_knobs = {knob for spec in ARCHITECTURES.values() for knob in spec.knobs}
    given = [name for name in axes if name in all_knobs or name in variant_settings()]
    given_axes = set(axes)
    axes = {
        **defaults,
        **{key: value if isinstance(value, list) else [value] for key, value in axes.items()},
    }
    for arch in axes["arch"]:
        architecture(arch)  # a ConfigError names an unknown one
    for name in ("expansion", "seed"):
        for value in axes[name]:
            check_integer(name, value, low=1 if name == "expansion" else 0)
    for scaling in axes["input_scaling"]:
        if scaling not in INPUT_SCALINGS:
            raise ConfigError(
                f"unknown input_scaling {scaling!r}; choose from {', '.join(INPUT_SCALINGS)}"
            )
    for kind in axes["kind"]:
        if kind is not None:
            check_choice("kind", kind, KINDS)
    points = []
    for arch, expansion, kind, scaling, seed in product(
        axes["arch"], axes["expansion"], axes["kind"], axes["input_scaling"], axes["seed"]
    ):
        if kind is not None and "input_scaling" not in given_axes:
            scaling = TRANSCODER_INPUT_SCALING  # a transcoder's default, for every kind alike
        base = Point(
            arch=arch, expansion=int(expansion), input_scaling=scaling, seed=int(seed), kind=kind
        )
        knob = next((name for name in architecture(arch).knobs if axes[name]), None)
        values = axes[knob] if knob else [None]
        own = [name for name, owners in variant_settings().items() if arch in owners and axes[name]]
        spec = {f.name: f for f in fields(architecture(arch).settings)}
        defaults = {name: f.default for name, f in spec.items()}
        for name in own:
            for choice in axes[name]:
                if spec[name].metadata.get("choices"):
                    check_choice(name, choice, spec[name].metadata["choices"])
        for value, chosen in product(values, product(*(axes[name] for name in own))):
            variant = tuple(
                (name, choice)
                for name, choice in zip(own, chosen)
                if choice != defaults[name]  # the default keeps the point's name as it was
            )
            points.append(replace(base, knob=knob, value=value, variant=variant))
    used = {p.knob for p in points}
    used |= {name for name, owners in variant_settings().items() if owners & set(axes["arch"])}
    unused = [name for name in given if name not in used]
    if unused:
        takes = "; ".join(f"{a}: {', '.join(architecture(a).knobs)}" for a in axes["arch"])
        raise ConfigError(
            f"{', '.join(unused)} would be ignored: no architecture of this grid varies it "
            f"(each varies the first of its knobs that is given; {takes})"
        )
    return points


def union(grids: list[dict]) -> list[Point]:
    """The points of several grids, each once, in order of first appearance. A grid's `evals`
    key is not an axis (see grid_evals)."""
    return list(dict.fromkeys(point for grid in grids for point in expand(_axes(grid))))


def _axes(grid: dict) -> dict:
    return {key: value for key, value in grid.items() if key != "evals"}


def grid_evals(grids: list[dict], evals: list[str] = ()) -> dict[Point, list[str]]:
    """The evaluations of every point: `evals` (the command line's) for all, plus those a grid
    names in its `evals` key for its own points (a grid may repeat points of another just to
    evaluate them further)."""
    wanted = {point: list(evals) for point in union(grids)}
    for grid in grids:
        names = grid.get("evals", [])
        names = [names] if isinstance(names, str) else names
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise ConfigError(f"evals must be a name or a list of names, got {names!r}")
        evaluations(names)
        for point in expand(_axes(grid)):
            wanted[point] = list(dict.fromkeys([*wanted[point], *names]))
    return wanted


def read_grid_file(path: str | Path) -> list[dict]:
    """The grids of a TOML file: top-level axes apply to every [[grid]] table; with no [[grid]]
    table the top level is the one grid.

        expansion = 8
        [[grid]]
        arch = ["topk", "batchtopk"]
        k = [16, 32, 64]
        input_scaling = ["per_token", "expected_norm"]
        [[grid]]
        arch = "relu"
        l1_coefficient = [2, 5]
        [[grid]]                      # also run SAEBench's evaluations on these points
        arch = ["topk", "batchtopk"]
        k = 32
        evals = ["absorption", "sparse_probing"]
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep file {path} does not exist")
    try:
        spec = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML: {err}") from None
    grids = spec.pop("grid", [{}])
    if not isinstance(grids, list) or not all(isinstance(g, dict) for g in grids):
        raise ConfigError(f"{path}: 'grid' must be an array of tables ([[grid]])")
    grids = [{**spec, **grid} for grid in grids]
    for i, grid in enumerate(grids, 1):
        try:
            expand(_axes(grid))
            grid_evals([grid])
        except ConfigError as err:
            raise ConfigError(f"{path}, grid {i}: {err}") from None
    return grids


def check_out(out: Path) -> None:
    """A sweep directory holds the sweep's tables and plots and one saelab run per point;
    anything else in it (another library's SAE, a cache, a run at its top, other files) is
    refused before any work."""
    out = Path(out)
    if not out.is_dir():
        return
    ours = {*RESULTS, SUMMARY, CURVES, *(name for *_, name in PARETO), rundir.LOCK}
    points = ("a saelab run", "an empty folder")
    found = {entry: rundir.describe(entry) for entry in sorted(out.iterdir())}
    others = [
        f"{entry.name} ({what})"
        for entry, what in found.items()
        if entry.name not in ours and not (entry.is_dir() and what in points)
    ]
    what = rundir.describe(out)
    if what not in ("a folder", "an empty folder", "a sweep"):
        others = [f"{what}: {', '.join(others)}"]
    if others:
        raise rundir.RunError(
            f"--out {out} is not free for a sweep, it holds: {', '.join(others)}; choose another "
            "--out"
        )


def _check_settings(run: Path, cfg: TrainConfig) -> None:
    """A finished point may be reused only if it was trained with the same settings."""
    path = run / rundir.TRAIN_CONFIG
    if not path.is_file():
        return
    changed = first_difference(read_json_object(path), cfg.to_dict(), NON_RESULT_KEYS)
    if changed:
        raise ConfigError(
            f"{run} was trained with different settings than this sweep: {changed}; "
            "use another --out or the same settings"
        )


def run_sweep(
    points: list[Point],
    train_source,
    eval_source,
    out: str | Path,
    train_cfg: TrainConfig,
    sae_options: dict | None = None,
    context: EvalContext | None = None,
    device: str = "cpu",
    evals: list[str] | dict[Point, list[str]] = ("core",),
    configs: dict | None = None,
    d_out: int | None = None,
) -> list[dict]:
    """Train and evaluate every point not yet done in `out`, then write the results table and the
    Pareto plots. Points sharing a seed (and checkpoint step) train together on the same batches.
    `train_cfg` gives the shared training settings (its out_dir and resume are set per point).
    Every point gets the core evaluation on `eval_source`, with CE/KL when `context` holds a
    model and held-out contexts; `evals` beyond core (eval/registry.py), for every point or per
    point (grid_evals), run with `context` and their `configs` ({name: config}, default
    settings where missing) for every point whose result file is missing or was computed with
    other settings; their metrics join its row. d_out: the sources hold a transcoder's x and
    y (of width d_out) side by side (SideBySide), and the points' kinds say what each learns."""
    if not points:
        raise ConfigError("the sweep grid is empty")
    kinds = {point.kind for point in points} - {None}
    if kinds and d_out is None:
        raise ConfigError(
            f"kind {', '.join(sorted(kinds))} compares SAEs and transcoders of one block: it "
            "needs a transcoder's data (--target-site, a cache of both hook points)"
        )
    if d_out is not None and any(point.kind is None for point in points):
        raise ConfigError(
            "on a transcoder's data every point names its kind: --kind transcoder, "
            "skip_transcoder and/or sae (an SAE of the target), or kind = [...] in a grid"
        )
    evals = evals if isinstance(evals, dict) else {point: list(evals) for point in points}
    configs = configs or {}
    context = replace(context or EvalContext(), data=eval_source)
    check_context(evaluations(name for names in evals.values() for name in names), context)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sae_options = sae_options or {}
    runs = {point: out / point.name for point in points}
    cfgs = {
        point: replace(train_cfg, seed=point.seed, out_dir=str(run), resume=False)
        for point, run in runs.items()
    }
    states = {point: rundir.state(run) for point, run in runs.items()}
    for point, state in states.items():
        if state != "new":
            _check_settings(runs[point], cfgs[point])
    core = EVALUATIONS["core"]
    d_in = train_source.d_in - (d_out or 0)
    # an SAE of the target reads the target's columns, its evaluation the target's cache and
    # the model spliced at the target's hook point
    target_columns = torch.arange(d_in, train_source.d_in) if d_out else None
    target_context = context
    if d_out and kinds & {"sae"}:
        target = eval_source.caches[list(eval_source.caches)[1]]
        target_context = replace(
            context, data=target, layer=target.spec.layer, site=target.spec.site
        )

    def context_of(point: Point) -> EvalContext:
        return target_context if point.kind == "sae" else context

    def evaluate(point: Point, sae: SAE) -> None:
        history = rundir.read_history(runs[point])
        recorded = {
            "d_in": sae.cfg.d_in,
            "d_sae": sae.cfg.d_sae,
            "point": asdict(point),
            "train_tokens": history[-1]["tokens"] if history else 0,
            **rundir.training_dead(history),
        }
        here = replace(context_of(point), out_dir=runs[point], extra=recorded)
        evaluate_with(core, sae, here, configs.get("core"))

    groups: dict[tuple[int, int], list[Point]] = {}
    for point in points:
        if states[point] in ("new", "interrupted"):
            step = load_checkpoint(runs[point])["step"] if states[point] == "interrupted" else 0
            groups.setdefault((point.seed, step), []).append(point)
    done = sum(state == "evaluated" for state in states.values())
    print(
        f"sweep of {len(points)} SAEs in {out}: {done} done, "
        f"{sum(s == 'trained' for s in states.values())} to evaluate, "
        f"{sum(len(g) for g in groups.values())} to train in {len(groups)} pass(es) over the data"
    )

    def evaluate_trained() -> None:
        trained = [p for p in points if states[p] == "trained"]
        for point in tqdm(trained, desc="evaluate", unit="SAE", disable=not train_cfg.progress):
            evaluate(point, SAE.load(runs[point], device=device))
            states[point] = "evaluated"

    evaluate_trained()
    # the smallest passes first, each evaluated at once: results arrive early, an interruption
    # keeps them
    for (seed, step), group in sorted(groups.items(), key=lambda item: len(item[1])):
        saes = [SAE(p.sae_config(d_in, d_out, **sae_options), seed=seed).to(device) for p in group]
        group_cfgs = [replace(cfgs[p], resume=step > 0) for p in group]
        heldout = eval_source if train_cfg.eval_every_tokens else None
        columns = [target_columns if p.kind == "sae" else None for p in group]
        train_many(saes, train_source, group_cfgs, heldout=heldout, columns=columns)
        for point in group:
            states[point] = "trained"
        evaluate_trained()
    for point in points:
        done = read_results(runs[point])
        here = replace(context_of(point), out_dir=runs[point])
        for evaluation in evaluations(evals.get(point, [])):
            if evaluation.name == "core":
                continue
            cfg = configs.get(evaluation.name) or evaluation.config()
            if not up_to_date(evaluation, done.get(evaluation.name), here, cfg):
                evaluate_with(evaluation, SAE.load(runs[point]), here, cfg)
    rows = [
        result_row({**rundir.read_eval(runs[p]), **flat_metrics(read_results(runs[p]))}, p)
        for p in points
    ]
    write_results(rows, out, {p.name: heldout_curve(runs[p]) for p in points})
    return rows


def heldout_curve(run: Path) -> tuple[list[int], list[float]]:
    """(training tokens, held-out NMSE) of a run trained with eval_every_tokens; empty otherwise."""
    return rundir.history_curve(run, "heldout_nmse")


def without_seed(name: str) -> str:
    """A point's name without its seed: the name of its configuration."""
    return re.sub(r"-s\d+$", "", name)


def seed_summary(rows: list[dict]) -> list[dict]:
    """One row per configuration (points that differ only in seed): `seeds`, `n_seeds`, every
    value shared by its runs, and for every other number its mean and its sample standard
    deviation `<key>_std` (ddof 1)."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(without_seed(row["name"]), []).append(row)
    summary = []
    for name, group in groups.items():
        entry = {
            "name": name,
            "seeds": " ".join(str(r["seed"]) for r in group),
            "n_seeds": len(group),
        }
        keys = dict.fromkeys(key for row in group for key in row if key not in ("name", "seed"))
        for key in keys:
            values = [row[key] for row in group if key in row]
            if all(value == values[0] for value in values) or not all(
                isinstance(v, (int, float)) for v in values
            ):
                entry[key] = values[0]
            else:
                entry[key] = statistics.fmean(values)
                entry[key + "_std"] = statistics.stdev(values)
        summary.append(entry)
    return summary


def result_row(results: dict, point: Point) -> dict:
    """One row of the results table: the point, then every scalar of its eval.json."""
    row = {"name": point.name, **point.row()}
    row.update(
        {
            key: value
            for key, value in results.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in row
        }
    )
    return row


def write_csv(rows: list[dict], path: Path) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_results(
    rows: list[dict], out: Path, curves: dict[str, tuple[list, list]] | None = None
) -> None:
    """results.csv, results.json and the Pareto plots (x = L0, one line per architecture). With
    several seeds of a configuration also summary.csv (seed_summary), and the plots show seed
    means with error bars. With held-out curves (`curves`: point name -> (tokens, NMSE)),
    curves_nmse.png: held-out NMSE against training tokens, one line per configuration."""
    write_csv(rows, out / RESULTS[0])
    (out / RESULTS[1]).write_text(json.dumps(rows, indent=1) + "\n")
    summary = seed_summary(rows)
    if len(summary) < len(rows):
        write_csv(summary, out / SUMMARY)
    varied = [
        key
        for key in ("kind", "input_scaling", "expansion")
        if len({row.get(key) for row in rows}) > 1
    ]
    for metric, label, name in PARETO:
        if any(metric in row for row in rows):
            pareto_plot(summary, metric, label, out / name, series=["arch", *varied])
    by_config: dict[str, list] = {}
    for point_name, curve in (curves or {}).items():
        if curve[0]:
            by_config.setdefault(without_seed(point_name), []).append(curve)
    if by_config:
        curve_plot(by_config, out / CURVES, "held-out NMSE", log_y=True)
