"""The fine-tuning experiment on a tiny random BERT and synthetic texts: runs end to end, equal non-zero counts,
record fields, the dense-wide ceiling keeps the function, bad --data gives one error line."""

import csv
import math
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

from helpers import cli, one_error_line  # noqa: E402

from torchfpe.core.validation import InvalidParameterError  # noqa: E402
from torchfpe.lab.experiments import finetune  # noqa: E402

WORDS = {"fruit": "apple banana cherry pear plum grape", "cars": "engine wheel brake tyre road fuel",
         "music": "song guitar drum tune chord piano"}
TINY = dict(encoder="tiny-bert", seq_len=10, batch_size=4, warmup_steps=2, steps_after=2, lr=1e-3)
FIELDS = {"variant", "seed", "test_accuracy", "test_macro_f1", "test_accuracy_at_split", "nonzero_parameters",
          "ffn_nonzero", "ffn_in_nonzero", "ffn_out_nonzero", "hidden_units", "train_seconds", "relative_gain",
          "dataset", "classes", "standin"}


def write_csv(path, rows_per_class=12):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for label, words in WORDS.items():
            words = words.split()
            for i in range(rows_per_class):
                writer.writerow([" ".join(words[(i + k) % len(words)] for k in range(5)), label])
    return str(path)


@pytest.fixture
def texts(tmp_path):
    return write_csv(tmp_path / "texts.csv")


def config(data, **fields):
    return finetune.EXPERIMENT.make_config(data_dir=data, **{**TINY, **fields})


def test_every_variant_runs_and_fpe_keeps_the_dense_count(texts):
    variants = "dense+random+grouped+random@structured+grouped@structured+static_sparse+wide2"
    records = finetune.EXPERIMENT.run_batch([config(texts, variants=variants)])
    assert [r["variant"] for r in records] == variants.split("+")
    by = {r["variant"]: r for r in records}
    dense = by["dense"]
    for variant, record in by.items():
        assert FIELDS <= set(record), FIELDS - set(record)
        assert 0 <= record["test_accuracy"] <= 1 and 0 <= record["test_macro_f1"] <= 1
        assert record["classes"] == 3 and record["dataset"] == "texts.csv" and record["standin"] is True
        assert record["hidden_units"] == (32 if variant == "dense" else 64)
        if variant in ("random", "grouped", "random@structured", "grouped@structured"):
            assert record["nonzero_parameters"] == dense["nonzero_parameters"], variant
            assert record["ffn_nonzero"] == dense["ffn_nonzero"], variant
            assert 0 <= record["test_accuracy_at_split"] <= 1
    assert math.isnan(by["static_sparse"]["test_accuracy_at_split"]) and math.isnan(by["wide2"]["test_accuracy_at_split"])
    assert 0 <= dense["test_accuracy_at_split"] <= 1
    structured = by["grouped@structured"]
    assert (structured["ffn_in_nonzero"], structured["ffn_out_nonzero"]) == (dense["ffn_in_nonzero"],
                                                                             dense["ffn_out_nonzero"])
    assert by["wide2"]["ffn_nonzero"] == pytest.approx(2 * dense["ffn_nonzero"], rel=0.05)


def test_a_run_is_reproducible_and_ffn_layers_picks_the_expanded_blocks(texts):
    one = finetune.EXPERIMENT.run_batch([config(texts, variants="dense+random", ffn_layers=[1])])
    again = finetune.EXPERIMENT.run_batch([config(texts, variants="dense+random", ffn_layers=[1])])
    keys = ("test_accuracy", "test_macro_f1", "test_accuracy_at_split", "nonzero_parameters")
    assert [[r[k] for k in keys] for r in one] == [[r[k] for k in keys] for r in again]
    model = finetune.TASK.parent(config(texts, ffn_layers=[1]))
    assert [p[0] for p in finetune.ffn_pairs(config(texts, ffn_layers=[1]), model)] == [
        "encoder.encoder.layer.1.intermediate.dense"]


def test_the_wide_ceiling_keeps_the_function_of_the_parent(texts):
    cfg = config(texts)
    parent, wide = finetune.TASK.parent(cfg), finetune.TASK.wide_parent(cfg, 2.0)
    data = finetune.TASK.data(cfg)
    parent.eval(), wide.eval()
    with torch.no_grad():
        assert torch.allclose(parent(data.x_test), wide(data.x_test), atol=1e-3)
    assert wide.encoder.encoder.layer[0].intermediate.dense.out_features == 64


def test_macro_f1_matches_its_definition():
    predicted, labels = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 1])
    # class 0: tp 1 fp 1 fn 0 -> 2/3; class 1: tp 1 fp 0 fn 2 -> 1/2; class 2: tp 0 fp 1 -> 0
    assert finetune.macro_f1(predicted, labels) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)


def test_bad_fields_are_refused_by_name(texts):
    with pytest.raises(InvalidParameterError, match="ffn_layers"):
        config(texts, ffn_layers=[1, 1])
    with pytest.raises(InvalidParameterError, match="encoder"):
        config(texts, encoder="gpt5")


def test_the_cli_runs_one_seed_and_bad_data_is_one_line(tmp_path, texts):
    out = tmp_path / "runs"
    result = cli("reproduce", "finetune", "--seeds", 1, "--data", texts, "--out", out, "--quiet", "--set",
                 "encoder=tiny-bert", "--set", "warmup_steps=1", "--set", "steps_after=1", "--set", "seq_len=8",
                 "--set", "variants=dense+random+static_sparse")
    assert result.exit_code == 0, result.output
    assert (out / "report.md").is_file()
    for bad in (tmp_path / "missing", tmp_path / "notes.txt"):
        if bad.suffix:
            bad.write_text("hello", encoding="utf-8")
        result = cli("reproduce", "finetune", "--seeds", 1, "--data", bad, "--out", tmp_path / "bad", "--set",
                     "encoder=tiny-bert")
        assert result.exit_code != 0
        assert str(bad) in one_error_line(result)


def test_the_summary_table_pairs_each_variant_with_dense_of_its_seed():
    records = [{"alpha": 2, "variant": v, "seed": s, "hidden_units": 8, "nonzero_parameters": 100,
                "test_accuracy": a + 0.01 * s, "test_macro_f1": a, "test_accuracy_at_split": a, "train_seconds": 1.0}
               for s in range(3) for v, a in (("dense", 0.5), ("random", 0.52))]
    table = finetune.summary_table(records).splitlines()
    assert len(table) == 4 and table[2].startswith("| 2 | dense | 3 | 8 | 100 | 51.0 ")
    assert "+2.0 [+2.0, +2.0]" in table[3]
