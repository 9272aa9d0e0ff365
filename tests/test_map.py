"""`torchfpe map`: the map of every measured gain, from result folders."""

from pathlib import Path

import pytest

from torchfpe.lab import api
from torchfpe.lab.report.map import load_of, read_study, study_points
from torchfpe.lab.sweep.store import ResultStore, config_key


def _record(config: dict, variant: str, accuracy: float, dense: float) -> dict:
    return {**config, "variant": variant, "test_accuracy": accuracy, "relative_gain": (accuracy - dense) / dense}


def _store(path: Path, study: str, axis: str, values: list[int], gain_of, base: dict) -> Path:
    """A synthetic Boolean result folder: dense and random per seed and axis value (no training)."""
    store = ResultStore(path)
    keys = []
    for value in values:
        for seed in range(4):
            config = {**base, axis: value, "seed": seed}
            dense = 0.7 + 0.01 * seed
            random = dense * (1 + gain_of(value) + 0.002 * ((seed * value) % 5))
            key = config_key(study, config)
            store.put(key, config, [_record(config, "dense", dense, dense), _record(config, "random", random, dense)])
            keys.append(key)
    store.write_meta({"study": study, "group": "boolean", "experiment": "boolean", "keys": keys,
                      "base": {**base, axis: values[0], "seed": 0}, "command": f"torchfpe reproduce boolean --study {study}",
                      "date": "2026-12-07", "provenance": {"cpu": "Test CPU", "cpu_capability": "AVX2"}})
    return path


@pytest.fixture
def two_stores(tmp_path):
    base = {"clauses": 8, "neurons": 8, "alpha": 2, "variants": "dense+random"}
    neurons = _store(tmp_path / "neurons", "neurons", "neurons", [8, 16], lambda n: 0.16 if n == 8 else 0.04, base)
    clauses = _store(tmp_path / "clauses", "clauses", "clauses", [4, 16, 24], lambda m: {4: 0.02, 16: 0.1, 24: 0.1}[m],
                     base)
    return neurons, clauses


def test_load_per_neuron_reads_clauses_or_classes():
    assert load_of({"clauses": 16, "neurons": 8}) == (2.0, 8)
    assert load_of({"n_classes": 100, "neurons": 16}) == (6.25, 16)
    assert load_of({"neurons": 8}) is None


def test_points_pair_each_seed_with_its_dense_run(two_stores):
    points, unplaced = study_points(read_study(two_stores[0]))
    assert unplaced == 0
    by_width = {p.width: p for p in points}
    assert set(by_width) == {8, 16} and by_width[8].load == 1.0 and by_width[16].load == 0.5
    assert by_width[8].seeds == 4 and by_width[8].gain == pytest.approx(16.4)  # 16 % + 0.2 × mean((seed × 8) mod 5) %
    assert by_width[8].ci_low < by_width[8].gain < by_width[8].ci_high


def test_map_writes_the_page_and_the_figure(two_stores, tmp_path):
    page = api.fpe_map([str(s) for s in two_stores], out=tmp_path / "docs", command="torchfpe map a b")
    text = page.read_text()
    assert (tmp_path / "docs" / "when-fpe-pays.png").stat().st_size > 10_000
    assert "torchfpe map a b" in text and "boolean-neurons: 4 seeds" in text
    row = next(line for line in text.splitlines() if line.startswith("| the gain falls as neurons are added"))
    assert "| reproduced |" in row and "4 seeds" in row
    flat = next(line for line in text.splitlines() if line.startswith("| ... then flattens"))
    assert "consistent" in flat
    assert "| FPE clause split accuracy (α = 2) | 99.4 % | — | no store given |" in text
    assert "Test CPU, ATen AVX2" in text


def test_map_refuses_a_folder_that_is_not_a_result_folder(tmp_path):
    from torchfpe.lab.sweep import StoreError

    with pytest.raises(ValueError, match="not a result folder"):
        api.fpe_map([str(tmp_path / "missing")], out=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="no meta.json"):
        api.fpe_map([str(tmp_path / "empty")], out=tmp_path)
