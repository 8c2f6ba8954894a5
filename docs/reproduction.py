"""The numbers and figures of docs/REPRODUCTION.md, from the sweep of docs/reproduction.toml.

    saelab sweep --config docs/reproduction.toml --tokens 2097152 --eval-every 262144 \\
        --checkpoint-every 262144 --downstream-contexts 64 --out runs/reproduction
    python docs/reproduction.py runs/reproduction

The sweep's evaluated runs are first copied, without their weights, into docs/reproduction_runs/
(the archive: what this page reads of each run, plus the sweep's invocations), and the page is
built from the archive: the sweep takes longer than one working session, so it runs in parts
(one pass of the grid at a time, possibly on different days or machines) and the archive, kept
in the repository, collects them (`--archive-only` adds a pass and leaves the page as it is).
`python docs/reproduction.py` alone rebuilds from it.

Writes docs/reproduction_results.csv (every run with its seed), docs/figures/repro_*.png and
the generated parts of docs/REPRODUCTION.md, each between `<!-- begin NAME -->` and
`<!-- end NAME -->`; the prose around them is written by hand from what they show.

Seed statistics: TopK and BatchTopK of one seed share their initial decoder seed and every
training batch, so their differences are paired by seed: mean ± sample std of the per-seed
differences and a paired t-test (scipy.stats.ttest_rel, two-sided). "Beyond seed noise" means
p < 0.05.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from scipy import stats

from saelab import rundir
from saelab.data.cache import CacheSpec
from saelab.data.pipeline import cache_dir
from saelab.eval.plots import draw_curves, pareto_plot, plt
from saelab.eval.registry import read_results
from saelab.eval.saebench.output import flat_metrics
from saelab.io.jsonfile import read_json_object
from saelab.sweep import (
    heldout_curve,
    read_grid_file,
    result_row,
    seed_summary,
    union,
    without_seed,
    write_csv,
)

DOCS = Path(__file__).resolve().parent
FIGURES = DOCS / "figures"
DOCUMENT = DOCS / "REPRODUCTION.md"
TOPK_FAMILY = ("topk", "batchtopk", "matryoshka")
COLORS = {
    "topk": "tab:blue",
    "batchtopk": "tab:orange",
    "matryoshka": "tab:green",
    "jumprelu": "tab:red",
    "topafa": "tab:purple",
    "gated": "tab:brown",
    "relu": "tab:gray",
}
SIGNIFICANCE = 0.05
CACHE_ROOT = Path("cache")
ARCHIVE = DOCS / "reproduction_runs"
# what the page reads of a run (besides eval_results/*.json); the weights stay in the sweep
ARCHIVED = (rundir.CFG, rundir.TRAIN_CONFIG, rundir.HISTORY, rundir.EVAL, rundir.PLOTS["zf"])
# the settings of cfg.json a row carries besides the grid's (which name only what they set)
SETTINGS = (
    "d_sae",
    "k",
    "l0_coefficient",
    "jumprelu_bandwidth",
    "afa_coefficient",
    "topafa_recipe",
)
NOT_YET = "_No run of this table is in the archive yet._"
INVOCATIONS = "sweep.json"  # the archive's invocations of the sweep and its cache's size


def archive_runs(sweep: Path, archive: Path, config: Path) -> list[str]:
    """Copy ARCHIVED of every evaluated run of `config` in `sweep` into `archive`/<name>/ (an
    archived run is replaced by the sweep's copy), and merge the sweep's invocations (its log
    beside it) into `archive`/INVOCATIONS: one per start and config, to its latest stop (a pass
    still running when archived is extended, not counted again). Returns the names copied."""
    archive.mkdir(parents=True, exist_ok=True)
    copied = []
    for point in union(read_grid_file(config)):
        run = sweep / point.name
        if rundir.state(run) != "evaluated":
            continue
        target = archive / point.name
        shutil.rmtree(target, ignore_errors=True)
        (target / rundir.EVAL_RESULTS).mkdir(parents=True)
        for name in ARCHIVED:
            if (run / name).is_file():
                shutil.copy2(run / name, target / name)
        for result in (run / rundir.EVAL_RESULTS).glob("*.json"):
            shutil.copy2(result, target / rundir.EVAL_RESULTS / result.name)
        copied.append(point.name)
    known = read_archive_facts(archive)
    stops: dict[tuple[str, str], str] = {}  # (start, config) -> the latest stop seen
    for start, stop, config in [
        *known.get("invocations", []),
        *invocations(sweep.parent / (sweep.name + ".log"), sweep),
    ]:
        stops[start, config] = max(stop, stops.get((start, config), stop))
    known["invocations"] = sorted([start, stop, config] for (start, config), stop in stops.items())
    if (cached := training_cache_tokens(sweep)) is not None:
        known["training_cache_tokens"] = cached
    (archive / INVOCATIONS).write_text(json.dumps(known, indent=1) + "\n")
    return copied


def read_archive_facts(archive: Path) -> dict:
    path = archive / INVOCATIONS
    return json.loads(path.read_text()) if path.is_file() else {}


def load_rows(sweep: Path, config: Path = DOCS / "reproduction.toml") -> list[dict]:
    """The results rows (as the sweep's results.json has them) of every evaluated point of
    `config`, in its order, from the run folders of a sweep or the archive."""
    rows = []
    for point in union(read_grid_file(config)):
        run = sweep / point.name
        if (run / rundir.EVAL).is_file():
            row = result_row(
                {**read_json_object(run / rundir.EVAL), **flat_metrics(read_results(run))}, point
            )
            cfg = read_json_object(run / rundir.CFG)
            settings = {k: v for k, v in cfg.items() if k in SETTINGS and v is not None}
            rows.append({**settings, **row, "method": method(cfg)})
    if not rows:
        raise SystemExit(f"no evaluated SAE of {config} in {sweep}")
    return rows


def method(cfg: dict) -> str:
    """The method a run trains (its line in the figures and tables): the architecture, with
    JumpReLU's two modes (saelab's target-L0 controller, the paper's fixed λ) and top-AFA's two
    recipes (the authors', saelab's variant) told apart. `cfg`: the run's cfg.json."""
    if cfg["arch"] == "jumprelu":
        return "jumprelu target L0" if cfg.get("k") else "jumprelu fixed λ"
    if cfg["arch"] == "topafa":
        return "topafa authors" if cfg.get("topafa_recipe") == "authors" else "topafa variant"
    return cfg["arch"]


def select(rows: list[dict], **where) -> list[dict]:
    """The rows whose columns equal every value in `where`."""
    return [row for row in rows if all(row.get(key) == value for key, value in where.items())]


def fmt(value: float, digits: int = 4) -> str:
    return (
        ""
        if value is None or (isinstance(value, float) and np.isnan(value))
        else f"{value:.{digits}g}"
    )


def l0_text(l0: float) -> str:
    """An L0 as a table writes it: whole latents from 100 on, else 3 significant digits."""
    return f"{l0:.0f}" if l0 >= 100 else fmt(l0, 3)


def spread(values: list[float], digits: int = 4) -> str:
    """'mean ± std' (sample std) of per-seed values, or the value alone for one seed."""
    if not values:
        return ""
    if len(values) == 1:
        return fmt(values[0], digits)
    return f"{fmt(float(np.mean(values)), digits)} ± {fmt(float(np.std(values, ddof=1)), 2)}"


# ---- figures ---------------------------------------------------------------------------------


def plot_against_k(rows: list[dict], metric: str, label: str, path: Path) -> None:
    """`metric` against k for the top-k family, one line per (arch, expansion): seed means with
    sample-std error bars (the BatchTopK paper's Figures 1-2, x = k)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for arch in TOPK_FAMILY:
        for expansion, marker in ((8, "o"), (32, "s")):
            runs = [row for row in select(rows, arch=arch, expansion=expansion) if metric in row]
            ks = sorted({row["k"] for row in runs})
            if not ks:
                continue
            values = [[row[metric] for row in select(runs, k=k)] for k in ks]
            errors = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values]
            ax.errorbar(
                ks,
                [np.mean(v) for v in values],
                yerr=errors,
                marker=marker,
                capsize=3,
                lw=1.2,
                color=COLORS[arch],
                ls="-" if expansion == 8 else ":",
                label=f"{arch} x{expansion} ({seed_counts(ks, [len(v) for v in values])})",
            )
    ks = sorted({row["k"] for row in rows if row["arch"] in TOPK_FAMILY and metric in row})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set(
        xlabel="k (latents per token; BatchTopK: the batch mean)",
        ylabel=label,
        title=f"{label} vs k (mean ± std over seeds)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def seed_counts(ks: list[int], counts: list[int]) -> str:
    """How many seeds a line's points have: '3 seeds' or, where they differ, '3 seeds at k 16,
    32, 64; 1 at k 128, 256' (counts[i] seeds at ks[i])."""
    if len(set(counts)) == 1:
        return f"{counts[0]} seed{'s' * (counts[0] > 1)}"
    groups = {n: [str(k) for k, m in zip(ks, counts) if m == n] for n in counts}
    return "; ".join(
        f"{n}{' seeds' * (i == 0)} at k {', '.join(group)}"
        for i, (n, group) in enumerate(groups.items())
    )


def paired_gap_curves(sweep: Path, rows: list[dict]) -> dict[str, list[tuple[list, list]]]:
    """Per (k, expansion): the per-seed held-out NMSE gap BatchTopK - TopK against tokens."""
    gaps = {}
    for row in select(rows, arch="batchtopk"):
        twin = select(rows, arch="topk", k=row["k"], expansion=row["expansion"], seed=row["seed"])
        if not twin:
            continue
        tokens, batch = heldout_curve(sweep / row["name"])
        tokens_topk, topk = heldout_curve(sweep / twin[0]["name"])
        n = min(len(batch), len(topk))
        if n and tokens[:n] == tokens_topk[:n]:
            label = f"k={row['k']} x{row['expansion']}"
            gaps.setdefault(label, []).append((tokens[:n], list(np.subtract(batch[:n], topk[:n]))))
    return dict(sorted(gaps.items(), key=lambda item: (len(item[0]), item[0])))


def plot_training(sweep: Path, rows: list[dict], path: Path) -> None:
    """Left: held-out NMSE against training tokens, TopK and BatchTopK at k = 32 (x8 and x32).
    Right: the paired gap BatchTopK - TopK against tokens for every k and expansion."""
    curves = {}
    for expansion in (8, 32):
        for arch in ("topk", "batchtopk"):
            runs = [
                heldout_curve(sweep / row["name"])
                for row in select(rows, arch=arch, k=32, expansion=expansion)
            ]
            if runs := [run for run in runs if run[0]]:
                curves[f"{arch} k=32 x{expansion}"] = runs
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.4))
    draw_curves(left, curves, "held-out NMSE", log_y=True)
    draw_curves(
        right,
        paired_gap_curves(sweep, rows),
        "held-out NMSE, BatchTopK - TopK",
        title="BatchTopK - TopK, paired by seed (< 0: BatchTopK better)",
    )
    right.axhline(0, color="black", lw=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_l0_histograms(sweep: Path, rows: list[dict], path: Path) -> None:
    """Held-out tokens per L0 for BatchTopK at each k (seed 0, learned threshold)."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for row, color in zip(
        sorted(select(rows, arch="batchtopk", expansion=8, seed=0), key=lambda r: r["k"]),
        ("tab:blue", "tab:orange", "tab:green"),
    ):
        counts = np.asarray(
            json.loads((sweep / row["name"] / rundir.EVAL).read_text())["l0_histogram"], float
        )
        median = int(np.searchsorted(np.cumsum(counts), counts.sum() / 2))
        ax.step(
            np.arange(len(counts)),
            counts / counts.sum(),
            where="mid",
            color=color,
            label=f"k={row['k']}: mean {row['l0']:.1f}, median {median}",
        )
        ax.axvline(row["k"], color=color, ls="--", lw=0.8)
    ax.set_xlim(0, 2.5 * max(row["k"] for row in select(rows, arch="batchtopk", expansion=8)))
    ax.set(
        xlabel="active latents per held-out token (dashed: k; TopK would be a spike there)",
        ylabel="fraction of tokens",
        title="BatchTopK: L0 per token at inference (x8, seed 0)",
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_jumprelu_training(sweep: Path, rows: list[dict], path: Path) -> None:
    """Left: held-out L0 against training tokens for both JumpReLU modes (dashed: the
    controller's targets, shaded ±10%). Right: the controller's L0 multiplier λ (>= 0)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.4))
    for row in rows:
        if row["method"] == "jumprelu target L0":
            tokens, l0 = rundir.history_curve(sweep / row["name"], "heldout_l0")
            (line,) = left.plot(tokens, l0, marker="o", ms=3, label=f"target {row['k']}")
            left.axhline(row["k"], color=line.get_color(), ls="--", lw=0.8)
            left.axhspan(0.9 * row["k"], 1.1 * row["k"], color=line.get_color(), alpha=0.1)
            right.plot(
                *rundir.history_curve(sweep / row["name"], "l0_lambda"), label=f"target {row['k']}"
            )
        elif row["method"] == "jumprelu fixed λ":
            tokens, l0 = rundir.history_curve(sweep / row["name"], "heldout_l0")
            left.plot(
                tokens, l0, marker="s", ms=3, ls=":", label=f"fixed λ {row['l0_coefficient']:g}"
            )
    left.set_yscale("log")
    highest = max(np.max(line.get_ydata()) for line in left.get_lines())
    ticks = sorted({row["k"] for row in rows if row["method"] == "jumprelu target L0"})
    ticks += [10**n for n in range(2, 6) if 10**n <= highest]  # where the fixed-λ runs are
    left.set_yticks(ticks, [str(k) for k in ticks], minor=False)
    left.set_yticks([], minor=True)
    left.set(xlabel="training tokens", ylabel="held-out L0", title="JumpReLU: held-out L0")
    right.set(
        xlabel="training tokens",
        ylabel="λ (L0 multiplier)",
        title="saelab's controller: λ = max(0, λ + rate / d_in · (L0 / k - 1))",
    )
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def shade(rank: int, count: int, light: float, dark: float) -> float:
    """The colour-map position of the rank-th of `count` ordered lines, light to dark."""
    return light + (dark - light) * rank / max(count - 1, 1)


def plot_topafa_training(sweep: Path, rows: list[dict], path: Path) -> None:
    """Held-out L0 (left) and NMSE (right) against training tokens for both top-AFA recipes
    (purple: the authors', orange: the variant; darker: the larger AFA weight); TopK (seed 0,
    every k; dashed, darker for larger k) beside them on the right."""
    curves_l0, curves_nmse, styles = {}, {}, {}
    recipe_colors = {"topafa authors": plt.cm.Purples, "topafa variant": plt.cm.Oranges}
    weights = sorted({r["afa_coefficient"] for r in rows if r["method"] in recipe_colors})
    for row in rows:
        if row["method"] in recipe_colors:
            label = f"{row['method']} {row['afa_coefficient']:g}"
            curves_l0[label] = [rundir.history_curve(sweep / row["name"], "heldout_l0")]
            curves_nmse[label] = [heldout_curve(sweep / row["name"])]
            rank = weights.index(row["afa_coefficient"]), len(weights)
            styles[label] = {"color": recipe_colors[row["method"]](shade(*rank, 0.6, 0.9))}
    topk = sorted(select(rows, arch="topk", expansion=8, seed=0), key=lambda row: row["k"])
    for i, row in enumerate(topk):
        label = f"topk k={row['k']}"
        curves_nmse[label] = [heldout_curve(sweep / row["name"])]
        styles[label] = {"color": plt.cm.Greys(shade(i, len(topk), 0.35, 0.95)), "ls": "--"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.4))
    draw_curves(
        left, curves_l0, "held-out L0", title="top-AFA: the L0 it picks", log_y=True, styles=styles
    )
    draw_curves(right, curves_nmse, "held-out NMSE", log_y=True, styles=styles)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- tables ----------------------------------------------------------------------------------


def configuration_table(rows: list[dict]) -> str:
    """One line per configuration: seed means ± std of the headline metrics."""
    columns = (
        ("l0", "L0", 4),
        ("nmse", "NMSE", 4),
        ("fvu", "FVU", 3),
        ("ce_degradation", "CE deg.", 3),
        ("ce_loss_recovered", "CE rec.", 3),
        ("kl", "KL", 3),
        ("dead_fraction", "dead (training window)", 2),
        ("silent_fraction", "silent (held-out)", 2),
        ("f_tilde_over_z_median", "‖f~‖/‖z‖ med.", 3),
        ("eps_lbo_median", "eps_LBO med.", 2),
    )
    lines = [
        "| SAE | seeds | " + " | ".join(title for _, title, _ in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(without_seed(row["name"]), []).append(row)
    for name, group in groups.items():
        cells = [
            spread([row[key] for row in group if key in row], digits) for key, _, digits in columns
        ]
        lines.append(f"| {name} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired(
    rows: list[dict], metric: str, k: int, expansion: int
) -> tuple[list[float], float] | None:
    """Per-seed BatchTopK - TopK differences of `metric` and the paired t-test's p-value."""
    pairs = []
    for row in select(rows, arch="batchtopk", k=k, expansion=expansion):
        twin = select(rows, arch="topk", k=k, expansion=expansion, seed=row["seed"])
        if twin and metric in row and metric in twin[0]:
            pairs.append((row[metric], twin[0][metric]))
    if not pairs:
        return None
    batch, topk = map(np.asarray, zip(*pairs))
    p = float(stats.ttest_rel(batch, topk).pvalue) if len(pairs) > 1 else float("nan")
    return list(batch - topk), p


def verdict(differences: list[float], p: float) -> str:
    if len(differences) < 2:
        return "one seed: no test"
    if p < SIGNIFICANCE:
        return ("BatchTopK lower" if np.mean(differences) < 0 else "TopK lower") + f" (p = {p:.2g})"
    return f"not beyond seed noise (p = {p:.2g})"


def comparison_table(header: list[str], cells_of) -> str:
    """A table with one line per (expansion, k) that cells_of(k, expansion) answers with
    (seeds, cells) rather than None."""
    lines = [
        "| expansion | k | seeds | " + " | ".join(header) + " |",
        "|---" * (len(header) + 3) + "|",
    ]
    for expansion in (8, 32):
        for k in (16, 32, 64):
            if (found := cells_of(k, expansion)) is not None:
                lines.append(f"| {expansion} | {k} | {found[0]} | " + " | ".join(found[1]) + " |")
    return "\n".join(lines)


def batchtopk_vs_topk_table(rows: list[dict]) -> str:
    def cells_of(k, expansion):
        nmse, ce = paired(rows, "nmse", k, expansion), paired(rows, "ce_degradation", k, expansion)
        if nmse is None:
            return None
        cells = []
        for metric, result in (("nmse", nmse), ("ce_degradation", ce)):
            cells += [
                spread([r[metric] for r in select(rows, arch=arch, k=k, expansion=expansion)], 4)
                for arch in ("topk", "batchtopk")
            ]
            cells += [spread(result[0], 2), verdict(*result)] if result else ["", ""]
        return len(nmse[0]), cells

    return comparison_table(
        [
            "NMSE TopK",
            "NMSE BatchTopK",
            "NMSE diff.",
            "verdict",
            "CE deg. TopK",
            "CE deg. BatchTopK",
            "CE diff.",
            "verdict",
        ],
        cells_of,
    )


EXTRAPOLATE = np.log(1.1)  # topk_at extends TopK's curve by at most 10% in L0 beyond its last k


def log_l0_interp(
    points: list[tuple[float, float]], l0: float, extend: float = 0.0
) -> float | None:
    """The value at `l0` of points [(L0, value)] (distinct L0s): linear in log L0 between them,
    and along the end segment up to a factor exp(extend) beyond them; None farther out or with
    fewer than two points."""
    if len(points) < 2:
        return None
    x, y = map(np.asarray, zip(*sorted((np.log(a), b) for a, b in points)))
    u = np.log(l0)
    if not x[0] - extend <= u <= x[-1] + extend:
        return None
    i = int(
        np.clip(np.searchsorted(x, u) - 1, 0, len(x) - 2)
    )  # the segment containing u, or the end one
    return float(y[i] + (y[i + 1] - y[i]) * (u - x[i]) / (x[i + 1] - x[i]))


def seeded_ks(rows: list[dict], expansion: int) -> set[int]:
    """The k values TopK has in every one of its seeds at this expansion: the grid of the paired
    comparison with BatchTopK (TopK at larger k, seed 0 only, is there for top-AFA)."""
    runs = select(rows, arch="topk", expansion=expansion)
    seeds = {r["seed"] for r in runs}
    return {k for k in {r["k"] for r in runs} if {r["seed"] for r in select(runs, k=k)} == seeds}


def topk_at(rows: list[dict], metric: str, l0: float, seed: int, expansion: int) -> float | None:
    """TopK's `metric` at `l0` for one seed and expansion: linear in log L0 between its k points
    of the seeded grid (seeded_ks), and along the end segment up to 10% beyond them (BatchTopK's
    measured L0 is a few % off k)."""
    ks = seeded_ks(rows, expansion)
    runs = [r for r in select(rows, arch="topk", seed=seed, expansion=expansion) if r["k"] in ks]
    return log_l0_interp([(r["k"], r[metric]) for r in runs if metric in r], l0, EXTRAPOLATE)


def equal_l0_pairs(
    rows: list[dict], metric: str, k: int, expansion: int
) -> tuple[list[float], float] | None:
    """Per seed: BatchTopK's `metric` minus TopK's (same seed) at BatchTopK's measured L0; the
    paired t-test's p-value."""
    differences = []
    for row in select(rows, arch="batchtopk", k=k, expansion=expansion):
        topk = topk_at(rows, metric, row["l0"], row["seed"], expansion) if metric in row else None
        if topk is not None:
            differences.append(row[metric] - topk)
    if not differences:
        return None
    p = float(stats.ttest_1samp(differences, 0.0).pvalue) if len(differences) > 1 else float("nan")
    return differences, p


def batchtopk_vs_topk_at_equal_l0_table(rows: list[dict]) -> str:
    def cells_of(k, expansion):
        nmse, ce = (
            equal_l0_pairs(rows, "nmse", k, expansion),
            equal_l0_pairs(rows, "ce_degradation", k, expansion),
        )
        if nmse is None:
            return None
        l0 = spread([r["l0"] for r in select(rows, arch="batchtopk", k=k, expansion=expansion)], 3)
        cells = [l0, spread(nmse[0], 2), verdict(*nmse)] + (
            [spread(ce[0], 2), verdict(*ce)] if ce else ["", ""]
        )
        return len(nmse[0]), cells

    return comparison_table(
        ["L0 BatchTopK", "NMSE diff. at equal L0", "verdict", "CE diff. at equal L0", "verdict"],
        cells_of,
    )


def family_means(rows: list[dict], method: str, metric: str) -> list[dict]:
    """The seed-mean rows of `method` (see method()) at expansion 8 that have `metric`."""
    return [r for r in seed_summary(select(rows, method=method, expansion=8)) if metric in r]


def at_l0(rows: list[dict], method: str, metric: str, l0: float) -> float | None:
    """`method`'s seed-mean `metric` at `l0`, interpolated linearly in log L0 between its x8
    points; None outside their range."""
    return log_l0_interp([(r["l0"], r[metric]) for r in family_means(rows, method, metric)], l0)


def at_l0_cell(rows: list[dict], method: str, metric: str, l0: float, digits: int) -> str:
    """at_l0 as a table cell; outside `method`'s L0 range, its nearest point, with that point's
    L0."""
    value = at_l0(rows, method, metric, l0)
    if value is not None:
        return fmt(value, digits)
    means = family_means(rows, method, metric)
    if not means:
        return ""
    nearest = min(means, key=lambda r: abs(np.log(r["l0"]) - np.log(l0)))
    return f"({fmt(nearest[metric], digits)} at L0 {l0_text(nearest['l0'])})"


def equal_l0_table(rows: list[dict]) -> str:
    """JumpReLU, top-AFA, Matryoshka, Gated and ReLU against TopK and BatchTopK at the same L0
    (interpolated; in parentheses, outside their range: their nearest point)."""
    lines = [
        "| SAE | L0 | NMSE | NMSE TopK at this L0 | NMSE BatchTopK at this L0 | CE deg. | "
        "CE deg. TopK at this L0 | CE deg. BatchTopK at this L0 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in seed_summary(
        [r for r in rows if r["arch"] not in ("topk", "batchtopk") and r["expansion"] == 8]
    ):
        cells = [l0_text(row["l0"]), fmt(row["nmse"])]
        cells += [at_l0_cell(rows, arch, "nmse", row["l0"], 4) for arch in ("topk", "batchtopk")]
        cells += [fmt(row.get("ce_degradation"), 3)]
        cells += [
            at_l0_cell(rows, arch, "ce_degradation", row["l0"], 3) for arch in ("topk", "batchtopk")
        ]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def relative_to_target(row: dict) -> float | None:
    """A target-L0 JumpReLU's held-out L0 / k - 1 (None for other runs)."""
    return row["l0"] / row["k"] - 1 if row["method"] == "jumprelu target L0" else None


def jumprelu_table(rows: list[dict]) -> str:
    """Both JumpReLU modes: each run's L0 multiplier λ at the end (the fixed λ, or where the
    controller left it), its held-out L0 against its target, and its NMSE and CE degradation
    beside the other mode's and BatchTopK's at the same L0 (interpolated in log L0; in
    parentheses, outside their range: their nearest point)."""
    other = {"jumprelu target L0": "jumprelu fixed λ", "jumprelu fixed λ": "jumprelu target L0"}
    header = (
        "| SAE | mode | bandwidth | λ at the end | L0 | L0 / target - 1 | NMSE | NMSE other mode "
        "at this L0 | NMSE BatchTopK at this L0 | CE deg. | CE deg. other mode at this L0 | "
        "CE deg. BatchTopK at this L0 | dead (training window) | silent (held-out) |"
    )
    lines = [header, "|---" * 14 + "|"]
    for row in rows:
        if row["method"] not in other:
            continue
        relative = relative_to_target(row)
        cells = [
            row["method"].removeprefix("jumprelu "),
            fmt(row["jumprelu_bandwidth"]),
            fmt(row.get("l0_lambda"), 2),
            l0_text(row["l0"]),
            "" if relative is None else f"{relative:+.1%}",
        ]
        for metric, digits in (("nmse", 4), ("ce_degradation", 3)):
            cells += [fmt(row.get(metric), digits)]
            cells += [
                at_l0_cell(rows, name, metric, row["l0"], digits)
                for name in (other[row["method"]], "batchtopk")
            ]
        cells += [fmt(row.get("dead_fraction"), 2), fmt(row.get("silent_fraction"), 2)]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def training_failure(records: list[dict]) -> str | None:
    """Where a run's training broke down, from its history: the first step whose loss is not
    finite (diverged) or whose batch L0 fell below 2 latents per token (collapsed); None when
    neither happened."""
    for record in records:
        if "loss" not in record:
            continue
        if record["loss"] is None or not np.isfinite(record["loss"]):
            return f"diverged at step {record['step']} (loss {record['loss']})"
        if record["l0"] < 2:
            return f"collapsed at step {record['step']} (L0 {record['l0']:.2g})"
    return None


def heldout_l0_at(records: list[dict], fractions=(1 / 8, 1 / 4, 1 / 2, 1)) -> str:
    """The held-out L0 after each fraction of the run's training tokens, 'a / b / ...' (the
    evaluations that fell on those token counts)."""
    evaluated = {r["tokens"]: r["heldout_l0"] for r in records if "heldout_l0" in r}
    if not evaluated:
        return ""
    end = max(evaluated)
    return " / ".join(
        l0_text(evaluated[round(end * f)]) for f in fractions if round(end * f) in evaluated
    )


def topafa_table(sweep: Path, rows: list[dict]) -> str:
    """Both top-AFA recipes: the held-out L0 along training (it picks its own), the end point's
    NMSE and CE degradation beside TopK's at that L0, the ZF ratio, dead and silent latents, and
    whether training collapsed or diverged (training_failure)."""
    lines = [
        "| SAE | recipe | AFA weight | held-out L0 after 1/8, 1/4, 1/2, all tokens | NMSE | FVU | "
        "NMSE TopK at this L0 | CE deg. | CE deg. TopK at this L0 | ‖f~‖/‖z‖ med. | dead "
        "(training window) | silent (held-out) | training |",
        "|---" * 13 + "|",
    ]
    for row in rows:
        if not row["method"].startswith("topafa"):
            continue
        records = rundir.read_history(sweep / row["name"])
        cells = [
            row["method"].removeprefix("topafa "),
            fmt(row["afa_coefficient"]),
            heldout_l0_at(records),
            fmt(row["nmse"]),
            fmt(row.get("fvu"), 3),
            at_l0_cell(rows, "topk", "nmse", row["l0"], 4),
            fmt(row.get("ce_degradation"), 3),
            at_l0_cell(rows, "topk", "ce_degradation", row["l0"], 3),
            fmt(row.get("f_tilde_over_z_median"), 3),
            fmt(row.get("dead_fraction"), 2),
            fmt(row.get("silent_fraction"), 2),
            training_failure(records) or "to the end",
        ]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


INTERP_COLUMNS = (
    ("mean_absorption_fraction_score", "absorption fraction"),
    ("mean_full_absorption_score", "full absorption"),
    ("mean_num_split_features", "split latents"),
    ("sae_top_1_test_accuracy", "probe top-1"),
    ("sae_top_5_test_accuracy", "probe top-5"),
    ("sae_test_accuracy", "probe all latents"),
    ("llm_top_1_test_accuracy", "model top-1"),
    ("llm_top_5_test_accuracy", "model top-5"),
    ("llm_test_accuracy", "model all"),
)


def with_interval(row: dict, key: str) -> str:
    """'value [low, high]' with the metric's 95% bootstrap interval when the row has one."""
    value = fmt(row.get(key), 3)
    if f"{key}_low" in row:
        return f"{value} [{fmt(row[f'{key}_low'], 2)}, {fmt(row[f'{key}_high'], 2)}]"
    return value


def interp_table(rows: list[dict]) -> str:
    lines = [
        "| SAE | L0 | " + " | ".join(title for _, title in INTERP_COLUMNS) + " |",
        "|---|---|" + "---|" * len(INTERP_COLUMNS),
    ]
    for row in rows:
        if "mean_absorption_fraction_score" in row or "sae_top_1_test_accuracy" in row:
            lines.append(
                f"| {row['name']} | {fmt(row['l0'], 3)} | "
                + " | ".join(with_interval(row, key) for key, _ in INTERP_COLUMNS)
                + " |"
            )
    return "\n".join(lines)


def invocations(log: Path, sweep: Path) -> list[tuple[str, str, str]]:
    """The sweep's invocations (start, stop, config; ISO times) from the launcher's log (`start
    ISO-TIME [CONFIG]` and `end rc=N ISO-TIME [CONFIG]` lines): each runs from its start to its
    end (an end naming a config closes that config's open start, one naming none the latest
    open start) or, when it was stopped without one (a session's end), to the last file it
    wrote before the next start."""
    if not log.is_file():
        return []
    starts: list[float] = []
    configs: list[str] = []
    ends: dict[int, float] = {}
    # the lines may follow a progress bar's last carriage return, not a newline
    pattern = r"(start|end rc=\S+) (\d{4}-\d\d-\d\dT[\d:]+[+-][\d:]+)[ \t]*(\S*)"
    for event, stamp, config in re.findall(pattern, log.read_text()):
        moment = datetime.fromisoformat(stamp).timestamp()
        if event == "start":
            starts.append(moment)
            configs.append(config)
            continue
        open_starts = [
            i for i in range(len(starts)) if i not in ends and (not config or configs[i] == config)
        ]
        if open_starts:
            ends[open_starts[-1]] = moment
    stamps = sorted(p.stat().st_mtime for p in sweep.rglob("*") if p.is_file())
    runs = []
    for i, start in enumerate(starts):
        stop = starts[i + 1] if i + 1 < len(starts) else float("inf")
        stop = ends.get(i) or max([t for t in stamps if start <= t < stop], default=start)
        runs.append((iso(start), iso(stop), configs[i]))
    return runs


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, timezone.utc).isoformat(timespec="seconds")


def wall_time(runs: list) -> str:
    """The total of the invocations' (start, stop, config) intervals; invocations that
    overlapped count once: the length of their union."""
    intervals = sorted(
        (datetime.fromisoformat(start).timestamp(), datetime.fromisoformat(stop).timestamp())
        for start, stop, _ in runs
    )
    total, reached = 0.0, float("-inf")
    for start, stop in intervals:
        total += max(0.0, stop - max(start, reached))
        reached = max(reached, stop)
    return f"{total / 3600:.2f} h in {len(intervals)} invocation(s)"


def training_cache_tokens(sweep: Path) -> int | None:
    """Tokens in the training cache the runs of `sweep` were harvested into (saelab's default
    cache folder, beside the sweep or in the working directory)."""
    first = next((run for run in sorted(sweep.iterdir()) if (run / rundir.CFG).is_file()), None)
    metadata = json.loads((first / rundir.CFG).read_text())["metadata"] if first else {}
    if "model" not in metadata:
        return None
    spec = CacheSpec(
        model=metadata["model"],
        layer=metadata["layer"],
        site=metadata["site"],
        dataset=metadata["dataset"],
        ctx_len=metadata["ctx_len"],
        include_special=metadata["include_special"],
    )
    for root in (sweep.parent / CACHE_ROOT, CACHE_ROOT):
        manifest = cache_dir(root, spec) / "manifest.json"
        if manifest.is_file():
            return json.loads(manifest.read_text())["n_tokens"]
    return None


def setup_facts(sweep: Path, rows: list[dict]) -> str:
    first = json.loads((sweep / rows[0]["name"] / rundir.EVAL).read_text())
    facts = read_archive_facts(sweep)
    train_tokens, cached = rows[0]["train_tokens"], facts.get("training_cache_tokens")
    facts = [
        f"- training tokens per SAE: {train_tokens:,} ({train_tokens // 4096} steps of 4096)",
        f"- held-out tokens (reconstruction, AFA): {first['n_tokens']:,}",
        f"- downstream predictions (CE/KL): {first.get('n_predictions', 'n/a')}",
        f"- clean CE {fmt(first.get('ce_clean'), 4)}, zero-ablation "
        f"{fmt(first.get('ce_zero'), 4)}, mean-ablation {fmt(first.get('ce_mean'), 4)} nats",
        f"- SAEs: {len(rows)} runs in {len(seed_summary(rows))} configurations",
        f"- wall time of the sweep: {wall_time(facts.get('invocations', []))}",
    ]
    if cached:
        facts.insert(
            1,
            f"- training activations: {cached:,} tokens (all of the builtin text's training "
            f"split), so each SAE sees {train_tokens / cached:.2f} epochs",
        )
    return "\n".join(facts)


# ---- the document ------------------------------------------------------------------------------


def replace_section(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- begin {name} -->\n).*?(<!-- end {name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(
            f"the document has no section {name} (<!-- begin {name} --> ... <!-- end {name} -->)"
        )
    return pattern.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "sweep",
        type=Path,
        nargs="?",
        help="a sweep directory whose evaluated runs join the archive first (runs/reproduction)",
    )
    parser.add_argument(
        "--archive", type=Path, default=ARCHIVE, help="the archive (docs/reproduction_runs)"
    )
    parser.add_argument(
        "--config", type=Path, default=DOCS / "reproduction.toml", help="the sweep's grid"
    )
    parser.add_argument(
        "--docs",
        type=Path,
        default=DOCS,
        help="where REPRODUCTION.md and figures/ are (default: docs)",
    )
    parser.add_argument(
        "--archive-only",
        action="store_true",
        help="only add the sweep's runs to the archive (a pass of the sweep; the page waits for "
        "all of them)",
    )
    args = parser.parse_args()
    if args.sweep:
        copied = archive_runs(args.sweep, args.archive, args.config)
        print(f"archived {len(copied)} evaluated run(s) of {args.sweep} into {args.archive}")
    if args.archive_only:
        if not args.sweep:
            parser.error("--archive-only needs the sweep directory")
        return
    rows = load_rows(args.archive, args.config)
    document, figures = args.docs / DOCUMENT.name, args.docs / FIGURES.name
    figures.mkdir(exist_ok=True)
    started = time.time()
    write_csv(rows, args.docs / "reproduction_results.csv")
    plot_against_k(rows, "nmse", "normalized MSE (held-out)", figures / "repro_nmse_vs_k.png")
    plot_against_k(rows, "ce_degradation", "CE degradation (nats)", figures / "repro_ce_vs_k.png")
    plot_training(args.archive, rows, figures / "repro_nmse_vs_tokens.png")
    plot_l0_histograms(args.archive, rows, figures / "repro_batchtopk_l0.png")
    methods = {row["method"].split()[0] for row in rows}
    if "jumprelu" in methods:
        plot_jumprelu_training(args.archive, rows, figures / "repro_jumprelu_training.png")
    if "topafa" in methods:
        plot_topafa_training(args.archive, rows, figures / "repro_topafa_training.png")
    summary = seed_summary(select(rows, expansion=8))
    for metric, label in (("nmse", "normalized MSE"), ("ce_degradation", "CE degradation (nats)")):
        pareto_plot(
            summary,
            metric,
            label,
            figures / f"repro_pareto_{metric}.png",
            series=["method"],
            title=f"{label} vs L0, expansion 8 (mean ± std over seeds)",
        )
    largest_topk = max((r["k"] for r in select(rows, arch="topk", expansion=8)), default=None)
    for row in rows:
        if row["seed"] == 0 and (
            row.get("k") == 32  # one SAE per arch
            or "sae_top_1_test_accuracy" in row
            or (row["arch"] == "topk" and row["k"] == largest_topk)  # a dense TopK code
        ):
            zf_plot = args.archive / row["name"] / rundir.PLOTS["zf"]
            shutil.copy(zf_plot, figures / f"repro_zf_{row['name']}.png")
    for stale in figures.glob("repro_*.png"):  # a figure of runs no longer in the archive
        if stale.stat().st_mtime < started:
            stale.unlink()
    text = document.read_text()
    for name, body in (
        ("setup", setup_facts(args.archive, rows)),
        ("configurations", configuration_table(rows)),
        ("batchtopk_vs_topk", batchtopk_vs_topk_table(rows)),
        ("batchtopk_vs_topk_equal_l0", batchtopk_vs_topk_at_equal_l0_table(rows)),
        ("equal_l0", equal_l0_table(rows)),
        ("jumprelu", jumprelu_table(rows)),
        ("topafa", topafa_table(args.archive, rows)),
        ("interp", interp_table(rows)),
    ):
        is_empty_table = body.startswith("|") and body.count("\n") == 1  # a header alone
        text = replace_section(text, name, NOT_YET if is_empty_table else body)
    document.write_text(text)
    print(f"wrote {document}, {args.docs / 'reproduction_results.csv'} and {figures}/repro_*.png")


if __name__ == "__main__":
    main()
