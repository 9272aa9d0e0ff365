"""The report is driven by the study's meta: layout, data name, paper numbers, pairing keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from scipy import stats

from test_report import ACC, _headline_records, _meta
from torchfpe.experiments.studies import groups

GROUPS = groups()
STUDIES = GROUPS["boolean"]
from torchfpe.report import write_report
from torchfpe.report.stats import pairing_columns
from torchfpe.report.write import resolve_meta


def test_boolean_studies_carry_the_layout_the_legacy_name_implied():
    legacy = {"headline": "headline", "neurons": "sweep", "clauses": "sweep", "alpha": "sweep",
              "metrics": "grid", "data": "sweep", "theory": "theory"}
    for name, study in STUDIES.items():
        assert study.meta["layout"] == legacy[name]
        assert resolve_meta({"study": name, **study.meta}, [])["layout"] == legacy[name]
    assert STUDIES["data"].meta["show_train"] and resolve_meta({"study": "data"}, [])["show_train"]


def test_headline_from_meta_equals_the_legacy_report(tmp_path: Path):
    """A meta.json written before studies carried meta and one written now give the same report."""
    from torchfpe.experiments.studies import DATASET_NOTE

    records = _headline_records()
    old = write_report(tmp_path / "old", {**_meta("headline"), "dataset_note": DATASET_NOTE}, records).read_text()
    new = write_report(tmp_path / "new", {**_meta("headline"), **STUDIES["headline"].meta}, records).read_text()
    assert new == old and "78.7" in new


def test_paper_numbers_only_where_the_data_set_matches(tmp_path: Path):
    records = [dict(r, dataset="someone's embeddings") for r in _headline_records()]
    meta = {**_meta("headline"), **STUDIES["headline"].meta}
    text = write_report(tmp_path, meta, records).read_text()
    assert "78.7" not in text and "88.7" not in text and "no paper numbers for this data set" in text
    captions = [line for line in text.splitlines() if line.startswith("**Table")]
    assert captions and all("someone's embeddings" in line for line in captions)
    assert "torchfpe report: headline study (someone's embeddings)" in text


def test_a_new_layout_name_needs_no_report_edit_but_an_unknown_one_fails(tmp_path: Path):
    records = [dict(r, neurons=4) for r in _headline_records()]
    text = write_report(tmp_path, {**_meta("anything", ["neurons"]), "layout": "cells"}, records).read_text()
    assert "Accuracy and relative gain per `neurons`" in text
    with pytest.raises(ValueError, match="layout"):
        write_report(tmp_path, {**_meta("anything"), "layout": "bogus"}, records)


def test_pairing_uses_the_config_without_seed_and_the_data_set(tmp_path: Path):
    import pandas as pd

    frame = pd.DataFrame([dict(r, dataset="A") for r in _headline_records()])
    cols = pairing_columns(frame, {"base": {"neurons": 8, "alpha": 2, "variants": "x", "seed": 0}})
    assert cols == ["neurons", "alpha", "dataset", "seed"]
    # the paired test pairs dense and random of the same seed: p equals scipy's on the hand numbers
    text = write_report(tmp_path, {**_meta("headline"), **STUDIES["headline"].meta}, list(frame.T.to_dict().values())
                        ).read_text()
    assert f"{stats.ttest_rel(ACC['random'], ACC['dense']).pvalue:.1e}" in text


def test_every_group_study_names_a_known_layout():
    from torchfpe.report.constants import LAYOUTS

    for group, studies in GROUPS.items():
        for study in studies.values():
            assert study.meta.get("layout") in LAYOUTS, (group, study.name)
