"""Evaluation figures as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

BAND_C = (0.25, 0.5, 1.0)
MAX_POINTS = 20_000


LOG_SPAN = 20  # log axes when the norms span more than this factor (massive first-token norms)


Z_AXIS = {
    "per_token": "||z|| = ||x - mean(x)|| (input centred per token, raw units",
    "expected_norm": "||z|| = ||x|| (input, raw units",
    "none": "||z|| = ||x|| (input, raw units",
    "transcoder": "||z|| = ||y - x W_skip|| (transcoder target, raw units",
}


def zf_plot(norm_z, norm_f_tilde, path: str | Path, title: str = "", scaling: str = "none") -> bool:
    """Left: the ZF plot, ||z|| (x) against ||f~|| (y) in raw input units (for a per_token SAE
    ||z|| is ||x - mean(x)||: the SAE sees the token centred), the line y = x and
    the bands of slopes sqrt(1/(1+c)) and sqrt(1/(1-c)) for c = eps (h - 1) in {0.25, 0.5, 1}.
    Right: the ratio view, ||f~|| / ||z|| against ||z||, where the bands are horizontal lines,
    so how far ordinary tokens sit from the diagonal stays readable. Where the norms span
    decades (a few tokens 100x the median), the norm axes are logarithmic so ordinary tokens
    are not squashed into the origin. Returns whether they are."""
    z, f = np.asarray(norm_z, dtype=float), np.asarray(norm_f_tilde, dtype=float)
    if len(z) > MAX_POINTS:
        pick = np.random.default_rng(0).choice(len(z), MAX_POINTS, replace=False)
        z, f = z[pick], f[pick]
    both = np.concatenate([z, f])
    positive = both[both > 0]
    log = len(positive) > 0 and positive.max() / np.percentile(positive, 1) > LOG_SPAN
    fig, (ax, ratio_ax) = plt.subplots(1, 2, figsize=(10.5, 4.8))
    top = both.max() * 1.05
    bottom = np.percentile(positive, 0.1) / 1.5 if log else 0.0
    xs = np.geomspace(bottom, top, 50) if log else np.array([0, top])
    ax.scatter(z, f, s=3, alpha=0.3, color="tab:blue", label="tokens", rasterized=True)
    ax.plot(xs, xs, color="black", lw=1, label="||f~|| = ||z||")
    ratio = f / np.maximum(z, 1e-30)
    ratio_ax.scatter(z, ratio, s=3, alpha=0.3, color="tab:blue", rasterized=True)
    ratio_ax.axhline(1.0, color="black", lw=1)
    for c, style in zip(BAND_C, (":", "--", "-.")):
        slopes = [math.sqrt(1 / (1 + c))] + ([math.sqrt(1 / (1 - c))] if c < 1 else [])
        for i, slope in enumerate(slopes):
            ax.plot(
                xs,
                xs * slope,
                color="tab:red",
                ls=style,
                lw=1,
                label=f"c = {c}" if i == 0 else None,
            )
            ratio_ax.axhline(slope, color="tab:red", ls=style, lw=1)
    if log:
        ax.set(xscale="log", yscale="log")
        ratio_ax.set_xscale("log")
        for axis in (ax.xaxis, ax.yaxis, ratio_ax.xaxis):  # minor labels overlap over a decade
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    suffix = ", log" if log else ""
    ax.set(
        xlim=(bottom, top),
        ylim=(bottom, top),
        xlabel=f"{Z_AXIS[scaling]}{suffix})",
        ylabel=f"||f~|| (code, with b_dec{suffix})",
        title=title or "ZF plot",
    )
    ax.legend(fontsize=7, loc="upper left")
    low, high = np.percentile(ratio, [0.5, 99.5]) if len(ratio) else (0.5, 1.5)
    ratio_ax.set(
        ylim=(min(low, math.sqrt(0.5)) - 0.05, max(high, 1.0) + 0.05),
        xlabel=f"{Z_AXIS[scaling]}{suffix})",
        ylabel="||f~|| / ||z||",
        title=f"ratio view (median {np.median(ratio):.3f})" if len(ratio) else "ratio view",
    )
    _save(fig, path)
    return bool(log)


def l0_histogram_plot(
    counts: list[int], path: str | Path, k: int | None = None, title: str = ""
) -> None:
    """Tokens per number of active latents (BatchTopK paper, Figure 3), with the trained k."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(np.arange(len(counts)), counts, width=1.0, color="tab:blue")
    if k is not None:
        ax.axvline(k, color="tab:red", ls="--", lw=1, label=f"k = {k}")
        ax.legend()
    ax.set(xlabel="active latents per token", ylabel="tokens", title=title or "L0 per token")
    _save(fig, path)


def density_plot(density: list[float], path: str | Path, title: str = "") -> None:
    """Histogram of log10 firing density per latent; dead latents counted at the left."""
    d = np.asarray(density, dtype=float)
    dead = int((d == 0).sum())
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if (d > 0).any():
        ax.hist(np.log10(d[d > 0]), bins=60, color="tab:blue")
    ax.set(
        xlabel="log10 firing density",
        ylabel="latents",
        title=(title or "Latent density") + f" ({dead} dead)",
    )
    _save(fig, path)


def pareto_plot(
    rows: list[dict],
    metric: str,
    label: str,
    path: str | Path,
    series: list[str],
    title: str | None = None,
) -> None:
    """`metric` (y) against L0 (x), one line per distinct value of the `series` keys, points in
    order of L0 (the BatchTopK paper's Figures 1-2, the AFA paper's L0-L2 plot); an axis whose
    positive values span more than a factor 10 is logarithmic. Rows of seed
    means (sweep.seed_summary) draw their standard deviations `<metric>_std` and `l0_std` as
    error bars."""
    lines: dict[str, list[tuple[float, float, float, float]]] = {}
    left_out = 0
    for row in rows:
        if metric in row and "l0" in row:
            if not (_finite(row["l0"]) and _finite(row[metric])):
                left_out += 1  # a diverged SAE's NaN/Inf: said in the title, not drawn
                continue
            name = " ".join(str(row[key]) for key in series)
            lines.setdefault(name, []).append(
                (row["l0"], row[metric], row.get("l0_std", 0.0), row.get(metric + "_std", 0.0))
            )
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, points in sorted(lines.items()):
        x, y, x_err, y_err = zip(*sorted(points))
        bars = any(e > 0 for e in x_err + y_err)
        ax.errorbar(
            x,
            y,
            xerr=x_err if bars else None,
            yerr=y_err if bars else None,
            marker="o",
            ms=4,
            lw=1.2,
            capsize=3 if bars else 0,
            label=name,
        )
    l0s = [point[0] for points in lines.values() for point in points]
    if spans_decades(l0s):
        log_x(ax, max(l0s) / min(l0s))
    if spans_decades([point[1] for points in lines.values() for point in points]):
        ax.set_yscale("log")
    errors = (
        " (mean ± std over seeds)"
        if any(p[3] > 0 for points in lines.values() for p in points)
        else ""
    )
    ax.set(
        xlabel="L0 (active latents per token)",
        ylabel=label,
        title=(title or f"{label} vs L0{errors}")
        + (f"\n({left_out} SAEs with NaN/Inf left out)" if left_out else ""),
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)


def spans_decades(values: list[float]) -> bool:
    """Whether positive `values` span more than a factor 10: a log axis shows them better."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > 10


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def log_x(ax, span: float) -> None:
    """A log x axis with plain numbers on the ticks (0.2, 5, 1000): ticks at 1, 2 and 5 per
    decade where the data span (max/min) is up to 1000, at powers of 10 beyond (minor tick
    labels would overlap)."""
    ax.set_xscale("log")
    subs = (1, 2, 5) if span <= 1000 else (1,)
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=subs))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def curve_plot(
    curves: dict[str, list[tuple[list[float], list[float]]]],
    path: str | Path,
    ylabel: str,
    title: str = "",
    log_y: bool = False,
) -> None:
    """One line per label against training tokens (see draw_curves)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    draw_curves(ax, curves, ylabel, title, log_y)
    _save(fig, path)


def draw_curves(
    ax,
    curves: dict[str, list[tuple[list[float], list[float]]]],
    ylabel: str,
    title: str = "",
    log_y: bool = False,
    styles: dict[str, dict] | None = None,
) -> None:
    """One line per label against training tokens: the mean of its runs (one per seed, on the
    same tokens) and, with several, a band of ± one standard deviation. `styles`: matplotlib
    line settings per label (colour, line style), where the default colour cycle would repeat."""
    for label, runs in curves.items():
        length = min(len(tokens) for tokens, _ in runs)
        tokens = np.asarray(runs[0][0][:length], dtype=float)
        values = np.array([run[1][:length] for run in runs], dtype=float)
        values[~np.isfinite(values)] = np.nan  # a diverged run: a gap, not an infinite axis
        mean = values.mean(0)
        (line,) = ax.plot(
            tokens,
            mean,
            marker="o",
            ms=3,
            lw=1.2,
            label=label + (f" ({len(runs)} seeds)" if len(runs) > 1 else ""),
            **(styles or {}).get(label, {}),
        )
        if len(runs) > 1:
            std = values.std(0, ddof=1)
            ax.fill_between(tokens, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)
    if log_y:
        ax.set_yscale("log")
    ax.set(xlabel="training tokens", ylabel=ylabel, title=title or f"{ylabel} during training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _save(fig, path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
