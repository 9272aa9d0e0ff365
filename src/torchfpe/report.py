"""Write the results of a Boolean-DNF study as ``records.csv``, ``report.md`` and PNG figures.

One public function, :func:`write_report`, takes the study's metadata and its flat records
(one per ``(config, variant, seed)``, or one per ``(k, alpha, seed)`` for the theory study)
and writes into ``out_dir``:

* ``records.csv`` -- every record key except ``hidden_weight``, sorted by the swept axis,
  the variant order of :data:`VARIANT_ORDER`, then seed;
* ``report.md`` -- the command, date, data note, base config and the study's tables;
* figures (matplotlib, Agg backend), linked from ``report.md`` with relative paths:

  ========================================  ==================================================
  study                                     figures
  ========================================  ==================================================
  headline                                  ``accuracy.png``, ``gram.png``, ``weights.png``
  neurons / clauses / alpha / data          ``accuracy_vs_<axis>.png``, ``gain_vs_<axis>.png``
  metrics                                   ``fold_vs_gain.png``
  theory                                    ``collisions.png``
  ========================================  ==================================================

Statistics: means with sample standard deviations (``ddof=1``) and two-sided 95 % confidence
intervals from the t distribution; paired t-tests over seeds (``scipy.stats.ttest_rel``).
Anything that cannot be computed (one seed, a missing dense run, NaN metrics) is shown as "—".
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

# ------------------------------------------------------------------------------------ constants

#: Display and sort order of the variants; unknown variants sort after these, alphabetically.
VARIANT_ORDER: tuple[str, ...] = (
    "dense",
    "random",
    "clause",
    "feature",
    "contiguous",
    "overlap",
    "dropconnect",
    "static_sparse",
)
#: Variants that are FPE splits (disjoint children); the others are controls.
FPE_VARIANTS: frozenset[str] = frozenset({"random", "clause", "feature", "contiguous"})
#: The paper's headline test accuracies (%), Boolean DNF with 8 clauses, 8 neurons, alpha = 2.
PAPER_ACCURACY: dict[str, float] = {"dense": 78.7, "random": 88.7, "clause": 99.4}
#: The config in which the paper reports :data:`PAPER_ACCURACY`.
PAPER_CONFIG: dict[str, int] = {"clauses": 8, "neurons": 8, "alpha": 2}
#: Every table caption and figure caption names the data with this phrase.
DATA_NAME = "synthetic Boolean DNF"
#: Config fields, in CSV column order.
CONFIG_FIELDS: tuple[str, ...] = (
    "n_vars", "clauses", "literals", "negation_prob", "variables", "encoding", "sampling",
    "train_size", "test_size", "neurons", "alpha", "bias", "budget", "dropconnect_p", "optimizer", "lr",
    "weight_decay", "batch_size", "warmup_epochs", "epochs_after", "dtype", "variants", "seed",
)
#: Result fields of a training record, in CSV column order.
RESULT_FIELDS: tuple[str, ...] = (
    "variant", "test_accuracy", "train_accuracy", "nonzero_parameters", "hidden_units",
    "capacity_mean", "capacity_sum", "cosine_mean", "cosine_abs_mean",
    "relative_gain", "capacity_mean_fold", "cosine_mean_fold", "cosine_abs_mean_fold",
)
#: Fields of a theory record, in CSV column order.
THEORY_FIELDS: tuple[str, ...] = (
    "k", "alpha", "n_vars", "trials", "seed",
    "collision_mc", "collision_theory", "collision_balanced_exact",
    "coverage_mc", "coverage_theory", "coverage_balanced_exact",
)
#: Interference metrics shown in the headline study: (record key, label).
INTERFERENCE_METRICS: tuple[tuple[str, str], ...] = (
    ("capacity_mean", "capacity mean"),
    ("capacity_sum", "capacity sum"),
    ("cosine_mean", "cosine mean"),
    ("cosine_abs_mean", "|cosine| mean"),
)
#: Fold-change metrics of the metrics study: (record key, label).
FOLD_METRICS: tuple[tuple[str, str], ...] = (
    ("capacity_mean_fold", "feature capacity (mean) fold change"),
    # |cosine|, not the signed mean: the signed mean sits near 0, so its ratio is noise.
    ("cosine_abs_mean_fold", "mean absolute cosine similarity fold change"),
)
#: Studies that sweep one config field.
SWEEP_STUDIES: frozenset[str] = frozenset({"neurons", "clauses", "alpha", "data"})
STUDIES: frozenset[str] = SWEEP_STUDIES | {"headline", "metrics", "theory"}
#: Variants whose first hidden layer is drawn in ``gram.png`` / ``weights.png``.
HEATMAP_VARIANTS: tuple[str, ...] = ("dense", "random", "clause")
DPI = 120
DASH = "—"
EXCLUDED_CSV_KEYS: frozenset[str] = frozenset({"hidden_weight", "input_order"})


# --------------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Summary:
    """Mean, sample std and two-sided 95 % t confidence interval of the finite values."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float

    @property
    def half_width(self) -> float:
        """Half the width of the confidence interval (NaN when undefined)."""
        return (self.ci_high - self.ci_low) / 2.0


def summarize(values: Iterable[Any], confidence: float = 0.95) -> Summary:
    """Summarize the finite values of ``values``; std and CI are NaN for fewer than 2 values."""
    arr = _finite(values)
    n = int(arr.size)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(arr.mean())
    if n < 2:
        return Summary(n, mean, math.nan, math.nan, math.nan)
    std = float(arr.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


@dataclass(frozen=True)
class PairedTest:
    """Paired t-test of ``a - b`` over matched seeds."""

    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    t: float
    p: float


def paired_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Paired t-test (``scipy.stats.ttest_rel``) with the t-interval of the mean difference."""
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = np.isfinite(a_arr) & np.isfinite(b_arr)
    a_arr, b_arr = a_arr[keep], b_arr[keep]
    diff = summarize(a_arr - b_arr)
    t_stat = p_val = math.nan
    if a_arr.size >= 2:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            res = stats.ttest_rel(a_arr, b_arr)
        t_stat, p_val = float(res.statistic), float(res.pvalue)
    return PairedTest(diff.n, diff.mean, diff.ci_low, diff.ci_high, t_stat, p_val)


def _finite(values: Iterable[Any]) -> np.ndarray:
    """The finite float values of ``values`` (None and NaN dropped)."""
    out = [float(v) for v in values if v is not None and _is_number(v) and math.isfinite(float(v))]
    return np.asarray(out, dtype=float)


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


# --------------------------------------------------------------------------------- formatting


def fmt_pct(value: float, signed: bool = False) -> str:
    """A fraction as a percentage with 1 decimal (``0.787 -> "78.7"``); NaN -> "—"."""
    if not _ok(value):
        return DASH
    return f"{100.0 * value:+.1f}" if signed else f"{100.0 * value:.1f}"


def fmt_pm(summary: Summary, signed: bool = False) -> str:
    """``"mean ± std"`` in percent."""
    return f"{fmt_pct(summary.mean, signed)} ± {fmt_pct(summary.std)}"


def fmt_ci(low: float, high: float, signed: bool = False) -> str:
    """``"[low, high]"`` in percent, or "—"."""
    if not (_ok(low) and _ok(high)):
        return DASH
    return f"[{fmt_pct(low, signed)}, {fmt_pct(high, signed)}]"


def fmt_p(p: float) -> str:
    """A p-value in scientific notation with 2 significant digits (``3.2e-04``)."""
    return f"{p:.1e}" if _ok(p) else DASH


def fmt_num(value: float, digits: int = 3) -> str:
    """A float with ``digits`` significant digits, or "—"."""
    return f"{value:.{digits}g}" if _ok(value) else DASH


def fmt_fixed(value: float, decimals: int = 3) -> str:
    """A float with a fixed number of decimals, or "—"."""
    return f"{value:.{decimals}f}" if _ok(value) else DASH


def fmt_value(value: Any) -> str:
    """A config value compactly: ``2.0 -> "2"``, ``None -> "None"``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (np.integer,)):
        return str(int(value))
    return str(value)


def _ok(value: Any) -> bool:
    return value is not None and _is_number(value) and math.isfinite(float(value))


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], caption: str) -> str:
    """A Markdown table preceded by a caption line that names the data."""
    if DATA_NAME not in caption:
        caption = f"{caption} Data: {DATA_NAME}."
    lines = [caption, "", _md_row(header), "|" + "---|" * len(header)]
    lines += [_md_row(row) for row in rows]
    return "\n".join(lines) + "\n"


def _md_row(cells: Sequence[Any]) -> str:
    """One Markdown table row; literal pipes in cells are escaped."""
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


class _Tables:
    """Numbers the tables of one report."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, header: Sequence[str], rows: Sequence[Sequence[Any]], text: str) -> str:
        self.count += 1
        return md_table(header, rows, f"**Table {self.count}.** {text}")


# ------------------------------------------------------------------------------------ records


def variant_rank(variant: Any) -> tuple[int, str]:
    """Sort key for variants: :data:`VARIANT_ORDER` first, then alphabetical."""
    name = str(variant)
    return (VARIANT_ORDER.index(name), name) if name in VARIANT_ORDER else (len(VARIANT_ORDER), name)


def ordered_variants(variants: Iterable[Any]) -> list[str]:
    """The distinct variants in display order."""
    return sorted({str(v) for v in variants if v is not None and v == v}, key=variant_rank)


def study_axes(meta: dict) -> list[str]:
    """The swept config fields of a study as a list (empty for headline/theory)."""
    axis = meta.get("axis")
    if axis is None:
        return []
    if isinstance(axis, str):
        return [axis]
    return [str(a) for a in axis]


def _axis_key(value: Any) -> tuple[int, float, str]:
    """Sort key for axis values: numbers numerically, then others as text."""
    if _ok(value):
        return (0, float(value), "")
    return (1, math.inf, str(value))


def records_frame(records: list[dict], meta: dict) -> pd.DataFrame:
    """The records as a sorted DataFrame without ``hidden_weight`` (columns in a fixed order)."""
    rows = [{k: v for k, v in r.items() if k not in EXCLUDED_CSV_KEYS} for r in records]
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    preferred = THEORY_FIELDS if meta.get("study") == "theory" else CONFIG_FIELDS + RESULT_FIELDS
    columns = [k for k in preferred if k in keys] + [k for k in keys if k not in preferred]
    frame = pd.DataFrame(rows, columns=columns)
    if frame.empty:
        return frame
    sort_cols = ["k", "alpha"] if meta.get("study") == "theory" else study_axes(meta)
    sort_cols = [c for c in sort_cols if c in frame.columns]
    keys_fn = []
    for c in sort_cols:
        keys_fn.append(frame[c].map(_axis_key))
    if "variant" in frame.columns:
        keys_fn.append(frame["variant"].map(variant_rank))
    if "seed" in frame.columns:
        keys_fn.append(frame["seed"].map(_axis_key))
    order = sorted(range(len(frame)), key=lambda i: tuple(k.iloc[i] for k in keys_fn))
    return frame.iloc[order].reset_index(drop=True)


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    """Column ``name`` as floats (all NaN when the column is missing)."""
    if name not in frame.columns:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[name], errors="coerce").astype(float)


def _constant(values: pd.Series) -> str:
    """The mean of a column that should be constant; marked "(varies)" when it is not."""
    arr = _finite(values)
    if arr.size == 0:
        return DASH
    text = fmt_value(float(arr.mean()))
    return text if np.all(arr == arr[0]) else f"{text} (varies)"


# --------------------------------------------------------------------------------- figures


def _pyplot():
    """matplotlib.pyplot with the Agg backend (set here, not at import time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _color(variant: str) -> Any:
    """A fixed colour per variant."""
    plt = _pyplot()
    cmap = plt.get_cmap("tab10")
    return cmap(variant_rank(variant)[0] % 10)


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
    text = f"Data: {DATA_NAME} formulas"
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
    sums = [summarize(_column(frame[frame["variant"] == v], "test_accuracy")) for v in variants]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(variants) + 2), 4.2))
    x = np.arange(len(variants))
    means = np.array([s.mean for s in sums]) * 100
    half = np.array([s.half_width for s in sums]) * 100
    ax.bar(x, np.nan_to_num(means), yerr=np.where(np.isfinite(half), half, 0.0), capsize=4,
           color=[_color(v) for v in variants], alpha=0.85, label="this run (mean, 95 % CI)")
    paper = [(i, PAPER_ACCURACY[v]) for i, v in enumerate(variants) if v in PAPER_ACCURACY]
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


def _heatmap_records(frame: pd.DataFrame, records: list[dict]) -> list[tuple[str, Any, np.ndarray]]:
    """(variant, seed, W) for each of :data:`HEATMAP_VARIANTS` with a stored ``hidden_weight``."""
    seeds = _finite(_column(frame, "seed"))
    smallest = float(seeds.min()) if seeds.size else None
    out = []
    for variant in HEATMAP_VARIANTS:
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
    show_train = meta.get("study") == "data"
    figures = []

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for variant in variants:
        sub = frame[frame["variant"] == variant]
        xs, test_s, train_s = [], [], []
        for x, v in zip(x_all, values):
            cell = sub[sub[axis] == v]
            if len(cell):
                xs.append(x)
                test_s.append(summarize(_column(cell, "test_accuracy")))
                train_s.append(summarize(_column(cell, "train_accuracy")))
        if not xs:
            continue
        _errorbar(ax, xs, test_s, marker="o", color=_color(variant), label=f"{variant} (test)")
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
            _errorbar(ax, xs, gains, marker="o", color=_color(variant), label=variant)
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


# --------------------------------------------------------------------------------- sections


def _header(meta: dict) -> list[str]:
    """Title, command, date, data note and base config."""
    study = meta.get("study", "?")
    out = [f"# torchfpe report: {study} study ({DATA_NAME})", ""]
    out += ["Command:", "", "```bash", str(meta.get("command", "")), "```", ""]
    out += [f"- Date: {meta.get('date', DASH)}",
            f"- Data: {meta.get('dataset_note') or DATA_NAME}",
            f"- Seeds: {meta.get('seeds', DASH)}"]
    axes = study_axes(meta)
    if axes:
        out.append(f"- Swept: {', '.join(f'`{a}`' for a in axes)}")
    out.append("- Accuracies in %; ± is the sample standard deviation over seeds; CIs are two-sided "
               "95 % t-intervals; \"—\" marks a value that cannot be computed (e.g. one seed).")
    return out + [""]


def _base_table(meta: dict, tables: _Tables) -> str:
    """The base config as a compact table of (field, value) pairs, four pairs a row."""
    base = meta.get("base") or {}
    items = [(f"`{k}`", fmt_value(v)) for k, v in base.items()]
    per_row = 4
    rows = []
    for i in range(0, len(items), per_row):
        chunk = items[i:i + per_row] + [("", "")] * (per_row - len(items[i:i + per_row]))
        rows.append([c for pair in chunk for c in pair])
    header = ["field", "value"] * per_row
    return tables(header, rows, "Base configuration of the study.")


def _figure_md(name: str, caption: str) -> str:
    return f"![{caption}]({name})\n\n*{name}: {caption}*\n"


def headline_section(frame: pd.DataFrame, meta: dict, records: list[dict], out_dir: Path,
                     tables: _Tables) -> list[str]:
    """Variant table, paired tests, interference metrics and the three headline figures."""
    out = ["## Headline: accuracy per variant", ""]
    variants = ordered_variants(frame["variant"])
    rows = []
    for v in variants:
        sub = frame[frame["variant"] == v]
        test = summarize(_column(sub, "test_accuracy"))
        gain = summarize(_column(sub, "relative_gain"))
        paper = f"{PAPER_ACCURACY[v]:.1f}" if v in PAPER_ACCURACY else DASH
        rows.append([v, test.n, fmt_pm(test), fmt_ci(test.ci_low, test.ci_high),
                     fmt_pct(summarize(_column(sub, "train_accuracy")).mean),
                     _constant(_column(sub, "nonzero_parameters")), _constant(_column(sub, "hidden_units")),
                     fmt_pm(gain, signed=True), fmt_ci(gain.ci_low, gain.ci_high, signed=True), paper])
    out.append(tables(
        ["variant", "n seeds", "test acc % (mean ± std)", "test acc 95 % CI", "train acc %",
         "non-zero params", "hidden units", "rel. gain vs dense %", "rel. gain 95 % CI", "paper test acc %"],
        rows, f"Test accuracy per variant on {DATA_NAME} formulas, at an equal non-zero parameter budget; "
              "paper numbers from arXiv 2510.04500 (8 clauses, 8 neurons, α = 2)."))
    out += _paper_config_note(meta)
    out += _paired_section(frame, variants, tables)
    out += _interference_section(frame, variants, tables)

    out += ["### Figures", ""]
    plot_headline_accuracy(frame, meta, out_dir / "accuracy.png")
    out.append(_figure_md("accuracy.png", _data_caption(meta, "test accuracy per variant, 95 % CI; "
                                                              "diamonds: paper")))
    items = _heatmap_records(frame, records)
    if items:
        plot_heatmaps(items, meta, out_dir / "gram.png", gram=True)
        plot_heatmaps(items, meta, out_dir / "weights.png", gram=False)
        names = ", ".join(v for v, _, _ in items)
        out.append(_figure_md("gram.png", _data_caption(meta, f"|WᵀW| of the first hidden layer ({names})")))
        out.append(_figure_md("weights.png", _data_caption(meta, f"first hidden layer W, rows = hidden "
                                                                 f"units ({names})")))
    else:
        out.append("No `hidden_weight` was recorded for dense/random/clause runs; `gram.png` and "
                   "`weights.png` were not drawn.\n")
    return out


def _paper_config_note(meta: dict) -> list[str]:
    """A warning when the base config differs from the paper's headline setting."""
    base = meta.get("base") or {}
    diffs = [f"{k} = {fmt_value(base[k])} (paper {v})" for k, v in PAPER_CONFIG.items()
             if k in base and _ok(base[k]) and float(base[k]) != v]
    if not diffs:
        return []
    return [f"> Note: this run differs from the paper's headline setting: {'; '.join(diffs)}. "
            "The paper's numbers are shown for orientation only.", ""]


def _paired_values(frame: pd.DataFrame, a: str, b: str) -> tuple[list[float], list[float]]:
    """Test accuracies of variants ``a`` and ``b`` matched by (config, seed)."""
    keys = [c for c in CONFIG_FIELDS if c in frame.columns and c != "variants"]

    def by_key(variant: str) -> dict[tuple, float]:
        sub = frame[frame["variant"] == variant]
        return {tuple(str(row[c]) for c in keys): float(row["test_accuracy"])
                for _, row in sub.iterrows() if _ok(row.get("test_accuracy"))}

    xa, xb = by_key(a), by_key(b)
    common = [k for k in xa if k in xb]
    return [xa[k] for k in common], [xb[k] for k in common]


def _paired_section(frame: pd.DataFrame, variants: list[str], tables: _Tables) -> list[str]:
    """Paired t-tests over seeds: each variant vs dense, and clause vs random."""
    pairs = [(v, "dense") for v in variants if v != "dense" and "dense" in variants]
    if "clause" in variants and "random" in variants:
        pairs.append(("clause", "random"))
    if not pairs:
        return []
    rows = []
    for a, b in pairs:
        xa, xb = _paired_values(frame, a, b)
        res = paired_test(xa, xb)
        rows.append([f"{a} − {b}", res.n, fmt_pct(res.mean_diff, signed=True),
                     fmt_ci(res.ci_low, res.ci_high, signed=True), fmt_num(res.t), fmt_p(res.p)])
    return ["### Paired tests over seeds", "", tables(
        ["comparison", "n pairs", "mean diff (pct points)", "95 % CI of diff", "t", "p"], rows,
        f"Paired t-tests (scipy.stats.ttest_rel) of test accuracy over seeds on {DATA_NAME} formulas."), ""]


def _interference_section(frame: pd.DataFrame, variants: list[str], tables: _Tables) -> list[str]:
    """Feature capacity and cosine similarity per variant (mean ± std over seeds)."""
    rows = []
    for v in variants:
        sub = frame[frame["variant"] == v]
        row: list[Any] = [v]
        for key, _ in INTERFERENCE_METRICS:
            s = summarize(_column(sub, key))
            row.append(f"{fmt_fixed(s.mean)} ± {fmt_fixed(s.std)}" if s.n else DASH)
        rows.append(row)
    return ["### Interference metrics (first hidden layer)", "", tables(
        ["variant"] + [label for _, label in INTERFERENCE_METRICS], rows,
        f"Feature capacity (higher = less superposition) and mean pairwise cosine similarity of hidden "
        f"units' incoming weights (lower = less entangled), mean ± std over seeds, {DATA_NAME} formulas."), ""]


def cell_table(frame: pd.DataFrame, axes: list[str], tables: _Tables, caption: str,
               show_gap: bool = False) -> str:
    """One row per axis cell × variant: test acc, train acc, gain, non-zeros, hidden units."""
    axes = [a for a in axes if a in frame.columns]
    cells = sorted({tuple(row[a] for a in axes) for _, row in frame.iterrows()},
                   key=lambda c: tuple(_axis_key(v) for v in c))
    rows = []
    for cell in cells:
        mask = np.ones(len(frame), dtype=bool)
        for a, v in zip(axes, cell):
            mask &= (frame[a] == v).to_numpy()
        sub_cell = frame[mask]
        for v in ordered_variants(sub_cell["variant"]):
            sub = sub_cell[sub_cell["variant"] == v]
            test = summarize(_column(sub, "test_accuracy"))
            train = summarize(_column(sub, "train_accuracy"))
            gain = summarize(_column(sub, "relative_gain"))
            row = [fmt_value(x) for x in cell] + [
                v, test.n, f"{fmt_pct(test.mean)} {fmt_ci(test.ci_low, test.ci_high)}",
                fmt_pct(train.mean)]
            if show_gap:
                gap = summarize(_column(sub, "train_accuracy") - _column(sub, "test_accuracy"))
                row.append(fmt_pm(gap))
            row += [f"{fmt_pct(gain.mean, True)} {fmt_ci(gain.ci_low, gain.ci_high, True)}"
                    if v != "dense" else fmt_pct(gain.mean, True),
                    _constant(_column(sub, "nonzero_parameters")), _constant(_column(sub, "hidden_units"))]
            rows.append(row)
    header = list(axes) + ["variant", "n", "test acc % [95 % CI]", "train acc %"]
    if show_gap:
        header.append("train − test gap (pct points, mean ± std)")
    header += ["rel. gain % [95 % CI]", "non-zero params", "hidden units"]
    return tables(header, rows, caption)


def trend_sentences(frame: pd.DataFrame, axis: str, key: str = "relative_gain") -> list[str]:
    """One computed sentence per non-dense variant on how its mean ``key`` changes along ``axis``.

    Lists the mean at every axis value, says whether the sequence rises or falls throughout
    (changes under 0.5 percentage points count as flat) or not, and names the largest value.
    """
    out = []
    values = sorted(frame[axis].dropna().unique().tolist(), key=_axis_key)
    for variant in [v for v in ordered_variants(frame["variant"]) if v != "dense"]:
        sub = frame[frame["variant"] == variant]
        pts = [(v, summarize(_column(sub[sub[axis] == v], key)).mean) for v in values]
        pts = [(v, m) for v, m in pts if _ok(m)]
        if not pts:
            continue
        label = variant if variant in FPE_VARIANTS or variant == "dense" else f"{variant} (control)"
        listing = ", ".join(f"{fmt_pct(m, True)} % at {fmt_value(v)}" for v, m in pts)
        if len(pts) == 1:
            out.append(f"{label}: gain {listing} (one value only).")
            continue
        steps = [b - a for (_, a), (_, b) in zip(pts, pts[1:])]
        if all(step >= -0.005 for step in steps) and pts[-1][1] - pts[0][1] >= 0.005:
            shape = "rises throughout"
        elif all(step <= 0.005 for step in steps) and pts[0][1] - pts[-1][1] >= 0.005:
            shape = "falls throughout"
        elif all(abs(m - pts[0][1]) < 0.005 for _, m in pts):
            shape = "stays flat"
        else:
            shape = "is not monotone"
        best_v, best_m = max(pts, key=lambda p: p[1])
        out.append(f"{label}: gain {shape} ({listing}); largest {fmt_pct(best_m, True)} % at {fmt_value(best_v)}.")
    return out


def sweep_section(frame: pd.DataFrame, meta: dict, out_dir: Path, tables: _Tables) -> list[str]:
    """Per-cell table, computed trend sentences and the two sweep figures."""
    axis = study_axes(meta)[0]
    out = [f"## Sweep over `{axis}`", ""]
    if axis not in frame.columns:
        return out + [f"No record has the field `{axis}`; nothing to report.", ""]
    out.append(cell_table(frame, [axis], tables,
                          f"Accuracy and relative gain over dense per `{axis}` and variant on {DATA_NAME} "
                          "formulas (gain: (acc − acc_dense)/acc_dense, paired by seed).",
                          show_gap=meta.get("study") == "data"))
    sentences = trend_sentences(frame, axis)
    if sentences:
        out += [f"Trend of the relative gain along `{axis}`:", ""] + [f"- {s}" for s in sentences] + [""]
    out += ["### Figures", ""]
    for name, caption in plot_sweep(frame, meta, axis, out_dir):
        out.append(_figure_md(name, caption))
    return out


def fold_fits(frame: pd.DataFrame) -> dict[tuple[str, str], dict[str, float]]:
    """Least-squares fits ``fold change ≈ slope · relative_gain + intercept`` per (variant, metric).

    Uses :func:`torchfpe.metrics.linear_fit` over the runs with finite values; a fit that is not
    defined (fewer than 2 points, all gains equal) is left out.
    """
    from torchfpe.metrics import linear_fit

    fits: dict[tuple[str, str], dict[str, float]] = {}
    variants = [v for v in ordered_variants(frame["variant"]) if v != "dense"]
    groups = [(v, frame[frame["variant"] == v]) for v in variants]
    groups.append(("all non-dense", frame[frame["variant"] != "dense"]))
    for variant, sub in groups:
        for metric, _ in FOLD_METRICS:
            gx, fy = _column(sub, "relative_gain").to_numpy(), _column(sub, metric).to_numpy()
            keep = np.isfinite(gx) & np.isfinite(fy)
            try:
                fits[(variant, metric)] = linear_fit(gx[keep].tolist(), fy[keep].tolist())
            except ValueError:
                continue
    return fits


def metrics_section(frame: pd.DataFrame, meta: dict, out_dir: Path, tables: _Tables) -> list[str]:
    """Fits of fold change against relative gain, the per-cell table and ``fold_vs_gain.png``."""
    axes = study_axes(meta)
    out = ["## Interference metrics vs accuracy gain", ""]
    fits = fold_fits(frame)
    variants = [v for v in ordered_variants(frame["variant"]) if v != "dense"] + ["all non-dense"]
    rows = []
    for variant in variants:
        for metric, label in FOLD_METRICS:
            fit = fits.get((variant, metric))
            if fit is None:
                sub = frame if variant == "all non-dense" else frame[frame["variant"] == variant]
                n = int((np.isfinite(_column(sub, "relative_gain")) & np.isfinite(_column(sub, metric))).sum())
                rows.append([variant, label, DASH, DASH, DASH, n])
            else:
                rows.append([variant, label, fmt_num(fit["slope"]), fmt_num(fit["intercept"]),
                             f"{fit['r2']:.3f}", int(fit["n"])])
    out.append(tables(
        ["variant", "metric", "slope", "intercept", "R²", "n runs"], rows,
        f"Least-squares fit fold change = slope × relative gain + intercept over all runs "
        f"(fold change = variant / dense of the same config and seed; relative gain as a fraction), "
        f"{DATA_NAME} formulas."))
    out.append("")
    cell_axes = [a for a in axes if a in frame.columns]
    out.append(cell_table(frame, cell_axes, tables,
                          f"Accuracy and relative gain per cell ({', '.join(cell_axes) or 'no axis'}) "
                          f"and variant on {DATA_NAME} formulas."))
    out += ["### Figures", ""]
    plot_fold_vs_gain(frame, meta, fits, out_dir / "fold_vs_gain.png")
    out.append(_figure_md("fold_vs_gain.png", _data_caption(meta, "metric fold change vs relative gain, "
                                                                   "one point per run, with fits")))
    return out


def _theory_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Theory records averaged per (k, alpha) (trials summed)."""
    num = frame.copy()
    for col in THEORY_FIELDS:
        if col in num.columns:
            num[col] = pd.to_numeric(num[col], errors="coerce")
    agg = {c: "mean" for c in num.columns if c not in ("k", "alpha", "trials", "seed")}
    if "trials" in num.columns:
        agg["trials"] = "sum"
    return num.groupby(["k", "alpha"], as_index=False).agg(agg)


def theory_section(frame: pd.DataFrame, meta: dict, out_dir: Path, tables: _Tables) -> list[str]:
    """Table k × alpha of Monte-Carlo vs formula vs exact probabilities, and ``collisions.png``."""
    out = ["## Collision theory for random splits", ""]
    if not {"k", "alpha"} <= set(frame.columns):
        return out + ["Theory records need `k` and `alpha`; nothing to report.", ""]
    table = _theory_table(frame)
    rows = []
    for _, r in table.iterrows():
        rows.append([fmt_value(r["k"]), fmt_value(r["alpha"]), fmt_value(r.get("n_vars", DASH)),
                     fmt_value(r.get("trials", DASH))]
                    + [fmt_num(r.get(c, math.nan), 4) for c in (
                        "collision_mc", "collision_theory", "collision_balanced_exact",
                        "coverage_mc", "coverage_theory", "coverage_balanced_exact")])
    out.append(tables(
        ["k", "α", "n vars", "trials", "collision MC", "α^−(2k−1)", "collision balanced exact",
         "coverage MC", "α^−(k−1)", "coverage balanced exact"], rows,
        f"Probability that two k-literal clauses of {DATA_NAME} formulas land wholly in one child "
        "(collision) and that one clause does (coverage) under a random balanced split into α children: "
        "Monte Carlo vs approximation formula vs exact value for a balanced partition."))
    out += ["", "### Figures", ""]
    plot_collisions(frame, meta, out_dir / "collisions.png")
    out.append(_figure_md("collisions.png", f"Collision and coverage probability vs α for clauses of "
                                            f"{DATA_NAME} formulas (log scale)."))
    return out


# ------------------------------------------------------------------------------------ public API


def write_report(out_dir: str | Path, meta: dict, records: list[dict]) -> Path:
    """Write ``records.csv``, ``report.md`` and the study's figures into ``out_dir``.

    Args:
        out_dir: output folder (created if needed).
        meta: ``study`` (headline / neurons / clauses / alpha / metrics / data / theory),
            ``axis`` (swept field, a list for metrics, None for headline/theory), ``seeds``,
            ``command``, ``base`` (base config dict), ``date``, ``dataset_note``.
        records: flat training records (one per config, variant, seed; ``hidden_weight`` is
            used for figures only) or theory records for ``study == "theory"``.

    Returns:
        The path of ``report.md``.

    Raises:
        ValueError: for an unknown study, or a sweep study without an axis.
    """
    study = meta.get("study")
    if study not in STUDIES:
        raise ValueError(f"unknown study {study!r}; expected one of {sorted(STUDIES)}")
    if (study in SWEEP_STUDIES or study == "metrics") and not study_axes(meta):
        raise ValueError(f"study {study!r} needs meta['axis']")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = records_frame(list(records), meta)
    frame.to_csv(out / "records.csv", index=False)

    tables = _Tables()
    lines = _header(meta)
    lines += [_base_table(meta, tables), ""]
    if frame.empty:
        lines += ["No records were given; nothing to report.", ""]
    elif study == "theory":
        lines += theory_section(frame, meta, out, tables)
    elif "variant" not in frame.columns:
        lines += ["Records have no `variant` field; nothing to report.", ""]
    elif study == "headline":
        lines += headline_section(frame, meta, list(records), out, tables)
    elif study == "metrics":
        lines += metrics_section(frame, meta, out, tables)
    else:
        lines += sweep_section(frame, meta, out, tables)
    lines += ["", "Raw per-run results: [records.csv](records.csv).", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
