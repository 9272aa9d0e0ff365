"""The ``cells`` and ``match`` layouts: real-model grids (widths × alpha × classes …) of any data set.

Per cell of the swept fields and variant: absolute test accuracy (mean ± std, 95 % CI), relative
gain over the dense run of the same seed (mean ± std, 95 % CI) and a paired t-test against dense.
Runs pair by their config without the seed and by seed, never across data sets
(:func:`~.stats.pairing_columns`). The paper's numbers (``meta["paper"]["relative_gain"]``, keyed
by data-set name) appear only for a data set whose name matches. ``match`` adds how much wider
(more non-zeros) a dense model must be to reach FPE's accuracy (variants ``wide<scale>``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from .constants import DASH, is_fpe
from .figures import _color, _errorbar, _marker, _pyplot, _save, _use_log_x
from .markdown import _figure_md, _Tables
from .sections import _paired_values, trend_sentences
from .stats import (_axis_key, _column, _constant, _ok, fmt_ci, fmt_p, fmt_pct, fmt_pm, fmt_value,
                    ordered_variants, paired_test, study_axes, summarize, summarize_accuracy)

WIDE = re.compile(r"^wide(\d+(?:\.\d+)?)$")


def _cells(frame: pd.DataFrame, axes: list[str]) -> list[tuple[tuple, pd.DataFrame]]:
    """(values, sub-frame) per combination of ``axes`` present in ``frame``, in axis order."""
    if not axes:
        return [((), frame)]
    cells = sorted({tuple(row[a] for a in axes) for _, row in frame.iterrows()},
                   key=lambda c: tuple(_axis_key(v) for v in c))
    out = []
    for cell in cells:
        mask = np.ones(len(frame), dtype=bool)
        for a, v in zip(axes, cell):
            mask &= (frame[a] == v).to_numpy()
        out.append((cell, frame[mask]))
    return out


def _paired_vs_dense(sub: pd.DataFrame, meta: dict, variant: str):
    return paired_test(*_paired_values(sub, meta, variant, "dense"))


def _label(variant: str) -> str:
    if is_fpe(variant) or variant == "dense":
        return variant
    wide = WIDE.match(variant)
    return f"dense ×{wide.group(1)} non-zeros" if wide else f"{variant} (control)"


def cell_axes(frame: pd.DataFrame, meta: dict) -> list[str]:
    axes = [a for a in study_axes(meta) if a in frame.columns]
    if "dataset" in frame.columns and frame["dataset"].nunique() > 1:
        axes = ["dataset"] + axes
    return axes


def accuracy_table(frame: pd.DataFrame, meta: dict, axes: list[str], tables: _Tables) -> str:
    rows = []
    for cell, sub_cell in _cells(frame, axes):
        for v in ordered_variants(sub_cell["variant"]):
            sub = sub_cell[sub_cell["variant"] == v]
            test = summarize_accuracy(_column(sub, "test_accuracy"))
            gain = summarize(_column(sub, "relative_gain"))
            paired = _paired_vs_dense(sub_cell, meta, v) if v != "dense" else None
            rows.append([fmt_value(x) for x in cell] + [
                _label(v), test.n, fmt_pm(test), fmt_ci(test.ci_low, test.ci_high),
                fmt_pm(gain, signed=True) if v != "dense" else DASH,
                fmt_ci(gain.ci_low, gain.ci_high, signed=True) if v != "dense" else DASH,
                fmt_p(paired.p) if paired else DASH,
                _constant(_column(sub, "nonzero_parameters")), _constant(_column(sub, "hidden_units"))])
    header = list(axes) + ["variant", "n seeds", "test acc % (mean ± std)", "test acc 95 % CI",
                           "rel. gain vs dense % (mean ± std)", "rel. gain 95 % CI", "paired t-test p",
                           "non-zero params", "hidden units"]
    return tables(header, rows, f"Test accuracy and relative gain over the dense model of the same seed "
                                f"((acc − acc_dense)/acc_dense) per cell and variant on {meta['data_name']}; "
                                "p: paired t-test (scipy.stats.ttest_rel) of accuracy against dense over seeds.")


def _normal(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(text).lower())


def paper_key(dataset: str, standin: bool, paper: dict) -> str | None:
    """The paper's data set that ``dataset`` is: not a stand-in, its name holds the encoder and the set's name."""
    if standin or _normal(paper.get("encoder", "")) not in _normal(dataset):
        return None
    for key in sorted(paper.get("relative_gain") or {}, key=lambda k: -len(_normal(k))):
        if _normal(key) in _normal(dataset):
            return key
    return None


def _is_standin(frame: pd.DataFrame, dataset: str) -> bool:
    if "standin" not in frame.columns:
        return False
    values = frame.loc[frame["dataset"] == dataset, "standin"]
    return bool(values.map(lambda v: str(v).lower() in ("true", "1")).any())


def paper_section(frame: pd.DataFrame, meta: dict, tables: _Tables) -> list[str]:
    """The paper's relative gains beside ours, only for the data set the paper used (no stand-in)."""
    paper = meta.get("paper") or {}
    gains = paper.get("relative_gain") or {}
    if not gains:
        return []
    datasets = [str(d) for d in frame["dataset"].dropna().unique()] if "dataset" in frame.columns else []
    matched = [(d, k) for d in datasets if (k := paper_key(d, _is_standin(frame, d), paper))]
    source = paper.get("source", "the paper")
    if not matched:
        sets = ", ".join(f"{paper.get('encoder', '')} {k}".strip() for k in gains)
        return [f"The paper's relative gains ({source}) are for {sets}; {meta['data_name']} is none of them, "
                "so no paper numbers are shown.", ""]
    out = ["### The paper's numbers on the same data set", ""]
    rows = []
    for dataset, key in matched:
        sub_data = frame[frame["dataset"] == dataset]
        for split, by_alpha in gains[key].items():
            for alpha, value in by_alpha.items():
                sub = sub_data[(sub_data["variant"] == split) & (_column(sub_data, "alpha") == float(alpha))]
                gain = summarize(_column(sub, "relative_gain"))
                rows.append([dataset, split, alpha, f"{value:+.1f}", gain.n, fmt_pm(gain, signed=True),
                             fmt_ci(gain.ci_low, gain.ci_high, signed=True)])
    out.append(tables(["data set", "split", "α", "paper rel. gain %", "our runs", "ours % (mean ± std over "
                       "seeds and widths)", "ours 95 % CI"], rows,
                      f"Relative gain of FPE over dense: the paper ({source}) and ours."))
    return out + [""]


def match_section(frame: pd.DataFrame, meta: dict, axes: list[str], tables: _Tables) -> list[str]:
    """How many non-zeros a dense model needs to reach FPE: wide<scale> runs against each FPE split."""
    wides = sorted({v for v in frame["variant"].unique() if WIDE.match(str(v))}, key=lambda v: float(WIDE.match(v).group(1)))
    fpe = [v for v in ordered_variants(frame["variant"]) if is_fpe(v)]
    if not wides or not fpe:
        return []
    out = ["### How much larger must dense be to match FPE?", ""]
    rows, sentences = [], []
    for cell, sub in _cells(frame, axes):
        dense_nz = _column(sub[sub["variant"] == "dense"], "nonzero_parameters").mean()
        for split in fpe:
            target = summarize_accuracy(_column(sub[sub["variant"] == split], "test_accuracy"))
            reached = None
            for wide in wides:
                acc = summarize_accuracy(_column(sub[sub["variant"] == wide], "test_accuracy"))
                nz = _column(sub[sub["variant"] == wide], "nonzero_parameters").mean()
                rows.append([fmt_value(x) for x in cell] + [
                    split, fmt_pm(target), wide, f"{nz / dense_nz:.2f}" if _ok(dense_nz) and dense_nz else DASH,
                    fmt_pm(acc), fmt_pct(acc.mean - target.mean, signed=True)])
                if reached is None and _ok(acc.mean) and _ok(target.mean) and acc.mean >= target.mean:
                    reached = (wide, nz / dense_nz)
            where = ", ".join(f"{a} = {fmt_value(v)}" for a, v in zip(axes, cell)) or "all runs"
            sentences.append(
                f"{where}: {split} FPE ({fmt_pct(target.mean)} %) is matched by the dense model with "
                f"{reached[1]:.2f}× the non-zeros ({reached[0]})." if reached else
                f"{where}: no wider dense model up to {WIDE.match(wides[-1]).group(1)}× the non-zeros reached "
                f"{split} FPE ({fmt_pct(target.mean)} %).")
    out.append(tables(list(axes) + ["FPE split", "FPE test acc %", "dense variant", "non-zeros / parent",
                                    "dense test acc %", "dense − FPE (pct points)"], rows,
                      f"Wider dense models (trained from scratch for T1 + T2 epochs) against FPE at the parent's "
                      f"non-zero count, mean ± std over seeds, on {meta['data_name']}."))
    return out + ["Smallest dense model that reaches FPE's mean test accuracy:", ""] + [f"- {s}" for s in sentences] + [""]


def _trends(frame: pd.DataFrame, axes: list[str]) -> list[str]:
    """Trend sentences of the relative gain along the first numeric swept field, per other cell."""
    numeric = [a for a in axes if a != "dataset" and all(_ok(v) for v in frame[a].dropna().unique())]
    if not numeric:
        return []
    axis = numeric[0]
    others = [a for a in axes if a != axis]
    out = []
    for cell, sub in _cells(frame, others):
        prefix = ", ".join(f"{a} = {fmt_value(v)}" for a, v in zip(others, cell))
        sub = sub[~sub["variant"].astype(str).str.match(WIDE.pattern)]  # trends of FPE and controls only
        out += [f"{prefix}: {s}" if prefix else s for s in trend_sentences(sub, axis)]
    return [f"Trend of the relative gain along `{axis}`:", ""] + [f"- {s}" for s in out] + [""] if out else []


def plot_cells(frame: pd.DataFrame, meta: dict, axes: list[str], out_dir: Path) -> list[tuple[str, str]]:
    """Accuracy and gain against the first swept field, one line per (variant, other fields)."""
    numeric = [a for a in axes if a != "dataset"]
    if not numeric:
        return []
    plt = _pyplot()
    axis, others = numeric[0], [a for a in axes if a != numeric[0]]
    values = sorted(frame[axis].dropna().unique().tolist(), key=_axis_key)
    x_all = [float(v) if _ok(v) else i for i, v in enumerate(values)]
    styles = ["-", "--", ":", "-."]
    figures = []
    # A study that names its own metric (the LM's bits/byte) plots that, not the empty accuracy column.
    metric = meta.get("metric") or {}
    key0 = metric.get("key", "test_accuracy")
    percent = metric.get("percent", key0.endswith("accuracy"))
    lower = not metric.get("higher_is_better", True)
    label0 = metric.get("label", key0.replace("_", " ")) + (" (%)" if percent else "") + (
        " (lower is better)" if lower else "")
    name0 = f"accuracy_vs_{axis}.png" if key0 == "test_accuracy" else f"{key0}_vs_{axis}.png"
    for key, ylabel, name in ((key0, label0, name0),
                              ("relative_gain", "relative gain vs dense (%)", f"gain_vs_{axis}.png")):
        fig, ax = plt.subplots(figsize=(7.2, 4.6))
        for j, (cell, sub_cell) in enumerate(_cells(frame, others)):
            suffix = ", ".join(f"{a}={fmt_value(v)}" for a, v in zip(others, cell))
            for variant in ordered_variants(sub_cell["variant"]):
                if key == "relative_gain" and variant == "dense":
                    continue
                sub = sub_cell[sub_cell["variant"] == variant]
                xs, sums = [], []
                for x, v in zip(x_all, values):
                    summary = summarize_accuracy if key == key0 and percent else summarize
                    s = summary(_column(sub[sub[axis] == v], key))
                    if s.n:
                        xs.append(x)
                        sums.append(s)
                if xs:
                    scale = 1.0 if key == key0 and not percent else 100.0
                    _errorbar(ax, xs, sums, scale=scale, marker=_marker(variant), color=_color(variant),
                              linestyle=styles[j % len(styles)], label=f"{variant}" + (f" ({suffix})" if suffix else ""))
        if key == "relative_gain":
            ax.axhline(0.0, color="grey", linewidth=0.8)
        if _use_log_x(x_all):
            ax.set_xscale("log", base=2)
        ax.set_xticks(x_all, [fmt_value(v) for v in values])
        ax.minorticks_off()
        ax.set_xlabel(axis)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncol=2)
        gain_sign = ("; gain = (dense − variant) / dense, positive = better" if key == "relative_gain" and lower
                     else "")
        caption = (f"Data: {meta['data_name']}; {meta.get('seeds', DASH)} seeds; mean with 95 % t-CI over seeds "
                   f"vs {axis}" + (f"; line style: {', '.join(others)}" if others else "") + gain_sign + ".")
        _save(fig, out_dir / name, caption)
        figures.append((name, caption))
    return figures


def cells_section(frame: pd.DataFrame, meta: dict, out_dir: Path, tables: _Tables) -> list[str]:
    axes = cell_axes(frame, meta)
    out = [f"## Accuracy and relative gain per {', '.join(f'`{a}`' for a in axes) or 'variant'}", ""]
    out += [accuracy_table(frame, meta, axes, tables), ""]
    if meta.get("layout") == "match":
        out += match_section(frame, meta, [a for a in axes], tables)
    out += _trends(frame, axes)
    out += paper_section(frame, meta, tables)
    figures = plot_cells(frame, meta, axes, out_dir)
    if figures:
        out += ["### Figures", ""] + [_figure_md(name, caption) for name, caption in figures]
    return out
