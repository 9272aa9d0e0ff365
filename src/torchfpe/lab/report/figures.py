"""The report's PNG figures (matplotlib with the Agg backend, imported lazily by :func:`pyplot`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .constants import DATA_NAME, DPI, FOLD_METRICS, HEATMAP_VARIANTS, read_variant, wide_scale
from .stats import (
    Summary,
    axis_key,
    column_values,
    finite_values,
    is_finite,
    theory_table,
    data_phrase,
    fmt_value,
    ordered_variants,
    paper_numbers,
    study_axes,
    summarize,
    summarize_accuracy,
)


def pyplot():
    """matplotlib.pyplot with the Agg backend (set here, not at import time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: Colours of the registered splits, in registration order, so a variant has the same colour in every
#: figure of every report. The order suits the built-ins' (random blue, clause orange, clause_shared teal,
#: feature red, correlation purple, contiguous olive, shared pink, grouped cyan, then the controls: overlap
#: green, dropconnect magenta, static_sparse brown), so the variants a study draws together differ; splits
#: registered later take the rest. Dense is black; ``wide<scale>`` (dense models with ``scale`` times the
#: non-zeros) are shades of grey, darker for larger scales.
SPLIT_COLOURS: tuple[str, ...] = (
    "#1f77b4", "#ff7f0e", "#00a087", "#d62728", "#9467bd", "#bcbd22", "#e377c2", "#17becf",
    "#2ca02c", "#c51b7d", "#8c564b", "#393b79", "#e6ab02", "#637939", "#7b4173", "#ad494a",
)
DENSE_COLOUR = "#000000"
#: Markers and line styles that tell the values of a second swept field (e.g. α) apart.
MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES: tuple[Any, ...] = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 3)))


#: How a split's colour is shaded for a modifier of its variant: (towards white or black, by how much). Kept
#: at or under half the way to white, so that a shaded line still shows on the white axes.
_SHADES = {"global": (1.0, 0.2), "outgoing": (1.0, 0.45), "structured": (0.0, 0.4), "layerwise": (0.0, 0.25),
           "none": (1.0, 0.3), "carry": (0.0, 0.6)}

#: The marker of a variant's last modifier (a plain split or control: a circle), so that two shades of one
#: hue stay apart in the plot and in its legend.
_MARKERS = {"global": "v", "outgoing": "s", "structured": "^", "layerwise": "P", "none": "X", "carry": "D"}


def variant_marker(variant: str) -> str:
    """The marker of a variant in line plots: its last modifier's (:data:`_MARKERS`), else a circle."""
    parsed = read_variant(variant)
    modifiers = parsed.modifiers if parsed is not None else ()
    return _MARKERS.get(modifiers[-1], "o") if modifiers else "o"


def variant_color(variant: str) -> Any:
    """A fixed colour per variant (see :data:`SPLIT_COLOURS`), the same in every figure; a split with
    modifiers (``random@structured``, ``random@carry``) gets its split's hue, lightened or darkened per
    modifier (:data:`_SHADES`)."""
    parsed = read_variant(variant)
    name = (parsed.split or parsed.name) if parsed is not None else str(variant)
    modifiers = parsed.modifiers if parsed is not None else ()
    base = _base_color(name)
    if not modifiers:
        return base
    from matplotlib.colors import to_rgb

    rgb = to_rgb(base)
    for modifier in modifiers:
        target, amount = _SHADES.get(modifier, (0.5, 0.5))
        rgb = tuple(c + (target - c) * amount for c in rgb)
    return rgb


def _base_color(name: str) -> Any:
    from ...core.splits import SPLITS

    if name == "dense":
        return DENSE_COLOUR
    scale = wide_scale(name)
    if scale is not None:  # a sequential shade by scale alone (so the same in every figure): 1x light .. 3x dark
        scale = min(max(scale, 1.0), 3.0)
        shade = 0.78 - 0.6 * np.log2(scale) / np.log2(3.0)
        return (shade, shade, shade)
    names = list(SPLITS)
    index = names.index(name) if name in names else len(names) + sum(map(ord, name))
    return SPLIT_COLOURS[index % len(SPLIT_COLOURS)]


def seed_count(frame: pd.DataFrame) -> int | None:
    """How many distinct seeds the records drawn hold (the real count, not the one asked for)."""
    if "seed" not in frame.columns:
        return None
    return int(frame["seed"].dropna().nunique())


def seeds_text(count: Any) -> str:
    return f"{count} seed" if count == 1 else f"{count} seeds"


def ci_text(summaries: Sequence[Summary], words: str = "mean with 95 % t-CI over seeds") -> str:
    """``words`` where every point has two or more seeds; else what is drawn instead of a CI."""
    counts = [s.n for s in summaries if s.n]
    if not counts or max(counts) < 2:
        return "one seed per point: single runs, no CI"
    if min(counts) < 2:
        return f"{words} (points from one seed: no CI)"
    return words


#: Error bars reaching further than this many times the spread of the means are cut at the plot's edge
#: (two seeds give t-intervals 12.7 standard errors wide, which would squash every mean onto one line).
CUT_BARS_BEYOND = 4.0


def honest_ylim(ax: Any, summaries: Sequence[Summary], *, scale: float, min_span: float,
                 floor: float | None = None, ceiling: float | None = None, zero: bool = False) -> bool:
    """Set a y range that neither blows small differences up nor squashes the means.

    The range spans the means and their error bars, and at least ``min_span`` (so a 0.5-point difference
    is not drawn as a cliff); where the bars reach much further than the means spread
    (:data:`CUT_BARS_BEYOND`), it spans the means with room around them and the bars are cut at the
    edge. ``floor``/``ceiling`` bound it (0 and 100 for accuracies in %); ``zero`` keeps 0 in view
    (relative gains). Returns whether bars were cut (the caption says so).
    """
    means = np.array([s.mean for s in summaries], dtype=float) * scale
    errors = _ci_errors(summaries, scale)
    means, low_err, high_err = means[np.isfinite(means)], errors[0][np.isfinite(means)], errors[1][np.isfinite(means)]
    if means.size == 0:
        return False
    m_low, m_high = float(means.min()), float(means.max())
    b_low, b_high = float((means - low_err).min()), float((means + high_err).max())
    if zero:
        m_low, m_high = min(m_low, 0.0), max(m_high, 0.0)
    spread = max(m_high - m_low, min_span)
    cut = (b_high - b_low) > CUT_BARS_BEYOND * spread
    low, high = (m_low - spread / 2, m_high + spread / 2) if cut else (min(b_low, m_low), max(b_high, m_high))
    if high - low < min_span:
        centre = (low + high) / 2
        low, high = centre - min_span / 2, centre + min_span / 2
    pad = 0.04 * (high - low)
    low, high = low - pad, high + pad
    if floor is not None and low < floor:
        low, high = floor, max(high, floor + min_span)
    if ceiling is not None and high > ceiling:
        low, high = min(low, ceiling - min_span), ceiling
    ax.set_ylim(low, high)
    return cut and (b_low < low or b_high > high)


def metric_ylim(ax: Any, summaries: Sequence[Summary], metric: Any) -> bool:
    """:func:`honest_ylim` for a metric: in [0, 100] % and at least 10 points for a percentage, else at
    least a tenth of the values' size."""
    if metric.percent:
        return honest_ylim(ax, summaries, scale=100.0, min_span=10.0, floor=0.0, ceiling=101.0)
    size = max((abs(s.mean) for s in summaries if is_finite(s.mean)), default=1.0)
    return honest_ylim(ax, summaries, scale=1.0, min_span=0.1 * size or 1.0)


def cut_text(cut: bool) -> str:
    return "; error bars wider than the plot are cut at its edge" if cut else ""


def save_figure(fig: Any, path: Path, caption: str, layout: bool = True, right: float = 1.0) -> None:
    """Add the caption (which names the data) under the figure and save it as PNG (``layout=False``: the
    figure places its own axes, e.g. around a shared colour bar; ``right``: where the axes end, leaving
    room for legends outside them)."""
    plt = pyplot()
    fig.text(0.5, 0.005, caption, ha="center", va="bottom", fontsize=8, wrap=True, style="italic")
    if layout:
        fig.tight_layout(rect=(0, 0.06, right, 1))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def data_caption(meta: dict, extra: str = "", frame: pd.DataFrame | None = None) -> str:
    """A one-line description of the data and seeds for figure captions (the seeds the records of
    ``frame`` really hold, when given; else the count the study asked for)."""
    base = meta.get("base") or {}
    swept = set(study_axes(meta))  # a swept field's base value is not what the figure shows
    parts = [f"{k}={fmt_value(base[k])}" for k in ("n_vars", "clauses", "literals", "neurons", "alpha")
             if k in base and k not in swept]
    text = f"Data: {data_phrase(meta)}"
    if parts:
        text += f" (base: {', '.join(parts)})"
    seeds = seed_count(frame) if frame is not None else None
    seeds = seeds if seeds is not None else meta.get("seeds")
    if seeds is not None:
        text += f"; {seeds_text(seeds)}"
    return text + (f"; {extra}" if extra else "") + "."


def use_log_x(values: Sequence[float]) -> bool:
    vals = [v for v in values if is_finite(v)]
    return bool(vals) and min(vals) > 0 and max(vals) / min(vals) >= 8


def _ci_errors(summaries: Sequence[Summary], scale: float) -> np.ndarray:
    """(2, n) distances from each mean down and up to its CI's ends (0 where the CI is undefined), so a
    clipped interval (accuracies stay in [0, 100] %) is drawn as it is, not as a symmetric bar."""
    means = np.array([s.mean for s in summaries], dtype=float)
    low = np.array([s.ci_low for s in summaries], dtype=float)
    high = np.array([s.ci_high for s in summaries], dtype=float)
    errors = np.vstack([means - low, high - means]) * scale
    return np.where(np.isfinite(errors), np.clip(errors, 0.0, None), 0.0)


def draw_errorbar(ax: Any, x: Sequence[float], summaries: Sequence[Summary], scale: float = 100.0,
              **kwargs: Any) -> None:
    """Plot means with CI error bars (bars omitted where the CI is undefined)."""
    means = np.array([s.mean for s in summaries], dtype=float) * scale
    ax.errorbar(x, means, yerr=_ci_errors(summaries, scale), capsize=3, **kwargs)


def plot_headline_accuracy(frame: pd.DataFrame, meta: dict, path: Path) -> None:
    """Bar chart of test accuracy per variant with 95 % CI bars and the paper's numbers."""
    plt = pyplot()
    variants = ordered_variants(frame["variant"])
    sums = [summarize_accuracy(column_values(frame[frame["variant"] == v], "test_accuracy")) for v in variants]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(variants) + 2), 4.8))
    x = np.arange(len(variants))
    means = np.array([s.mean for s in sums]) * 100
    ci = ci_text(sums, "mean, 95 % CI")
    ax.bar(x, np.nan_to_num(means), color=[variant_color(v) for v in variants], alpha=0.85, label=f"this run ({ci})")
    for colour, width in (("white", 3.5), ("black", 1.4)):  # a white halo: the bar is readable on any colour
        ax.errorbar(x, np.nan_to_num(means), yerr=_ci_errors(sums, 100.0), fmt="none", ecolor=colour,
                    elinewidth=width, capsize=5, capthick=width)
    accuracy = paper_numbers(meta).get("accuracy") or {}
    paper = [(i, accuracy[v]) for i, v in enumerate(variants) if v in accuracy]
    if paper:
        ax.scatter([i for i, _ in paper], [p for _, p in paper], marker="D", color="black",
                   zorder=3, label="paper")
    ax.set_xticks(x, variants, rotation=20)
    ax.set_ylabel("test accuracy (%)")
    ax.set_xlabel("variant")
    ax.set_ylim(0.0, 102.0)  # bars start at 0: a cut baseline would exaggerate the differences
    ax.set_yticks(range(0, 101, 20))
    ax.set_title("Test accuracy per variant (same non-zero budget)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=8, ncol=2, frameon=False)
    save_figure(fig, path, data_caption(meta, "bars: " + ci_text(sums), frame))


def heatmap_records(frame: pd.DataFrame, records: list[dict], meta: dict | None = None) -> list[tuple[str, Any, np.ndarray]]:
    """(variant, seed, W) for each variant of ``meta["heatmaps"]`` (default :data:`HEATMAP_VARIANTS`) with
    a stored ``hidden_weight``."""
    seeds = finite_values(column_values(frame, "seed"))
    smallest = float(seeds.min()) if seeds.size else None
    out = []
    for variant in (meta or {}).get("heatmaps") or HEATMAP_VARIANTS:
        cands = [r for r in records if r.get("variant") == variant and r.get("hidden_weight") is not None]
        if not cands:
            continue
        exact = [r for r in cands if smallest is not None and is_finite(r.get("seed"))
                 and float(r["seed"]) == smallest]
        rec = (exact or sorted(cands, key=lambda r: axis_key(r.get("seed"))))[0]
        weight = np.asarray(rec["hidden_weight"], dtype=float)
        order = rec.get("input_order")
        if order is not None and weight.ndim == 2 and sorted(order) == list(range(weight.shape[1])):
            weight = weight[:, order]  # inputs grouped clause by clause, so block structure shows
        if weight.ndim == 2 and weight.size:
            out.append((variant, rec.get("seed"), weight))
    return out


def plot_heatmaps(items: list[tuple[str, Any, np.ndarray]], meta: dict, path: Path, gram: bool) -> None:
    """Heat maps of |WᵀW| (``gram=True``) or of W itself, one panel per variant, all on one colour scale
    (one colour bar), each panel naming the seed it shows."""
    plt = pyplot()
    from matplotlib.colors import Normalize, PowerNorm
    from matplotlib.ticker import MaxNLocator

    mats = [np.abs(weight.T @ weight) if gram else weight for _, _, weight in items]
    if gram:
        # square-root scale: the largest entries (a strong input's own norm) would hide the rest
        norm, cmap = PowerNorm(0.5, 0.0, max(float(m.max()) for m in mats) or 1.0), "viridis"
    else:
        vmax = max(float(np.abs(m).max()) for m in mats) or 1.0
        norm, cmap = Normalize(-vmax, vmax), "RdBu_r"
    fig, axes = plt.subplots(1, len(items), figsize=(4.0 * len(items) + 1.2, 4.6), squeeze=False)
    for ax, (variant, seed, weight), mat in zip(axes[0], items, mats):
        im = ax.imshow(mat, cmap=cmap, norm=norm, interpolation="nearest", aspect="equal" if gram else "auto")
        ax.set_xlabel("input")
        ax.set_ylabel("input" if gram else "hidden unit")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{'|WᵀW|' if gram else 'W'}: {variant} (seed {fmt_value(seed)}, {weight.shape[0]} units)",
                     fontsize=9)
    fig.subplots_adjust(bottom=0.17, top=0.9, left=0.06, right=0.9, wspace=0.3)
    fig.colorbar(im, cax=fig.add_axes((0.92, 0.17, 0.012, 0.73)), label="|WᵀW|" if gram else "weight")
    seeds = sorted({fmt_value(seed) for _, seed, _ in items})
    what = ("|WᵀW| of the first hidden layer" if gram else "first hidden layer weights W (rows = units)") + \
        f"; seed {', '.join(seeds)} (one run per panel); one colour scale for all panels" + \
        (" (square root)" if gram else "")
    save_figure(fig, path, data_caption(meta, what), layout=False)


def plot_sweep(frame: pd.DataFrame, meta: dict, axis: str, out_dir: Path) -> list[tuple[str, str]]:
    """``accuracy_vs_<axis>.png`` (``<metric key>_vs_<axis>.png`` for another metric) and
    ``gain_vs_<axis>.png``; returns (file, caption) pairs."""
    from .metric import metric_of

    plt = pyplot()
    metric = metric_of(meta)
    values = sorted(frame[axis].dropna().unique().tolist(), key=axis_key)
    x_all = [float(v) if is_finite(v) else i for i, v in enumerate(values)]
    variants = ordered_variants(frame["variant"])
    show_train = bool(meta.get("show_train"))
    figures = []

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    drawn: list[Summary] = []
    trains: list[Summary] = []
    for variant in variants:
        sub = frame[frame["variant"] == variant]
        xs, test_s, train_s = [], [], []
        for x, v in zip(x_all, values):
            cell = sub[sub[axis] == v]
            if len(cell):
                xs.append(x)
                test_s.append(metric.summarize(column_values(cell, metric.key)))
                train_s.append(metric.summarize(column_values(cell, metric.train_key)))
        if not xs:
            continue
        drawn += test_s
        xs = dodge(xs, variants.index(variant), len(variants), log=use_log_x(x_all), span=max(x_all) - min(x_all))
        draw_errorbar(ax, xs, test_s, scale=metric.scale, marker="o", color=variant_color(variant),
                      label=f"{variant} (test)")
        if show_train:
            ax.plot(xs, [s.mean * metric.scale for s in train_s], linestyle="--", marker="x",
                    color=variant_color(variant), label=f"{variant} (train)")
            trains += [Summary(s.n, s.mean, s.std, np.nan, np.nan) for s in train_s]  # lines without bars
    _axis_style(ax, x_all, values, axis, metric.axis_label_both() if show_train else metric.axis_label)
    cut = metric_ylim(ax, drawn + trains, metric)
    ax.set_title(f"{metric.name.capitalize()} vs {axis}")
    name = f"{metric.figure_stem}_vs_{axis}.png"
    shifted = "; points nudged sideways so that none hides another" if len(variants) > 1 else ""
    caption = data_caption(meta, f"{ci_text(drawn)} vs {axis}" + (f"; dashed: train {metric.name}" if show_train
                                                                     else "") + shifted + cut_text(cut), frame)
    save_figure(fig, out_dir / name, caption)
    figures.append((name, caption))

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    drawn = []
    for variant in [v for v in variants if v != "dense"]:
        sub = frame[frame["variant"] == variant]
        xs, gains = [], []
        for x, v in zip(x_all, values):
            cell = sub[sub[axis] == v]
            s = summarize(column_values(cell, "relative_gain"))
            if s.n:
                xs.append(x)
                gains.append(s)
        if xs:
            drawn += gains
            xs = dodge(xs, variants.index(variant), len(variants), log=use_log_x(x_all),
                       span=max(x_all) - min(x_all))
            draw_errorbar(ax, xs, gains, marker="o", color=variant_color(variant), label=variant)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    _axis_style(ax, x_all, values, axis, "relative gain vs dense (%)")
    cut = honest_ylim(ax, drawn, scale=100.0, min_span=10.0, zero=True)
    ax.set_title(f"Relative gain over dense vs {axis}")
    name = f"gain_vs_{axis}.png"
    gain = "(acc − acc_dense)/acc_dense" if metric.is_accuracy else "relative gain over dense (positive = better)"
    caption = data_caption(meta, f"{gain}, {ci_text(drawn, 'mean with 95 % t-CI')} vs {axis}{shifted}"
                            + cut_text(cut), frame)
    save_figure(fig, out_dir / name, caption)
    figures.append((name, caption))
    return figures


def dodge(xs: list[float], j: int, count: int, *, log: bool, span: float) -> list[float]:
    """Shift the points of line ``j`` of ``count`` a little sideways, so equal values do not hide each other."""
    if count < 2:
        return xs
    step = (j - (count - 1) / 2) * min(0.05, 0.3 / count)
    return [x * 2 ** step for x in xs] if log else [x + step * (span / 2 if span else 1.0) for x in xs]


def _axis_style(ax: Any, x: list[float], values: list[Any], axis: str, ylabel: str) -> None:
    """Shared x-axis styling for sweep plots (log scale for wide numeric ranges)."""
    if use_log_x(x):
        ax.set_xscale("log", base=2)
    ax.set_xticks(x, [fmt_value(v) for v in values])
    if len(x) == 1:
        ax.set_xlim(x[0] - 1.0, x[0] + 1.0)
    ax.minorticks_off()
    ax.set_xlabel(axis)
    ax.set_ylabel(ylabel)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def plot_fold_vs_gain(frame: pd.DataFrame, meta: dict, fits: dict, path: Path) -> None:
    """Scatter of metric fold change vs relative gain per variant, with fit lines and R²."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(FOLD_METRICS), figsize=(5.6 * len(FOLD_METRICS), 4.4), squeeze=False)
    variants = [v for v in ordered_variants(frame["variant"]) if v != "dense"]
    for ax, (metric, label) in zip(axes[0], FOLD_METRICS):
        for variant in variants:
            sub = frame[frame["variant"] == variant]
            gx, fy = column_values(sub, "relative_gain").to_numpy(), column_values(sub, metric).to_numpy()
            keep = np.isfinite(gx) & np.isfinite(fy)
            if not keep.any():
                continue
            fit = fits.get((variant, metric))
            legend = variant
            if fit:
                legend += f" (R² = {fit['r2']:.2f})"
            ax.scatter(gx[keep] * 100, fy[keep], color=variant_color(variant), s=18, alpha=0.8, label=legend)
            if fit:
                xs = np.linspace(gx[keep].min(), gx[keep].max(), 20)
                ax.plot(xs * 100, fit["slope"] * xs + fit["intercept"], color=variant_color(variant))
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xlabel("relative gain vs dense (%)")
        ax.set_ylabel("fold change (variant / dense)")
        ax.set_title(label.capitalize(), fontsize=10)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    save_figure(fig, path, data_caption(meta, "one point per run; lines: least-squares fits"))


def plot_collisions(frame: pd.DataFrame, meta: dict, path: Path) -> None:
    """Log-scale collision / coverage probability vs alpha per k: MC markers vs formula lines."""
    plt = pyplot()
    table = theory_table(frame)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), squeeze=False)
    panels = (("collision", "P(two clauses wholly in one child)", "α^-(2k-1)"),
              ("coverage", "P(one clause wholly in one child)", "α^-(k-1)"))
    cmap = plt.get_cmap("viridis")
    ks = sorted(table["k"].unique().tolist(), key=axis_key)
    for ax, (name, title, formula) in zip(axes[0], panels):
        for j, k in enumerate(ks):
            sub = table[table["k"] == k].sort_values("alpha")
            color = cmap(j / max(1, len(ks) - 1) * 0.85)
            a = sub["alpha"].to_numpy(dtype=float)
            for col, style in ((f"{name}_theory", dict(linestyle="-", label=f"k={fmt_value(k)}: {formula}")),
                               (f"{name}_balanced_exact", dict(linestyle=":", label=f"k={fmt_value(k)}: balanced exact"))):
                y = column_values(sub, col).to_numpy()
                keep = np.isfinite(y) & (y > 0)
                if keep.any():
                    ax.plot(a[keep], y[keep], color=color, **style)
            y = column_values(sub, f"{name}_mc").to_numpy()
            keep = np.isfinite(y) & (y > 0)
            if keep.any():
                ax.scatter(a[keep], y[keep], color=color, marker="o", zorder=3,
                           label=f"k={fmt_value(k)}: Monte Carlo")
        ax.set_yscale("log")
        alphas = sorted(table["alpha"].unique().tolist(), key=axis_key)
        ax.set_xticks([float(a) for a in alphas], [fmt_value(a) for a in alphas])
        ax.set_xlabel("expansion factor α")
        ax.set_ylabel("probability (log scale)")
        ax.set_title(title, fontsize=10)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncol=1)
        ax.grid(alpha=0.3, which="both")
    save_figure(fig, path, f"Random balanced split of the variables of {DATA_NAME} clauses into α children; "
                      "markers: Monte Carlo, solid: formula, dotted: exact for a balanced partition.")
