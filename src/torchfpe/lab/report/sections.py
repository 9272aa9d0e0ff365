"""The per-study sections of ``report.md``: tables, computed trend sentences and figure links."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .constants import (
    THEORY_FIELDS,
    DASH,
    DATA_NAME,
    FOLD_METRICS,
    HEATMAP_VARIANTS,
    INTERFERENCE_METRICS,
    is_fpe,
)
from .figures import (
    data_caption,
    seed_count,
    heatmap_records,
    plot_collisions,
    plot_fold_vs_gain,
    plot_headline_accuracy,
    plot_heatmaps,
    plot_sweep,
)
from .markdown import figure_md, Tables
from .pages import register_page
from .metric import ACCURACY, Metric, metric_of
from .stats import (
    axis_key,
    column_values,
    constant_text,
    is_finite,
    theory_table,
    data_phrase,
    fmt_ci,
    fmt_fixed,
    fmt_num,
    fmt_p,
    fmt_pct,
    fmt_pm,
    fmt_value,
    ordered_variants,
    paired_test,
    pairing_columns,
    paper_numbers,
    study_axes,
    summarize,
    summarize_accuracy,
)


def headline_section(frame: pd.DataFrame, meta: dict, records: list[dict], out_dir: Path,
                     tables: Tables) -> list[str]:
    """Variant table, paired tests, interference metrics and the three headline figures."""
    out = ["## Headline: accuracy per variant", ""]
    variants = ordered_variants(frame["variant"])
    paper_numbers_ = paper_numbers(meta)
    paper_accuracy = paper_numbers_.get("accuracy") or {}
    rows = []
    for v in variants:
        sub = frame[frame["variant"] == v]
        test = summarize_accuracy(column_values(sub, "test_accuracy"))
        gain = summarize(column_values(sub, "relative_gain"))
        paper = f"{paper_accuracy[v]:.1f}" if v in paper_accuracy else DASH
        rows.append([v, test.n, fmt_pm(test), fmt_ci(test.ci_low, test.ci_high),
                     fmt_pct(summarize_accuracy(column_values(sub, "train_accuracy")).mean),
                     constant_text(column_values(sub, "nonzero_parameters")),
                     constant_text(column_values(sub, "hidden_units")),
                     fmt_pm(gain, signed=True), fmt_ci(gain.ci_low, gain.ci_high, signed=True), paper])
    out.append(tables(
        ["variant", "n seeds", "test acc % (mean ± std)", "test acc 95 % CI", "train acc %",
         "non-zero params", "hidden units", "rel. gain vs dense %", "rel. gain 95 % CI", "paper test acc %"],
        rows, f"Test accuracy per variant on {data_phrase(meta)}, at an equal non-zero parameter budget; "
              + (f"paper numbers from {paper_numbers_.get('source', 'the paper')}." if paper_accuracy
                 else "no paper numbers for this data set.")))
    out += _paper_config_note(meta)
    out += _paired_section(frame, meta, variants, tables)
    out += _interference_section(frame, meta, variants, tables)

    out += ["### Figures", ""]
    plot_headline_accuracy(frame, meta, out_dir / "accuracy.png")
    ci = "one seed: no CI" if seed_count(frame) == 1 else "95 % CI"
    out.append(figure_md("accuracy.png", data_caption(meta, f"test accuracy per variant, {ci}; "
                                                              "diamonds: paper", frame)))
    items = heatmap_records(frame, records, meta)
    if items:
        plot_heatmaps(items, meta, out_dir / "gram.png", gram=True)
        plot_heatmaps(items, meta, out_dir / "weights.png", gram=False)
        names = ", ".join(v for v, _, _ in items)
        shown = f"seed {', '.join(sorted({fmt_value(s) for _, s, _ in items}))}; one colour scale"
        out.append(figure_md("gram.png", data_caption(meta, f"|WᵀW| of the first hidden layer ({names}; "
                                                              f"{shown}, square root)", frame)))
        out.append(figure_md("weights.png", data_caption(meta, f"first hidden layer W, rows = hidden "
                                                                 f"units ({names}; {shown})", frame)))
    else:
        shown = "/".join(meta.get("heatmaps") or HEATMAP_VARIANTS)
        out.append(f"No `hidden_weight` was recorded for {shown} runs; `gram.png` and "
                   "`weights.png` were not drawn.\n")
    return out


def _paper_config_note(meta: dict) -> list[str]:
    """A warning when the base config differs from the paper's headline setting."""
    base = meta.get("base") or {}
    paper_config = paper_numbers(meta).get("config") or {}
    diffs = [f"{k} = {fmt_value(base[k])} (paper {v})" for k, v in paper_config.items()
             if k in base and is_finite(base[k]) and float(base[k]) != v]
    if not diffs:
        return []
    return [f"> Note: this run differs from the paper's headline setting: {'; '.join(diffs)}. "
            "The paper's numbers are shown for orientation only.", ""]


def paired_values(frame: pd.DataFrame, meta: dict, a: str, b: str) -> tuple[list[float], list[float]]:
    """The metric (test accuracy unless ``meta["metric"]`` names another) of variants ``a`` and ``b``, matched
    by config without the seed, data set and seed."""
    keys = pairing_columns(frame, meta)
    key = metric_of(meta).key

    def by_key(variant: str) -> dict[tuple, float]:
        sub = frame[frame["variant"] == variant]
        return {tuple(str(row[c]) for c in keys): float(row[key])
                for _, row in sub.iterrows() if is_finite(row.get(key))}

    xa, xb = by_key(a), by_key(b)
    common = [k for k in xa if k in xb]
    return [xa[k] for k in common], [xb[k] for k in common]


def _paired_section(frame: pd.DataFrame, meta: dict, variants: list[str], tables: Tables) -> list[str]:
    """Paired t-tests over seeds: each variant vs dense, and clause vs random."""
    pairs = [(v, "dense") for v in variants if v != "dense" and "dense" in variants]
    if "clause" in variants and "random" in variants:
        pairs.append(("clause", "random"))
    if not pairs:
        return []
    rows = []
    for a, b in pairs:
        xa, xb = paired_values(frame, meta, a, b)
        res = paired_test(xa, xb)
        rows.append([f"{a} − {b}", res.n, fmt_pct(res.mean_diff, signed=True),
                     fmt_ci(res.ci_low, res.ci_high, signed=True), fmt_num(res.t), fmt_p(res.p)])
    return ["### Paired tests over seeds", "", tables(
        ["comparison", "n pairs", "mean diff (pct points)", "95 % CI of diff", "t", "p"], rows,
        f"Paired t-tests (scipy.stats.ttest_rel) of test accuracy over seeds on {data_phrase(meta)}."), ""]


def _interference_section(frame: pd.DataFrame, meta: dict, variants: list[str], tables: Tables) -> list[str]:
    """Feature capacity and cosine similarity per variant (mean ± std over seeds)."""
    rows = []
    for v in variants:
        sub = frame[frame["variant"] == v]
        row: list[Any] = [v]
        for key, _ in INTERFERENCE_METRICS:
            s = summarize(column_values(sub, key))
            row.append(f"{fmt_fixed(s.mean)} ± {fmt_fixed(s.std)}" if s.n else DASH)
        rows.append(row)
    return ["### Interference metrics (first hidden layer)", "", tables(
        ["variant"] + [label for _, label in INTERFERENCE_METRICS], rows,
        f"Feature capacity (higher = less superposition) and mean pairwise cosine similarity of hidden "
        f"units' incoming weights (lower = less entangled), mean ± std over seeds, {data_phrase(meta)}."), ""]


def cell_table(frame: pd.DataFrame, axes: list[str], tables: Tables, caption: str,
               show_gap: bool = False, metric: Metric = ACCURACY) -> str:
    """One row per axis cell × variant: the metric on test and train, gain, non-zeros, hidden units."""
    axes = [a for a in axes if a in frame.columns]
    cells = sorted({tuple(row[a] for a in axes) for _, row in frame.iterrows()},
                   key=lambda c: tuple(axis_key(v) for v in c))
    rows = []
    for cell in cells:
        mask = np.ones(len(frame), dtype=bool)
        for a, v in zip(axes, cell):
            mask &= (frame[a] == v).to_numpy()
        sub_cell = frame[mask]
        for v in ordered_variants(sub_cell["variant"]):
            sub = sub_cell[sub_cell["variant"] == v]
            test = metric.summarize(column_values(sub, metric.key))
            train = metric.summarize(column_values(sub, metric.train_key))
            gain = summarize(column_values(sub, "relative_gain"))
            row = [fmt_value(x) for x in cell] + [
                v, test.n, f"{metric.fmt(test.mean)} {metric.fmt_ci(test.ci_low, test.ci_high)}",
                metric.fmt(train.mean)]
            if show_gap:
                gap = summarize(column_values(sub, metric.train_key) - column_values(sub, metric.key))
                row.append(metric.fmt_pm(gap))
            row += [f"{fmt_pct(gain.mean, True)} {fmt_ci(gain.ci_low, gain.ci_high, True)}"
                    if v != "dense" else fmt_pct(gain.mean, True),
                    constant_text(column_values(sub, "nonzero_parameters")),
                    constant_text(column_values(sub, "hidden_units"))]
            rows.append(row)
    train_header = "train acc" if metric.is_accuracy else f"train {metric.name}"
    header = list(axes) + ["variant", "n", f"{metric.header}{metric.unit} [95 % CI]", f"{train_header}{metric.unit}"]
    if show_gap:
        header.append(f"train − test gap ({metric.difference_unit}, mean ± std)")
    header += ["rel. gain % [95 % CI]", "non-zero params", "hidden units"]
    return tables(header, rows, caption)


def trend_sentences(frame: pd.DataFrame, axis: str, key: str = "relative_gain") -> list[str]:
    """One computed sentence per non-dense variant on how its mean ``key`` changes along ``axis``.

    Lists the mean at every axis value, says whether the sequence rises or falls throughout
    (changes under 0.5 percentage points count as flat) or not, and names the largest value.
    """
    out = []
    values = sorted(frame[axis].dropna().unique().tolist(), key=axis_key)
    for variant in [v for v in ordered_variants(frame["variant"]) if v != "dense"]:
        sub = frame[frame["variant"] == variant]
        pts = [(v, summarize(column_values(sub[sub[axis] == v], key)).mean) for v in values]
        pts = [(v, m) for v, m in pts if is_finite(m)]
        if not pts:
            continue
        label = variant if is_fpe(variant) or variant == "dense" else f"{variant} (control)"
        listing = ", ".join(f"{fmt_pct(m, True)} % at {fmt_value(v)}" for v, m in pts)
        if len(pts) == 1:
            out.append(f"{label}: gain {listing} (one value only).")
            continue
        steps = [b - a for (_, a), (_, b) in zip(pts, pts[1:])]
        if all(step >= -0.005 for step in steps) and pts[-1][1] - pts[0][1] >= 0.005:
            shape = "rises throughout" + (" (apart from dips under 0.5 points)" if min(steps) < -1e-9 else "")
        elif all(step <= 0.005 for step in steps) and pts[0][1] - pts[-1][1] >= 0.005:
            shape = "falls throughout" + (" (apart from rises under 0.5 points)" if max(steps) > 1e-9 else "")
        elif all(abs(m - pts[0][1]) < 0.005 for _, m in pts):
            shape = "stays flat"
        else:
            shape = "is not monotone"
        best_v, best_m = max(pts, key=lambda p: p[1])
        out.append(f"{label}: gain {shape} ({listing}); largest {fmt_pct(best_m, True)} % at {fmt_value(best_v)}.")
    return out


def sweep_section(frame: pd.DataFrame, meta: dict, out_dir: Path, tables: Tables) -> list[str]:
    """Per-cell table, computed trend sentences and the two sweep figures."""
    axis = study_axes(meta)[0]
    out = [f"## Sweep over `{axis}`", ""]
    if axis not in frame.columns:
        return out + [f"No record has the field `{axis}`; nothing to report.", ""]
    metric = metric_of(meta)
    if metric.is_accuracy:
        caption = (f"Accuracy and relative gain over dense per `{axis}` and variant on {data_phrase(meta)} "
                   "(gain: (acc − acc_dense)/acc_dense, paired by seed).")
    else:
        caption = (f"{metric.name.capitalize()} ({metric.direction}) and relative gain over dense per `{axis}` and "
                   f"variant on {data_phrase(meta)} (gain signed so that positive is better, paired by seed).")
    out.append(cell_table(frame, [axis], tables, caption, show_gap=bool(meta.get("show_train")), metric=metric))
    sentences = trend_sentences(frame, axis)
    if sentences:
        out += [f"Trend of the relative gain along `{axis}`:", ""] + [f"- {s}" for s in sentences] + [""]
    out += ["### Figures", ""]
    for name, caption in plot_sweep(frame, meta, axis, out_dir):
        out.append(figure_md(name, caption))
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
            gx, fy = column_values(sub, "relative_gain").to_numpy(), column_values(sub, metric).to_numpy()
            keep = np.isfinite(gx) & np.isfinite(fy)
            try:
                fits[(variant, metric)] = linear_fit(gx[keep].tolist(), fy[keep].tolist())
            except ValueError:
                continue
    return fits


def metrics_section(frame: pd.DataFrame, meta: dict, out_dir: Path, tables: Tables) -> list[str]:
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
                finite = np.isfinite(column_values(sub, "relative_gain")) & np.isfinite(column_values(sub, metric))
                n = int(finite.sum())
                rows.append([variant, label, DASH, DASH, DASH, n])
            else:
                rows.append([variant, label, fmt_num(fit["slope"]), fmt_num(fit["intercept"]),
                             f"{fit['r2']:.3f}", int(fit["n"])])
    out.append(tables(
        ["variant", "metric", "slope", "intercept", "R²", "n runs"], rows,
        f"Least-squares fit fold change = slope × relative gain + intercept over all runs "
        f"(fold change = variant / dense of the same config and seed; relative gain as a fraction), "
        f"{data_phrase(meta)}."))
    out.append("")
    cell_axes = [a for a in axes if a in frame.columns]
    out.append(cell_table(frame, cell_axes, tables,
                          f"Accuracy and relative gain per cell ({', '.join(cell_axes) or 'no axis'}) "
                          f"and variant on {data_phrase(meta)}."))
    out += ["### Figures", ""]
    plot_fold_vs_gain(frame, meta, fits, out_dir / "fold_vs_gain.png")
    out.append(figure_md("fold_vs_gain.png", data_caption(meta, "metric fold change vs relative gain, "
                                                                   "one point per run, with fits")))
    return out


def theory_section(frame: pd.DataFrame, meta: dict, out_dir: Path, tables: Tables) -> list[str]:
    """Table k × alpha of Monte-Carlo vs formula vs exact probabilities, and ``collisions.png``."""
    out = ["## Collision theory for random splits", ""]
    if not {"k", "alpha"} <= set(frame.columns):
        return out + ["Theory records need `k` and `alpha`; nothing to report.", ""]
    table = theory_table(frame)
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
    out.append(figure_md("collisions.png", f"Collision and coverage probability vs α for clauses of "
                                            f"{DATA_NAME} formulas (log scale)."))
    return out


# ------------------------------------------------------------------------------------- the pages
register_page("headline", lambda frame, meta, records, out, tables: headline_section(frame, meta, records, out, tables),
              description="variant table, paired tests, interference metrics, heat maps")
register_page("sweep", lambda frame, meta, records, out, tables: sweep_section(frame, meta, out, tables),
              needs_axis=True, description="one swept field: metric and gain against it")
register_page("grid", lambda frame, meta, records, out, tables: metrics_section(frame, meta, out, tables),
              needs_axis=True, description="fold change of the interference metrics against the gain over a grid")
register_page("theory", lambda frame, meta, records, out, tables: theory_section(frame, meta, out, tables),
              needs_variant=False, columns=THEORY_FIELDS, sort_by=("k", "alpha"),
              description="collision probabilities: Monte Carlo against theory")
