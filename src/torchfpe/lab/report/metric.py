"""The metric a report is about, read from the study's meta (default: test accuracy).

A study's meta may name its metric::

    "metric": {"key": "bits_per_byte", "label": "test bits/byte", "higher_is_better": false, "percent": false}

``key`` is the record field of the test value; its train counterpart is ``train_<key>``, or the key with
``test_`` replaced by ``train_`` when it starts with ``test_``. ``percent``: the values are fractions
shown in percent (and their confidence intervals clipped to [0, 1]). Records carry ``relative_gain``
signed so that positive is better than dense whatever the metric's direction (the protocol computes it),
so the gain columns and figures read the same for every metric. Without ``meta["metric"]`` the metric is
test accuracy, worded exactly as the reports always were.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from .stats import (Summary, is_finite, fmt_ci, fmt_fixed, fmt_pct, summarize, summarize_accuracy)


@dataclass(frozen=True)
class Metric:
    """What the absolute columns, paired tests and figure axes of the ``cells``/``match``/``sweep`` layouts show."""

    key: str = "test_accuracy"
    label: str = "test accuracy"
    higher_is_better: bool = True
    percent: bool = True
    short: str = ""  # table headers; default: the label ("test acc" for accuracy)
    decimals: int = 3  # shown decimals of a metric that is not in percent

    @property
    def train_key(self) -> str:
        return "train_" + self.key[len("test_"):] if self.key.startswith("test_") else f"train_{self.key}"

    @property
    def is_accuracy(self) -> bool:
        """The default metric: every text reads as it always did."""
        return self == ACCURACY

    @property
    def name(self) -> str:
        """The label without a leading ``test`` (``bits/byte``), for train-and-test wording."""
        return self.label[len("test "):] if self.label.startswith("test ") else self.label

    @property
    def header(self) -> str:
        return self.short or self.label

    @property
    def unit(self) -> str:
        """`` %`` after a percent metric's header, else nothing."""
        return " %" if self.percent else ""

    @property
    def scale(self) -> float:
        return 100.0 if self.percent else 1.0

    @property
    def axis_label(self) -> str:
        if self.is_accuracy:
            return "test accuracy (%)"
        return f"{self.label} (%, {self.direction})" if self.percent else f"{self.label} ({self.direction})"

    def axis_label_both(self) -> str:
        """The y label of a figure drawing train and test values."""
        if self.is_accuracy:
            return "accuracy (%)"
        return f"{self.name} (%, {self.direction})" if self.percent else f"{self.name} ({self.direction})"

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"

    @property
    def difference_unit(self) -> str:
        return "pct points" if self.percent else self.name

    @property
    def figure_stem(self) -> str:
        """File names of its figures: ``accuracy_vs_<axis>.png`` for accuracy, else ``<key>_vs_<axis>.png``."""
        return "accuracy" if self.is_accuracy else self.key

    def summarize(self, values: Iterable[Any]) -> Summary:
        return summarize_accuracy(values) if self.percent else summarize(values)

    def fmt(self, value: float, signed: bool = False) -> str:
        return fmt_pct(value, signed) if self.percent else fmt_fixed(value, self.decimals, signed)

    def fmt_pm(self, s: Summary, signed: bool = False) -> str:
        return f"{self.fmt(s.mean, signed)} ± {self.fmt(s.std)}"

    def fmt_ci(self, low: float, high: float, signed: bool = False) -> str:
        if self.percent:
            return fmt_ci(low, high, signed)
        if not (is_finite(low) and is_finite(high)):
            return fmt_ci(low, high)
        return f"[{self.fmt(low, signed)}, {self.fmt(high, signed)}]"

    def with_unit(self, value: float) -> str:
        """A value with its unit, for sentences: ``61.2 %`` or ``1.234 bits/byte``."""
        return f"{self.fmt(value)} %" if self.percent else f"{self.fmt(value)} {self.name}"

    def reaches(self, value: float, target: float) -> bool:
        """Whether ``value`` is at least as good as ``target``."""
        return value >= target if self.higher_is_better else value <= target


#: The default metric (test accuracy, a fraction shown in percent).
ACCURACY = Metric(short="test acc")


def metric_of(meta: Mapping) -> Metric:
    """The metric ``meta["metric"]`` names, else :data:`ACCURACY`; an unknown or mistyped field is a ValueError."""
    given = meta.get("metric")
    if not given:
        return ACCURACY
    if not isinstance(given, Mapping) or not isinstance(given.get("key"), str) or not given["key"]:
        raise ValueError(f"meta['metric'] must be a mapping with a 'key' (the record field); got {given!r}")
    known = {f.name: f.type for f in fields(Metric)}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"meta['metric'] has unknown field(s) {unknown}; fields: {', '.join(known)}")
    for name in ("higher_is_better", "percent"):
        if name in given and not isinstance(given[name], bool):
            raise ValueError(f"meta['metric'][{name!r}] must be true or false; got {given[name]!r}")
    values = dict(given)
    values.setdefault("label", values["key"].replace("_", " "))
    metric = Metric(**values)
    return ACCURACY if metric == Metric() else metric
