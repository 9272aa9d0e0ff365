"""The report is driven by the study's meta: page, data name, paper numbers, pairing keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from scipy import stats

from test_report import ACC, _headline_records, _meta
from torchfpe.lab.experiments.studies import groups

GROUPS = groups()
STUDIES = GROUPS["boolean"]
from torchfpe.lab.report import write_report
from torchfpe.lab.report.stats import pairing_columns
from torchfpe.lab.report.write import resolve_meta


def test_boolean_studies_carry_the_page_the_legacy_name_implied():
    legacy = {"headline": "headline", "neurons": "sweep", "clauses": "sweep", "alpha": "sweep",
              "metrics": "grid", "data": "sweep", "theory": "theory"}
    for name, study in STUDIES.items():
        assert study.meta["page"] == legacy[name] and "layout" not in study.meta
        assert resolve_meta({"study": name, **study.meta}, [])["page"] == legacy[name]
        assert resolve_meta({"study": name}, [])["page"] == legacy[name]  # a meta.json from before studies had meta
    assert STUDIES["data"].meta["show_train"] and resolve_meta({"study": "data"}, [])["show_train"]


def test_headline_from_meta_equals_the_legacy_report(tmp_path: Path):
    """A meta.json written before studies carried meta and one written now give the same report."""
    from torchfpe.lab.experiments.studies import DATASET_NOTE

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


@pytest.mark.parametrize("key", ["page", "layout"])  # "layout": the key of meta.json files written before
def test_a_study_names_its_page_and_an_unknown_one_fails(tmp_path: Path, key):
    records = [dict(r, neurons=4) for r in _headline_records()]
    text = write_report(tmp_path, {**_meta("anything", ["neurons"]), key: "cells"}, records).read_text()
    assert "Accuracy and relative gain per `neurons`" in text
    with pytest.raises(ValueError, match="no report page for it.*'bogus'"):
        write_report(tmp_path, {**_meta("anything"), key: "bogus"}, records)


def test_a_page_registered_from_outside_needs_no_report_edit(tmp_path: Path):
    from torchfpe.lab.report.pages import PAGES, register_page

    register_page("test_counts", lambda frame, meta, records, out, tables: [f"{len(frame)} records", ""])
    try:
        text = write_report(tmp_path, {**_meta("anything"), "page": "test_counts"}, _headline_records()).read_text()
    finally:
        PAGES.remove("test_counts")
    assert f"{len(_headline_records())} records" in text


def test_pairing_uses_the_config_without_seed_and_the_data_set(tmp_path: Path):
    import pandas as pd

    frame = pd.DataFrame([dict(r, dataset="A") for r in _headline_records()])
    cols = pairing_columns(frame, {"base": {"neurons": 8, "alpha": 2, "variants": "x", "seed": 0}})
    assert cols == ["neurons", "alpha", "dataset", "seed"]
    # the paired test pairs dense and random of the same seed: p equals scipy's on the hand numbers
    text = write_report(tmp_path, {**_meta("headline"), **STUDIES["headline"].meta}, list(frame.T.to_dict().values())
                        ).read_text()
    assert f"{stats.ttest_rel(ACC['random'], ACC['dense']).pvalue:.1e}" in text


def test_every_group_study_names_a_registered_page():
    from torchfpe.lab.report.pages import PAGES, page_of

    for group, studies in GROUPS.items():
        for study in studies.values():
            assert study.meta.get("page") in PAGES, (group, study.name)
            assert page_of(study.meta).name == study.meta["page"]


# --------------------------------------------------- a metric other than accuracy: lower is better (issue 13)
BPB = {"key": "bits_per_byte", "label": "test bits/byte", "higher_is_better": False, "percent": False}


def _bpb_records():
    """dense 2.00/2.10/2.20 bits/byte over seeds 0..2; random 1.80/1.85/1.90 (better); wide2 1.95/2.00/2.05."""
    out = []
    for seed in range(3):
        base = dict(corpus="c", neurons=4, alpha=2, seed=seed, variants="dense+random+wide2", dataset="tiny text",
                    nonzero_parameters=100)
        dense = 2.0 + 0.1 * seed
        for variant, value, units in (("dense", dense, 4), ("random", 1.8 + 0.05 * seed, 8),
                                      ("wide2", 1.95 + 0.05 * seed, 8)):
            out.append({**base, "variant": variant, "bits_per_byte": value, "train_bits_per_byte": value - 0.1,
                        "relative_gain": (dense - value) / dense, "hidden_units": units})
    return out


@pytest.mark.parametrize("page", ["cells", "match", "sweep"])
def test_a_lower_is_better_metric_drives_columns_tests_wording_and_figures(tmp_path: Path, page):
    layout = page
    meta = {"study": "lm", "page": page, "axis": ["neurons"] if page != "sweep" else "neurons", "seeds": 3,
            "base": {"corpus": "c", "neurons": 4, "alpha": 2, "variants": "dense+random+wide2"},
            "metric": BPB, "command": "x", "date": "2026-01-01", "show_train": True}
    text = write_report(tmp_path, meta, _bpb_records()).read_text()
    assert "acc" not in text.lower().replace("accurate", "") and "Metric: test bits/byte (lower is better" in text
    if layout == "sweep":
        row = next(line for line in text.splitlines() if line.startswith("| 4 | random |"))
        assert "1.850 [" in row and "| 1.750 |" in row  # test mean with CI, train mean
        assert "train − test gap (bits/byte, mean ± std)" in text and "-0.100 ± 0.000" in row
        figure = tmp_path / "bits_per_byte_vs_neurons.png"
    else:
        header = next(line for line in text.splitlines() if line.startswith("| neurons | variant |"))
        assert "test bits/byte (mean ± std)" in header and "test bits/byte 95 % CI" in header
        row = next(line for line in text.splitlines() if line.startswith("| 4 | random |"))
        assert "1.850 ± 0.050" in row and "+11.8 ± 1.8" in row  # bits/byte; gain (2.0−1.8)/2.0 … = 10.0, 11.9, 13.6 %
        p = stats.ttest_rel([1.8, 1.85, 1.9], [2.0, 2.1, 2.2]).pvalue
        assert f"{p:.1e}" in row  # paired on the metric, not on a missing accuracy
        assert "test bits/byte (lower is better)" in text
        figure = tmp_path / "bits_per_byte_vs_neurons.png"
    assert figure.is_file() and not (tmp_path / "accuracy_vs_neurons.png").exists()
    if layout == "match":
        # lower is better: wide2 (2.000) does not reach random (1.850); dense with more non-zeros is not better
        assert "no wider dense model up to 2× the non-zeros reached random FPE (1.850 bits/byte)" in text
        assert "FPE test bits/byte" in text and "dense − FPE (bits/byte)" in text and "| +0.150 |" in text


def test_metric_meta_is_checked_and_accuracy_is_the_default():
    from torchfpe.lab.report.metric import ACCURACY, metric_of

    assert metric_of({}) is ACCURACY and metric_of({"metric": {"key": "test_accuracy"}}) is ACCURACY
    assert metric_of({"metric": BPB}).train_key == "train_bits_per_byte"
    assert metric_of({"metric": {"key": "test_loss", "higher_is_better": False}}).train_key == "train_loss"
    for bad in ({"label": "x"}, {"key": "k", "colour": "red"}, {"key": "k", "percent": "no"}):
        with pytest.raises(ValueError, match="metric"):
            metric_of({"metric": bad})
