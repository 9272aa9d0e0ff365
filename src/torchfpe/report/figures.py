"""The report's PNG figures (matplotlib with the Agg backend, imported lazily by :func:`_pyplot`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .constants import DATA_NAME, DPI, FOLD_METRICS, HEATMAP_VARIANTS
from .stats import (
    Summary,
    _axis_key,
    _column,
    _finite,
    _ok,
    _theory_table,
    data_phrase,
    fmt_value,
    ordered_variants,
    paper_numbers,
    summarize,
    summarize_accuracy,
    variant_rank,
)


def _pyplot():
    """matplotlib.pyplot with the Agg backend (set here, not at import time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: Colours after tab10's ten, chosen to stay apart from them (tab10 wraps onto random for the 12th split).
_MORE_COLORS = [(0.0, 0.0, 0.0), (0.0, 0.5, 0.5), (0.5, 0.0, 0.0), (0.0, 0.0, 0.5), (0.85, 0.65, 0.13),
                (0.8, 0.0, 0.8)]


#: How a split's colour is shaded for a modifier of its variant: (towards white or black, by how much). Kept
#: at or under half the way to white, so that a shaded line still shows on the white axes.
_SHADES = {"global": (1.0, 0.2), "outgoing": (1.0, 0.45), "structured": (0.0, 0.4), "layerwise": (0.0, 0.25),
           "none": (1.0, 0.3), "carry": (0.0, 0.6)}

#: The marker of a variant's last modifier (a plain split or control: a circle), so that two shades of one
#: hue stay apart in the plot and in its legend.
_MARKERS = {"global": "v", "outgoing": "s", "structured": "^", "layerwise": "P", "none": "X", "carry": "D"}


def _marker(variant: str) -> str:
    """The marker of a variant in line plots: its last modifier's (:data:`_MARKERS`), else a circle."""
    modifiers = str(variant).split("@")[1:]
    return _MARKERS.get(modifiers[-1], "o") if modifiers else "o"


def _color(variant: str) -> Any:
    """A fixed colour per variant, in the registry's order (tab10, then six more before one repeats); a split
    with modifiers (``random@structured``, ``random@carry``) gets its split's hue, lightened or darkened per
    modifier (:data:`_SHADES`)."""
    from ..experiments.protocol import WIDE

    plt = _pyplot()
    palette = [*plt.get_cmap("tab10").colors, *_MORE_COLORS]
    rgb = palette[variant_rank(variant)[0] % len(palette)][:3]
    for modifier in str(variant).split("@")[1:]:
        target, amount = _SHADES.get(modifier, (0.5, 0.5))
        rgb = tuple(c + (target - c) * amount for c in rgb)
    wide = WIDE.match(str(variant))
    if wide:  # wide1.5, wide2, wide3 share a rank: the wider, the lighter
        amount = min(0.6, 0.25 * (float(wide.group(1)) - 1.0))
        rgb = tuple(c + (1.0 - c) * amount for c in rgb)
    return (*rgb, 1.0)


def _save(fig: Any, path: Path, caption: str) -> None:
    """Add the caption (which names the data) under the figure and save it as PNG."""
    plt = _pyplot()
    fig.text(0.5, 0.005, caption, ha="center", va="bottom", fontsize=8, wrap=True, style="italic")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _data_caption(meta: dict, extra: str = "") -> str:
    """A one-line description of the data and seeds for figure captions."""
    base = meta.get("base") or {}
    parts = [f"{k}={fmt_value(base[k])}" for k in ("n_vars", "clauses", "literals", "neurons", "alpha")
             if k in base]
    text = f"Data: {data_phrase(meta)}"
    if parts:
        text += f" (base: {', '.join(parts)})"
    if meta.get("seeds") is not None:
        text += f"; {meta['seeds']} seeds"
    return text + (f"; {extra}" if extra else "") + "."


def _use_log_x(values: Sequence[float]) -> bool:
    vals = [v for v in values if _ok(v)]
    return bool(vals) and min(vals) > 0 and max(vals) / min(vals) >= 8


def _errorbar(ax: Any, x: Sequence[float], summaries: Sequence[Summary], scale: float = 100.0,
              **kwargs: Any) -> None:
    """Plot means with CI error bars (bars omitted where the CI is undefined)."""
    means = np.array([s.mean for s in summaries], dtype=float) * scale
    half = np.array([s.half_width for s in summaries], dtype=float) * scale
    ax.errorbar(x, means, yerr=np.where(np.isfinite(half), half, 0.0), capsize=3, **kwargs)


def plot_headline_accuracy(frame: pd.DataFrame, meta: dict, path: Path) -> None:
    """Bar chart of test accuracy per variant with 95 % CI bars and the paper's numbers."""
    plt = _pyplot()
    variants = ordered_variants(frame["variant"])
    sums = [summarize_accuracy(_column(frame[frame["variant"] == v], "test_accuracy")) for v in variants]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(variants) + 2), 4.2))
    x = np.arange(len(variants))
    means = np.array([s.mean for s in sums]) * 100
    half = np.array([s.half_width for s in sums]) * 100
    ax.bar(x, np.nan_to_num(means), yerr=np.where(np.isfinite(half), half, 0.0), capsize=4,
           color=[_color(v) for v in variants], alpha=0.85, label="this run (mean, 95 % CI)")
    accuracy = paper_numbers(meta).get("accuracy") or {}
    paper = [(i, accuracy[v]) for i, v in enumerate(variants) if v in accuracy]
    if paper:
        ax.scatter([i for i, _ in paper], [p for _, p in paper], marker="D", color="black",
                   zorder=3, label="paper")
    ax.set_xticks(x, variants, rotation=20)
    ax.set_ylabel("test accuracy (%)")
    ax.set_xlabel("variant")
    low = np.nanmin(np.concatenate([means, [p for _, p in paper] or [100.0]]))
    ax.set_ylim(max(0.0, (low if np.isfinite(low) else 0.0) - 15.0), 101.0)
    ax.set_title("Test accuracy per variant (same non-zero budget)")
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path, _data_caption(meta, "bars: mean with 95 % t-CI over seeds"))


def _heatmap_records(frame: pd.DataFrame, records: list[dict], meta: dict | None = None) -> list[tuple[str, Any, np.ndarray]]:
    """(variant, seed, W) for each variant of ``meta["heatmaps"]`` (default :data:`HEATMAP_VARIANTS`) with
    a stored ``hidden_weight``."""
    seeds = _finite(_column(frame, "seed"))
    smallest = float(seeds.min()) if seeds.size else None
    out = []
    for variant in (meta or {}).get("heatmaps") or HEATMAP_VARIANTS:
        cands = [r for r in records if r.get("variant") == variant and r.get("hidden_weight") is not None]
        if not cands:
            continue
        exact = [r for r in cands if smallest is not None and _ok(r.get("seed"))
                 and float(r["seed"]) == smallest]
        rec = (exact or sorted(cands, key=lambda r: _axis_key(r.get("seed"))))[0]
        weight = np.asarray(rec["hidden_weight"], dtype=float)
        order = rec.get("input_order")
        if order is not None and weight.ndim == 2 and sorted(order) == list(range(weight.shape[1])):
            weight = weight[:, order]  # inputs grouped clause by clause, so block structure shows
        if weight.ndim == 2 and weight.size:
            out.append((variant, rec.get("seed"), weight))
    return out


def plot_heatmaps(items: list[tuple[str, Any, np.ndarray]], meta: dict, path: Path, gram: bool) -> None:
    """Heat maps of |WᵀW| (``gram=True``) or of W itself, one panel per variant."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(items), figsize=(4.2 * len(items), 4.4), squeeze=False)
    for ax, (variant, seed, weight) in zip(axes[0], items):
        if gram:
            mat = np.abs(weight.T @ weight)
            im = ax.imshow(mat, cmap="viridis", interpolation="nearest")
            ax.set_xlabel("input")
            ax.set_ylabel("input")
            title = f"|WᵀW|: {variant}"
        else:
            vmax = float(np.abs(weight).max()) or 1.0
            im = ax.imshow(weight, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest",
                           aspect="auto")
            ax.set_xlabel("input")
            ax.set_ylabel("hidden unit")
            title = f"W: {variant}"
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{title} (seed {fmt_value(seed)}, {weight.shape[0]} units)", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    what = "|WᵀW| of the first hidden layer" if gram else "first hidden layer weights W (rows = units)"
    _save(fig, path, _data_caption(meta, what))


def plot_sweep(frame: pd.DataFrame, meta: dict, axis: str, out_dir: Path) -> list[tuple[str, str]]:
    """``accuracy_vs_<axis>.png`` and ``gain_vs_<axis>.png``; returns (file, caption) pairs."""
    plt = _pyplot()
    values = sorted(frame[axis].dropna().unique().tolist(), key=_axis_key)
    x_all = [float(v) if _ok(v) else i for i, v in enumerate(values)]
    variants = ordered_variants(frame["variant"])
    show_train = bool(meta.get("show_train"))
    figures = []

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for variant in variants:
        sub = frame[frame["variant"] == variant]
        xs, test_s, train_s = [], [], []
        for x, v in zip(x_all, values):
            cell = sub[sub[axis] == v]
            if len(cell):
                xs.append(x)
                test_s.append(summarize_accuracy(_column(cell, "test_accuracy")))
                train_s.append(summarize_accuracy(_column(cell, "train_accuracy")))
        if not xs:
            continue
        _errorbar(ax, xs, test_s, marker=_marker(variant), color=_color(variant), label=f"{variant} (test)")
        if show_train:
            ax.plot(xs, [s.mean * 100 for s in train_s], linestyle="--", color=_color(variant),
                    label=f"{variant} (train)")
    _axis_style(ax, x_all, values, axis, "accuracy (%)" if show_train else "test accuracy (%)")
    ax.set_title(f"Accuracy vs {axis}")
    name = f"accuracy_vs_{axis}.png"
    caption = _data_caption(meta, f"mean with 95 % t-CI over seeds vs {axis}"
                            + ("; dashed: train accuracy" if show_train else ""))
    _save(fig, out_dir / name, caption)
    figures.append((name, caption))

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for variant in [v for v in variants if v != "dense"]:
        sub = frame[frame["variant"] == variant]
        xs, gains = [], []
        for x, v in zip(x_all, values):
            cell = sub[sub[axis] == v]
            s = summarize(_column(cell, "relative_gain"))
            if s.n:
                xs.append(x)
                gains.append(s)
        if xs:
            _errorbar(ax, xs, gains, marker=_marker(variant), color=_color(variant), label=variant)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    _axis_style(ax, x_all, values, axis, "relative gain vs dense (%)")
    ax.set_title(f"Relative gain over dense vs {axis}")
    name = f"gain_vs_{axis}.png"
    caption = _data_caption(meta, f"(acc − acc_dense)/acc_dense, mean with 95 % t-CI vs {axis}")
    _save(fig, out_dir / name, caption)
    figures.append((name, caption))
    return figures


def _axis_style(ax: Any, x: list[float], values: list[Any], axis: str, ylabel: str) -> None:
    """Shared x-axis styling for sweep plots (log scale for wide numeric ranges)."""
    if _use_log_x(x):
        ax.set_xscale("log", base=2)
    ax.set_xticks(x, [fmt_value(v) for v in values])
    ax.minorticks_off()
    ax.set_xlabel(axis)
    ax.set_ylabel(ylabel)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def plot_fold_vs_gain(frame: pd.DataFrame, meta: dict, fits: dict, path: Path) -> None:
    """Scatter of metric fold change vs relative gain per variant, with fit lines and R²."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(FOLD_METRICS), figsize=(5.6 * len(FOLD_METRICS), 4.4), squeeze=False)
    variants = [v for v in ordered_variants(frame["variant"]) if v != "dense"]
    for ax, (metric, label) in zip(axes[0], FOLD_METRICS):
        for variant in variants:
            sub = frame[frame["variant"] == variant]
            gx, fy = _column(sub, "relative_gain").to_numpy(), _column(sub, metric).to_numpy()
            keep = np.isfinite(gx) & np.isfinite(fy)
            if not keep.any():
                continue
            fit = fits.get((variant, metric))
            legend = variant
            if fit:
                legend += f" (R² = {fit['r2']:.2f})"
            ax.scatter(gx[keep] * 100, fy[keep], color=_color(variant), s=18, alpha=0.8, label=legend)
            if fit:
                xs = np.linspace(gx[keep].min(), gx[keep].max(), 20)
                ax.plot(xs * 100, fit["slope"] * xs + fit["intercept"], color=_color(variant))
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xlabel("relative gain vs dense (%)")
        ax.set_ylabel("fold change (variant / dense)")
        ax.set_title(label.capitalize(), fontsize=10)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    _save(fig, path, _data_caption(meta, "one point per run; lines: least-squares fits"))


def plot_collisions(frame: pd.DataFrame, meta: dict, path: Path) -> None:
    """Log-scale collision / coverage probability vs alpha per k: MC markers vs formula lines."""
    plt = _pyplot()
    table = _theory_table(frame)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), squeeze=False)
    panels = (("collision", "P(two clauses wholly in one child)", "α^-(2k-1)"),
              ("coverage", "P(one clause wholly in one child)", "α^-(k-1)"))
    cmap = plt.get_cmap("viridis")
    ks = sorted(table["k"].unique().tolist(), key=_axis_key)
    for ax, (name, title, formula) in zip(axes[0], panels):
        for j, k in enumerate(ks):
            sub = table[table["k"] == k].sort_values("alpha")
            color = cmap(j / max(1, len(ks) - 1) * 0.85)
            a = sub["alpha"].to_numpy(dtype=float)
            for col, style in ((f"{name}_theory", dict(linestyle="-", label=f"k={fmt_value(k)}: {formula}")),
                               (f"{name}_balanced_exact", dict(linestyle=":", label=f"k={fmt_value(k)}: balanced exact"))):
                y = _column(sub, col).to_numpy()
                keep = np.isfinite(y) & (y > 0)
                if keep.any():
                    ax.plot(a[keep], y[keep], color=color, **style)
            y = _column(sub, f"{name}_mc").to_numpy()
            keep = np.isfinite(y) & (y > 0)
            if keep.any():
                ax.scatter(a[keep], y[keep], color=color, marker="o", zorder=3,
                           label=f"k={fmt_value(k)}: Monte Carlo")
        ax.set_yscale("log")
        alphas = sorted(table["alpha"].unique().tolist(), key=_axis_key)
        ax.set_xticks([float(a) for a in alphas], [fmt_value(a) for a in alphas])
        ax.set_xlabel("expansion factor α")
        ax.set_ylabel("probability (log scale)")
        ax.set_title(title, fontsize=10)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncol=1)
        ax.grid(alpha=0.3, which="both")
    _save(fig, path, f"Random balanced split of the variables of {DATA_NAME} clauses into α children; "
                      "markers: Monte Carlo, solid: formula, dotted: exact for a balanced partition.")
