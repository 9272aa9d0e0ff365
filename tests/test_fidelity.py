"""Clause-level metrics (hand-computed) and the fidelity analysis driver on a tiny stored study."""

from __future__ import annotations

import math

import pytest
import torch

from torchfpe.metrics import (
    clause_embeddings,
    clause_interference,
    clause_relevant_inputs,
    feature_capacity,
    pearson_r,
    spearman_r,
    whole_clause_cover,
)

W = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 5.0, 6.0, 7.0]])


def test_clause_embeddings_are_signed_sums_of_literal_columns():
    e = clause_embeddings(W, [[0, 2], [1]], [[True, False], [True]])
    assert torch.equal(e, torch.tensor([[1.0 - 3.0, 2.0], [4.0 - 6.0, 5.0]], dtype=torch.float64))
    assert torch.equal(clause_embeddings(W, [[0, 2]]), torch.tensor([[4.0], [10.0]], dtype=torch.float64))


def test_clause_capacity_one_for_orthogonal_clauses_half_for_identical():
    # clause 0 reads unit 0 only, clause 1 unit 1 only: orthogonal embeddings, capacity 1 each
    w = torch.tensor([[1.0, 1.0, 0.0, 0.0, 5.0], [0.0, 0.0, 2.0, 2.0, 5.0]])
    out = clause_interference(w, [[0, 1], [2, 3]])
    assert out["clause_capacity_mean"] == pytest.approx(1.0)
    # rows of the clause embedding matrix: (2, 0) and (0, 4): orthogonal units
    assert out["clause_cosine_abs_mean"] == pytest.approx(0.0)
    # identical embeddings (2, 0) and (2, 0): capacity 1/2 each, units (2,2) and (0,0) -> one live row: NaN
    same = clause_interference(torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]), [[0, 1], [2, 3]])
    assert same["clause_capacity_mean"] == pytest.approx(0.5)
    assert math.isnan(same["clause_cosine_abs_mean"])


def test_relevant_readings_drop_distractor_columns():
    w = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])  # input 2 is a distractor shared by both units
    out = clause_interference(w, [[0], [1]])
    assert out["relevant_capacity_mean"] == pytest.approx(1.0)  # inputs 0, 1 orthogonal once 2 is gone
    assert out["relevant_cosine_abs_mean"] == pytest.approx(0.0)
    assert float(feature_capacity(w)[:2].mean()) == pytest.approx(0.5)  # with the distractor: (1)^2/(1+0+1)
    assert clause_relevant_inputs([[3, 1], [1, 0]]) == [0, 1, 3]


def test_whole_clause_cover_by_hand():
    w = torch.tensor([
        [1.0, 1.0, 0.0, 0.0],   # holds clause 0
        [0.0, 1.0, 1.0, 0.0],   # holds nothing (clause 1 = {2, 3} misses 3)
        [0.0, 0.0, 0.0, 0.0],   # dead row: not counted
        [1.0, 0.0, 1.0, 1.0],   # holds clause 1
    ])
    out = whole_clause_cover(w, [[0, 1], [2, 3], [0, 3, 1]])
    assert out == {"units_whole": pytest.approx(2 / 3), "clauses_held": pytest.approx(2 / 3),
                   "pairs_held": pytest.approx(2 / 9)}
    assert whole_clause_cover(torch.ones(3, 4), [[0, 1], [2, 3]]) == {"units_whole": 1.0, "clauses_held": 1.0,
                                                                       "pairs_held": 1.0}


def test_correlations_by_hand():
    assert pearson_r([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson_r([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert spearman_r([1, 2, 3, 4], [1, 8, 27, 1000]) == pytest.approx(1.0)  # monotone, not linear
    assert spearman_r([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)  # ties get average ranks
    assert math.isnan(pearson_r([1, 1, 1], [1, 2, 3]))


@pytest.mark.parametrize("call", [
    lambda: clause_embeddings(W, [[0, 9]]),
    lambda: clause_embeddings(W, []),
    lambda: clause_embeddings(W, [[0, 1]], [[True]]),
    lambda: whole_clause_cover(W, [[]]),
    lambda: pearson_r([1, 2], [1]),
])
def test_bad_arguments_raise(call):
    with pytest.raises(ValueError):
        call()


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    """A stored Boolean study of 3 seeds (dense, random, clause_shared), as `torchfpe reproduce boolean` writes."""
    from torchfpe.lab.experiments import boolean
    from torchfpe.lab.sweep.store import ResultStore, config_key

    path = tmp_path_factory.mktemp("fidelity") / "tiny"
    store = ResultStore(path)
    store.write_meta({"study": "headline", "experiment": "boolean"})
    for seed in range(3):
        config = boolean.EXPERIMENT.make_config(n_vars=12, clauses=3, literals=2, neurons=3, train_size=64, test_size=64,
                                     warmup_epochs=3, epochs_after=3, variants="dense+random+clause_shared", seed=seed,
                                     streams="shared")  # the draws these assertions were written for
        records = [{k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in r.items()}
                   for r in boolean.EXPERIMENT.run_batch([config])]
        store.put(config_key("headline", config.to_dict()), config.to_dict(), records)
    return path


def fidelity_cli(*args):
    from typer.testing import CliRunner

    from torchfpe.lab.cli import app

    return CliRunner().invoke(app, ["fidelity", *map(str, args)])


def test_fidelity_driver_on_a_tiny_store(tiny_store, tmp_path):
    result = fidelity_cli(tiny_store, "--out", tmp_path / "f.md", "--csv", tmp_path / "f.csv")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "f.md").read_text()
    assert text in result.output  # printed and written
    assert "| base | clause_shared | 3 |" in text and "clause capacity" in text
    assert "| base | clause_shared |" in text.split("Whole-clause cover")[1]
    cover = text.split("Whole-clause cover")[1]
    shared_row = next(line for line in cover.splitlines() if line.startswith("| base | clause_shared |"))
    assert shared_row.split("|")[5].strip() == "1.000"  # every clause kept whole by some child
    random_row = next(line for line in cover.splitlines() if line.startswith("| base | random |"))
    assert "(" in random_row  # measured (theory)
    # the report's table builder: numbered captions naming the data
    assert "**Table 1.** Test accuracy" in text and "**Table 5.**" in text and "**Table 6.**" not in text
    assert "Data: synthetic Boolean DNF" in text
    csv = (tmp_path / "f.csv").read_text().splitlines()
    assert len(csv) == 1 + 3 * 3 and "clause_capacity_mean" in csv[0] and "hidden_weight" not in csv[0]
    missing = fidelity_cli(tmp_path / "missing")
    assert missing.exit_code == 2 and "no such directory" in missing.output  # a usage error, as `torchfpe report`
    (tmp_path / "empty").mkdir()
    empty = fidelity_cli(tmp_path / "empty")
    assert empty.exit_code == 1 and "no meta.json" in empty.output


def test_fidelity_api_sections_and_usage_errors(tiny_store, tmp_path):
    from torchfpe.lab import api
    from torchfpe.core.validation import InvalidParameterError

    text = api.fidelity([tiny_store], sections="levels,regression")
    assert "## Metric levels" in text and "## Metric fold change" in text
    assert "## Accuracy" not in text and "## Whole-clause cover" not in text
    assert api.fidelity(tiny_store, sections=["coverage"]).count("**Table") == 1
    for kwargs in ({"sections": "bogus"}, {"sections": ","}, {"out": tmp_path / "no" / "f.md"},
                   {"out": tmp_path / "f.md", "csv": tmp_path / "f.md"}):
        with pytest.raises(InvalidParameterError):
            api.fidelity([tiny_store], **kwargs)
    with pytest.raises(InvalidParameterError):
        api.fidelity([])
    assert not (tmp_path / "f.md").exists()  # refused before anything was written
    for args, code in ((["--sections", "accuracy,bogus", tiny_store], 2), ([], 2)):
        result = fidelity_cli(*args)
        assert result.exit_code == code, result.output
    assert "Traceback" not in fidelity_cli(tiny_store, "--sections", "bogus").output


def test_fidelity_names_a_corrupt_run_file_and_exits_1(tiny_store, tmp_path):
    import json
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_store, broken)
    run_file = sorted((broken / "runs").glob("*.run.json"))[0]
    payload = json.loads(run_file.read_text())
    for record in payload["records"]:
        del record["hidden_weight"]
    run_file.write_text(json.dumps(payload))
    result = fidelity_cli(broken)
    assert result.exit_code == 1 and run_file.name in result.output and "hidden_weight" in result.output
    payload["config"]["alpha"] = 1  # a stored config the Boolean experiment refuses: the file, not the user, is wrong
    run_file.write_text(json.dumps(payload))
    assert fidelity_cli(broken).exit_code == 1
    run_file.write_text("{not json")
    result = fidelity_cli(broken)
    assert result.exit_code == 1 and "corrupt" in result.output
