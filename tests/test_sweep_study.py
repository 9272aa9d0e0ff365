"""Which study (report page) a sweep file's results get: the one it names; files without ``study:`` keep
the old rule, then the study sweeping exactly the same fields, then the experiment's only study."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchfpe.core.validation import InvalidParameterError
from torchfpe.lab.api import _sweep_study
from torchfpe.lab.experiments.registry import experiment

PATH = Path("grid.yaml")


def studies(name: str) -> dict:
    return {s.name: s for s in experiment(name).studies}


@pytest.mark.parametrize("spec, names, chosen", [
    ({"study": "alpha"}, ["neurons"], "alpha"),  # named: whatever is swept
    ({}, [], "headline"),  # the old rule, unchanged for old files
    ({}, ["neurons"], "neurons"),
    ({}, ["neurons", "clauses"], "metrics"),
])
def test_boolean_sweep_files(spec, names, chosen):
    assert _sweep_study(PATH, spec, "boolean", studies("boolean"), names) == chosen


def test_a_study_sweeping_the_same_fields_is_found_for_other_experiments():
    assert _sweep_study(PATH, {}, "heads", studies("heads"), ["alpha", "neurons"]) == "width"
    assert _sweep_study(PATH, {}, "theory", studies("theory"), ["k"]) == "theory"  # its only study
    with pytest.raises(InvalidParameterError, match="add 'study:'"):
        _sweep_study(PATH, {}, "heads", studies("heads"), ["lr"])
    with pytest.raises(InvalidParameterError, match="unknown study 'nope'"):
        _sweep_study(PATH, {"study": "nope"}, "heads", studies("heads"), [])
