"""The task-agnostic protocol: Boolean records unchanged by the refactor; losses and accuracies."""

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from torchfpe.lab.batched import (StackedMLP, stacked_binary_accuracy, stacked_binary_loss,
                              stacked_multiclass_accuracy, stacked_multiclass_loss)
from torchfpe.lab.experiments import boolean
from torchfpe.lab.train import binary_accuracy, multiclass_accuracy, multiclass_loss

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "boolean_records.json").read_text())


def _comparable(record: dict) -> dict:
    record = dict(record)
    weight = record.pop("hidden_weight")
    record.pop("input_order")
    record["hidden_weight_abs_sum"] = float(weight.abs().sum())
    return record


@pytest.mark.parametrize("case", sorted(FIXTURE))
def test_boolean_records_match_the_pre_refactor_code(case):
    """Records of the code before the protocol moved out of boolean.py (tests/fixtures)."""
    torch.set_num_threads(1)
    spec = FIXTURE[case]
    # the fixture predates separate random streams: its configs are the old code's (streams="shared")
    records = boolean.EXPERIMENT.run_batch([boolean.EXPERIMENT.make_config(**spec["config"], streams="shared", seed=s)
                                            for s in spec["seeds"]])
    assert len(records) == len(spec["records"])
    for got, want in zip(map(_comparable, records), spec["records"]):
        assert got.pop("streams") == "shared"
        assert set(got) == set(want)
        for key, value in want.items():
            if isinstance(value, float) and not isinstance(got[key], str):
                # the fixture was made on one CPU; another CPU's vector kernels round float64 sums otherwise and move
                # the metrics by ~1e-13 relative, far under what a change of the code moves (~1e-3)
                assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), (case, key)
            else:
                assert got[key] == value, (case, key)


def test_multiclass_loss_and_accuracy_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    labels = torch.tensor([0, 1])
    expected = (-(2 - math.log(math.exp(2) + 2)) - (1 - math.log(1 + math.e + math.exp(3)))) / 2
    assert float(multiclass_loss(logits, labels)) == pytest.approx(expected)
    model = nn.Identity()
    assert multiclass_accuracy(model, logits, labels) == 0.5
    assert multiclass_accuracy(model, logits, labels, eval_batch=1) == 0.5


def test_stacked_multiclass_loss_is_the_sum_of_each_models_mean():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 5)  # (models, classes, examples)
    labels = torch.randint(0, 4, (3, 5))
    each = sum(float(multiclass_loss(logits[b].T, labels[b])) for b in range(3))
    assert float(stacked_multiclass_loss(logits, labels)) == pytest.approx(each)


def test_stacked_accuracies_match_single_models():
    torch.manual_seed(1)
    models = [nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)) for _ in range(2)]
    x = torch.randn(2, 40, 6)
    y = torch.randint(0, 3, (2, 40))
    stacked = stacked_multiclass_accuracy(StackedMLP(models), x, y)
    for b, model in enumerate(models):
        assert float(stacked[b]) == pytest.approx(multiclass_accuracy(model, x[b], y[b]))
    binary = [nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 1)) for _ in range(2)]
    yb = (torch.rand(2, 40) > 0.5).float()
    stacked = stacked_binary_accuracy(StackedMLP(binary), x, yb)
    for b, model in enumerate(binary):
        assert float(stacked[b]) == pytest.approx(binary_accuracy(model, x[b], yb[b]))
    assert float(stacked_binary_loss(torch.zeros(2, 1, 40), yb)) == pytest.approx(2 * math.log(2))
