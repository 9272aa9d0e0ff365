"""Statistics, number formatting and small helpers on record values and record frames."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .constants import CONFIG_FIELDS, DASH, DATA_NAME, THEORY_FIELDS, variant_order


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
    arr = finite_values(values)
    n = int(arr.size)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(arr.mean())
    if n < 2:
        return Summary(n, mean, math.nan, math.nan, math.nan)
    std = float(arr.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def summarize_accuracy(values: Iterable[Any], confidence: float = 0.95) -> Summary:
    """:func:`summarize` for accuracies (fractions): the interval is clipped to [0, 1] (shown as [0, 100] %)."""
    s = summarize(values, confidence)
    if math.isnan(s.ci_low):
        return s
    return Summary(s.n, s.mean, s.std, max(0.0, s.ci_low), min(1.0, s.ci_high))


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


def finite_values(values: Iterable[Any]) -> np.ndarray:
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
    if not is_finite(value):
        return DASH
    return f"{100.0 * value:+.1f}" if signed else f"{100.0 * value:.1f}"


def fmt_pm(summary: Summary, signed: bool = False) -> str:
    """``"mean ± std"`` in percent."""
    return f"{fmt_pct(summary.mean, signed)} ± {fmt_pct(summary.std)}"


def fmt_ci(low: float, high: float, signed: bool = False) -> str:
    """``"[low, high]"`` in percent, or "—"."""
    if not (is_finite(low) and is_finite(high)):
        return DASH
    return f"[{fmt_pct(low, signed)}, {fmt_pct(high, signed)}]"


def fmt_p(p: float) -> str:
    """A p-value in scientific notation with 2 significant digits (``3.2e-04``)."""
    return f"{p:.1e}" if is_finite(p) else DASH


def fmt_num(value: float, digits: int = 3) -> str:
    """A float with ``digits`` significant digits, or "—"."""
    return f"{value:.{digits}g}" if is_finite(value) else DASH


def fmt_fixed(value: float, decimals: int = 3, signed: bool = False) -> str:
    """A float with a fixed number of decimals (a sign always with ``signed``), or "—"."""
    if not is_finite(value):
        return DASH
    return f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"


def fmt_value(value: Any) -> str:
    """A config value compactly: ``2.0 -> "2"``, ``None -> "None"``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (np.integer,)):
        return str(int(value))
    return str(value)


def is_finite(value: Any) -> bool:
    return value is not None and _is_number(value) and math.isfinite(float(value))


# ------------------------------------------------------------------------------------ records


def variant_rank(variant: Any) -> tuple[int, str]:
    """Sort key for variants: :func:`~.constants.variant_order` first (a split with modifiers right after its
    split), then alphabetical."""
    from ..experiments.protocol import split_of

    name, order = str(variant), variant_order()
    known = name if name in order else split_of(name)
    return (order.index(known), name) if known in order else (len(order), name)


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


def axis_key(value: Any) -> tuple[int, float, str]:
    """Sort key for axis values: numbers numerically, then others as text."""
    if is_finite(value):
        return (0, float(value), "")
    return (1, math.inf, str(value))


def column_values(frame: pd.DataFrame, name: str) -> pd.Series:
    """Column ``name`` as floats (all NaN when the column is missing)."""
    if name not in frame.columns:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[name], errors="coerce").astype(float)


def constant_text(values: pd.Series) -> str:
    """The mean of a column that should be constant; marked "(varies)" when it is not."""
    arr = finite_values(values)
    if arr.size == 0:
        return DASH
    text = fmt_value(float(arr.mean()))
    return text if np.all(arr == arr[0]) else f"{text} (varies)"


def theory_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Theory records averaged per (k, alpha) (trials summed)."""
    num = frame.copy()
    for col in THEORY_FIELDS:
        if col in num.columns:
            num[col] = pd.to_numeric(num[col], errors="coerce")
    agg = {c: "mean" for c in num.columns if c not in ("k", "alpha", "trials", "seed")}
    if "trials" in num.columns:
        agg["trials"] = "sum"
    return num.groupby(["k", "alpha"], as_index=False).agg(agg)


# ------------------------------------------------------------------------------- study metadata


def data_name(records: Iterable[dict], meta: dict) -> str:
    """The data set's display name: the records' ``dataset`` values, else ``meta["dataset"]``."""
    names = list(dict.fromkeys(str(r["dataset"]) for r in records if r.get("dataset") is not None))
    if names:
        return " / ".join(names)
    return str(meta.get("dataset") or DATA_NAME)


def data_phrase(meta: dict) -> str:
    """How captions name the data (the Boolean name reads "synthetic Boolean DNF formulas")."""
    name = meta.get("data_name") or DATA_NAME
    return f"{name} formulas" if name == DATA_NAME else name


def paper_numbers(meta: dict, dataset: str | None = None) -> dict:
    """``meta["paper"]`` when its ``dataset`` is the data reported here (case-insensitive), else {}."""
    paper = meta.get("paper") or {}
    name = dataset if dataset is not None else meta.get("data_name") or DATA_NAME
    if paper and str(paper.get("dataset", "")).lower() == str(name).lower():
        return paper
    return {}


def pairing_columns(frame: pd.DataFrame, meta: dict) -> list[str]:
    """Columns that pair runs of two variants: the config without ``variants``, the data set, the seed.

    The config fields are those of ``meta["base"]`` (the study's config), so runs pair by their
    config without the seed and by seed, never across data sets.
    """
    fields = list((meta.get("base") or {}).keys()) or list(CONFIG_FIELDS)
    cols = [c for c in fields if c in frame.columns and c not in ("variants", "seed")]
    return cols + [c for c in ("dataset", "seed") if c in frame.columns and c not in cols]
