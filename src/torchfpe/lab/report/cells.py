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
from typing import Any
from pathlib import Path

import numpy as np
import pandas as pd

from .constants import DASH, is_fpe, wide_scale
from .figures import (LINESTYLES, MARKERS, ci_text, cut_text, dodge, draw_errorbar, honest_ylim, metric_ylim, pyplot,
                      save_figure, seed_count, seeds_text, use_log_x, variant_color, variant_marker)
from .markdown import figure_md, Tables
from .pages import page_name, register_page
from .sections import paired_values, trend_sentences
from .metric import metric_of
from .stats import (axis_key, column_values, constant_text, fmt_ci, fmt_p, fmt_pm, fmt_value, is_finite,
                    ordered_variants, paired_test, study_axes, summarize)



def _cells(frame: pd.DataFrame, axes: list[str]) -> list[tuple[tuple, pd.DataFrame]]:
    """(values, sub-frame) per combination of ``axes`` present in ``frame``, in axis order."""
    if not axes:
        return [((), frame)]
    cells = sorted({tuple(row[a] for a in axes) for _, row in frame.iterrows()},
                   key=lambda c: tuple(axis_key(v) for v in c))
    out = []
    for cell in cells:
        mask = np.ones(len(frame), dtype=bool)
        for a, v in zip(axes, cell):
            mask &= (frame[a] == v).to_numpy()
        out.append((cell, frame[mask]))
    return out


def _paired_vs_dense(sub: pd.DataFrame, meta: dict, variant: str):
    return paired_test(*paired_values(sub, meta, variant, "dense"))


def _label(variant: str) -> str:
    if is_fpe(variant) or variant == "dense":
        return variant
    scale = wide_scale(variant)
    return f"dense ×{scale:g} non-zeros" if scale is not None else f"{variant} (control)"


def cell_axes(frame: pd.DataFrame, meta: dict) -> list[str]:
    axes = [a for a in study_axes(meta) if a in frame.columns]
    if "dataset" in frame.columns and frame["dataset"].nunique() > 1:
        axes = ["dataset"] + axes
    return axes


def accuracy_table(frame: pd.DataFrame, meta: dict, axes: list[str], tables: Tables) -> str:
    """Per cell and variant: the metric (mean ± std, CI), the gain over dense and a paired test against dense."""
    metric = metric_of(meta)
    rows = []
    for cell, sub_cell in _cells(frame, axes):
        for v in ordered_variants(sub_cell["variant"]):
            sub = sub_cell[sub_cell["variant"] == v]
            test = metric.summarize(column_values(sub, metric.key))
            gain = summarize(column_values(sub, "relative_gain"))
            paired = _paired_vs_dense(sub_cell, meta, v) if v != "dense" else None
            rows.append([fmt_value(x) for x in cell] + [
                _label(v), test.n, metric.fmt_pm(test), metric.fmt_ci(test.ci_low, test.ci_high),
                fmt_pm(gain, signed=True) if v != "dense" else DASH,
                fmt_ci(gain.ci_low, gain.ci_high, signed=True) if v != "dense" else DASH,
                fmt_p(paired.p) if paired else DASH,
                constant_text(column_values(sub, "nonzero_parameters")),
                constant_text(column_values(sub, "hidden_units"))])
    header = list(axes) + ["variant", "n seeds", f"{metric.header}{metric.unit} (mean ± std)",
                           f"{metric.header} 95 % CI", "rel. gain vs dense % (mean ± std)", "rel. gain 95 % CI",
                           "paired t-test p", "non-zero params", "hidden units"]
    if metric.is_accuracy:
        caption = (f"Test accuracy and relative gain over the dense model of the same seed "
                   f"((acc − acc_dense)/acc_dense) per cell and variant on {meta['data_name']}; "
                   "p: paired t-test (scipy.stats.ttest_rel) of accuracy against dense over seeds.")
    else:
        caption = (f"{metric.label.capitalize()} ({metric.direction}) and relative gain over the dense model of the "
                   f"same seed (signed so that positive is better than dense) per cell and variant on "
                   f"{meta['data_name']}; p: paired t-test (scipy.stats.ttest_rel) of {metric.label} against dense "
                   "over seeds.")
    return tables(header, rows, caption)


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


def paper_section(frame: pd.DataFrame, meta: dict, tables: Tables) -> list[str]:
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
                sub = sub_data[(sub_data["variant"] == split) & (column_values(sub_data, "alpha") == float(alpha))]
                gain = summarize(column_values(sub, "relative_gain"))
                rows.append([dataset, split, alpha, f"{value:+.1f}", gain.n, fmt_pm(gain, signed=True),
                             fmt_ci(gain.ci_low, gain.ci_high, signed=True)])
    out.append(tables(["data set", "split", "α", "paper rel. gain %", "our runs", "ours % (mean ± std over "
                       "seeds and widths)", "ours 95 % CI"], rows,
                      f"Relative gain of FPE over dense: the paper ({source}) and ours."))
    return out + [""]


def match_section(frame: pd.DataFrame, meta: dict, axes: list[str], tables: Tables) -> list[str]:
    """How many non-zeros a dense model needs to reach FPE: wide<scale> runs against each FPE split."""
    metric = metric_of(meta)
    wides = sorted({str(v) for v in frame["variant"].unique() if wide_scale(v) is not None}, key=wide_scale)
    fpe = [v for v in ordered_variants(frame["variant"]) if is_fpe(v)]
    if not wides or not fpe:
        return []
    out = ["### How much larger must dense be to match FPE?", ""]
    rows, sentences = [], []
    for cell, sub in _cells(frame, axes):
        dense_nz = column_values(sub[sub["variant"] == "dense"], "nonzero_parameters").mean()
        for split in fpe:
            target = metric.summarize(column_values(sub[sub["variant"] == split], metric.key))
            parent = metric.summarize(column_values(sub[sub["variant"] == "dense"], metric.key))
            reached = None
            if is_finite(parent.mean) and is_finite(target.mean) and metric.reaches(parent.mean, target.mean):
                reached = ("dense, the parent's width", 1.0)  # FPE gains nothing to match here
            for wide in wides:
                acc = metric.summarize(column_values(sub[sub["variant"] == wide], metric.key))
                nz = column_values(sub[sub["variant"] == wide], "nonzero_parameters").mean()
                rows.append([fmt_value(x) for x in cell] + [
                    split, metric.fmt_pm(target), wide,
                    f"{nz / dense_nz:.2f}" if is_finite(dense_nz) and dense_nz else DASH,
                    metric.fmt_pm(acc), metric.fmt(acc.mean - target.mean, signed=True)])
                if (reached is None and is_finite(acc.mean) and is_finite(target.mean)
                        and metric.reaches(acc.mean, target.mean)):
                    reached = (wide, nz / dense_nz)
            where = ", ".join(f"{a} = {fmt_value(v)}" for a, v in zip(axes, cell)) or "all runs"
            sentences.append(
                f"{where}: {split} FPE ({metric.with_unit(target.mean)}) is matched by the dense model with "
                f"{reached[1]:.2f}× the non-zeros ({reached[0]})." if reached else
                f"{where}: no wider dense model up to {wide_scale(wides[-1]):g}× the non-zeros reached "
                f"{split} FPE ({metric.with_unit(target.mean)}).")
    out.append(tables(list(axes) + ["FPE split", f"FPE {metric.header}{metric.unit}", "dense variant",
                                    "non-zeros / parent", f"dense {metric.header}{metric.unit}",
                                    f"dense − FPE ({metric.difference_unit})"], rows,
                      f"Wider dense models (trained from scratch for T1 + T2) against FPE at the parent's "
                      f"non-zero count, mean ± std over seeds, on {meta['data_name']}"
                      + ("." if metric.is_accuracy else f"; {metric.label}: {metric.direction}.")))
    return out + [f"Smallest dense model that reaches FPE's mean {metric.label}:", ""] + [f"- {s}" for s in sentences] + [""]


def _trends(frame: pd.DataFrame, axes: list[str]) -> list[str]:
    """Trend sentences of the relative gain along the first numeric swept field, per other cell."""
    numeric = [a for a in axes if a != "dataset" and all(is_finite(v) for v in frame[a].dropna().unique())]
    if not numeric:
        return []
    axis = numeric[0]
    others = [a for a in axes if a != axis]
    out = []
    for cell, sub in _cells(frame, others):
        prefix = ", ".join(f"{a} = {fmt_value(v)}" for a, v in zip(others, cell))
        sub = sub[sub["variant"].map(wide_scale).isna()]  # trends of FPE and controls only
        out += [f"{prefix}: {s}" if prefix else s for s in trend_sentences(sub, axis)]
    return [f"Trend of the relative gain along `{axis}`:", ""] + [f"- {s}" for s in out] + [""] if out else []


def ignored_fields(lines: dict[tuple, Any], fields: list[str]) -> list[str]:
    """The fields whose value never changes a line: every two cells that differ only in that field
    draw the same line (dense ignores alpha, but not neurons)."""
    ignored = []
    for k, name in enumerate(fields):
        keys = list(lines)
        pairs = [(a, b) for n, a in enumerate(keys) for b in keys[n + 1:]
                 if all(x == y for i, (x, y) in enumerate(zip(a, b)) if i != k)]
        if pairs and all(lines[a] == lines[b] for a, b in pairs):
            ignored.append(name)
    return ignored


def plot_cells(frame: pd.DataFrame, meta: dict, axes: list[str], out_dir: Path) -> list[tuple[str, str]]:
    """The metric and the gain against the first swept field: one colour per variant (the same in every
    figure), one line style and marker per value of the other swept fields (e.g. α), both legends shown."""
    numeric = [a for a in axes if a != "dataset"]
    if not numeric:
        return []
    plt = pyplot()
    from matplotlib.lines import Line2D

    metric = metric_of(meta)
    axis, others = numeric[0], [a for a in axes if a != numeric[0]]
    values = sorted(frame[axis].dropna().unique().tolist(), key=axis_key)
    x_all = [float(v) if is_finite(v) else i for i, v in enumerate(values)]
    cells = _cells(frame, others)
    all_variants = ordered_variants(frame["variant"])
    figures = []

    def mark(j: int, variant: str) -> str:
        # markers tell the other swept fields' values apart; with none, a variant's budget or carry modifier
        return MARKERS[j % len(MARKERS)] if others else variant_marker(variant)

    for key, ylabel, name, title in (
            (metric.key, metric.axis_label, f"{metric.figure_stem}_vs_{axis}.png",
             f"{metric.label.capitalize()} vs {axis}"),
            ("relative_gain", "relative gain vs dense (%)", f"gain_vs_{axis}.png",
             f"Relative gain over dense vs {axis}")):
        fig, ax = plt.subplots(figsize=(8.4, 4.8))
        drawn, variants_drawn, seen, dense_once, dense_lines = [], [], set(), False, {}
        for j, (cell, sub_cell) in enumerate(cells):
            for variant in ordered_variants(sub_cell["variant"]):
                if key == "relative_gain" and variant == "dense":
                    continue
                sub = sub_cell[sub_cell["variant"] == variant]
                xs, sums = [], []
                for x, v in zip(x_all, values):
                    summary = metric.summarize if key == metric.key else summarize
                    s = summary(column_values(sub[sub[axis] == v], key))
                    if s.n:
                        xs.append(x)
                        sums.append(s)
                series = (variant, tuple(xs), tuple(round(s.mean, 12) for s in sums))
                if variant == "dense":
                    dense_lines[tuple(cell)] = series
                if variant == "dense" and series in seen:
                    dense_once = True
                    continue  # dense ignores e.g. alpha: its runs of another alpha are the same line again
                seen.add(series)
                if xs:
                    drawn += sums
                    if variant not in variants_drawn:
                        variants_drawn.append(variant)
                    line = j * len(all_variants) + all_variants.index(variant)
                    xs = dodge(xs, line, len(cells) * len(all_variants), log=use_log_x(x_all),
                                span=max(x_all) - min(x_all))
                    draw_errorbar(ax, xs, sums, scale=metric.scale if key == metric.key else 100.0,
                              marker=mark(j, variant), color=variant_color(variant),
                              linestyle=LINESTYLES[j % len(LINESTYLES)], markersize=5)
        if key == "relative_gain":
            ax.axhline(0.0, color="grey", linewidth=0.8)
        if use_log_x(x_all):
            ax.set_xscale("log", base=2)
        ax.set_xticks(x_all, [fmt_value(v) for v in values])
        if len(x_all) == 1:
            ax.set_xlim(x_all[0] - 1.0, x_all[0] + 1.0)
        ax.minorticks_off()
        ax.set_xlabel(axis)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        cut = (metric_ylim(ax, drawn, metric) if key == metric.key
               else honest_ylim(ax, drawn, scale=100.0, min_span=10.0, zero=True))
        # two legends: colour = variant, line style and marker = the other swept fields' values
        colours = [Line2D([], [], color=variant_color(v), marker=mark(0, v) if not others else "o", linestyle="-",
                          label=f"dense (the same for every {', '.join(ignored_fields(dense_lines, others))})"
                          if v == "dense" and dense_once and ignored_fields(dense_lines, others)
                          else _label(v)) for v in variants_drawn]
        legend = ax.legend(handles=colours, title="variant", fontsize=7, title_fontsize=7, loc="upper left",
                           bbox_to_anchor=(1.01, 1.0))
        if others:
            ax.add_artist(legend)
            styles = [Line2D([], [], color="black", marker=MARKERS[j % len(MARKERS)],
                             linestyle=LINESTYLES[j % len(LINESTYLES)],
                             label=", ".join(f"{a} = {fmt_value(v)}" for a, v in zip(others, cell)))
                      for j, (cell, _) in enumerate(cells)]
            ax.legend(handles=styles, title=", ".join(others), fontsize=7, title_fontsize=7, loc="lower left",
                      bbox_to_anchor=(1.01, 0.0))
        seeds = seed_count(frame)
        caption = (f"Data: {meta['data_name']}; {seeds_text(seeds if seeds is not None else meta.get('seeds', DASH))}; "
                   f"{ci_text(drawn)} vs {axis}" + (f"; line style and marker: {', '.join(others)}" if others else "")
                   + "; points nudged sideways so that none hides another" + cut_text(cut)
                   + ("; gain = (dense − variant) / dense, positive = better"
                      if key == "relative_gain" and not metric.higher_is_better else "") + ".")
        save_figure(fig, out_dir / name, caption, right=0.8)
        figures.append((name, caption))
    return figures


def cells_section_page(frame: pd.DataFrame, meta: dict, records: list[dict], out_dir: Path,
                       tables: Tables) -> list[str]:
    """The ``cells`` and ``match`` pages' section (the page's signature)."""
    return cells_section(frame, meta, out_dir, tables)


def cells_section(frame: pd.DataFrame, meta: dict, out_dir: Path, tables: Tables) -> list[str]:
    axes = cell_axes(frame, meta)
    metric = metric_of(meta)
    what = "Accuracy" if metric.is_accuracy else metric.name.capitalize()
    out = [f"## {what} and relative gain per {', '.join(f'`{a}`' for a in axes) or 'variant'}", ""]
    out += [accuracy_table(frame, meta, axes, tables), ""]
    if page_name(meta) == "match":
        out += match_section(frame, meta, [a for a in axes], tables)
    out += _trends(frame, axes)
    out += paper_section(frame, meta, tables)
    figures = plot_cells(frame, meta, axes, out_dir)
    if figures:
        out += ["### Figures", ""] + [figure_md(name, caption) for name, caption in figures]
    return out


register_page("cells", cells_section_page, description="real-model grids: the metric and gain per cell with spreads, "
              "CIs and paired tests")
register_page("match", cells_section_page, description="cells, plus how much wider dense must be to match FPE")
