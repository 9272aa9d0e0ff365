"""Task kinds are registered records: a stacked regression kind registered here (MSE, test_mse lower is
better) runs a tiny protocol study end to end with no edit of train, batched or protocol."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchfpe import InvalidParameterError
from torchfpe.lab import api
from torchfpe.lab.experiments import protocol, registry
from torchfpe.lab.experiments.studies import Study
from torchfpe.lab.kinds import TASK_KINDS, RecordField, fraction_fields, get_task_kind, register_task_kind


# ------------------------------------------------------------------------- a regression kind from outside
def mse_loss(outputs, targets):
    return F.mse_loss(outputs.reshape(targets.shape), targets)


@torch.no_grad()
def mse(model, x, y, eval_batch=None):
    model.eval()
    value = float(F.mse_loss(model(x).reshape(y.shape), y))
    model.train()
    return value


def stacked_mse_loss(outputs, targets):  # (B, 1, N), (B, N): the sum of each model's mean
    return (outputs.reshape(targets.shape) - targets).square().mean(dim=1).sum()


@torch.no_grad()
def stacked_mse(stack, x, y):
    stack.eval()
    outputs = stack.forward_transposed(x.transpose(1, 2)).reshape(y.shape)
    stack.train()
    return (outputs - y).square().mean(dim=1)


class RegressionTask(protocol.Task):
    kind = "regression_test"

    def data(self, config):
        generator = torch.Generator().manual_seed(1000 + config.seed)
        x = torch.randn(96, 6, generator=generator)
        y = torch.sin(x @ torch.linspace(-1, 1, 6))
        return protocol.Data(x[:64], y[:64], x[64:], y[64:])

    def parent(self, config):
        state = torch.random.get_rng_state()
        torch.manual_seed(config.seed)
        model = nn.Sequential(nn.Linear(6, config.neurons), nn.ReLU(), nn.Linear(config.neurons, 1))
        torch.random.set_rng_state(state)
        return model


@dataclass(frozen=True)
class RegressionConfig(protocol.ProtocolConfig):
    warmup_epochs: int = 5
    epochs_after: int = 5
    task: ClassVar[protocol.Task] = RegressionTask()


@pytest.fixture
def regression():
    kind = register_task_kind("regression_test", loss=mse_loss, measure=mse, stacked_loss=stacked_mse_loss,
                              stacked_measure=stacked_mse, measured="mse", higher_is_better=False)
    study = Study("width", "regression_test", "a regression MLP: widths", {"neurons": (4, 6)},
                  {"variants": "dense+random"}, default_seeds=2, group="regression_test",
                  meta={"page": "sweep", "metric": kind.report_metric("test MSE")})
    experiment = protocol.register("regression_test", RegressionConfig, (study,))
    yield kind, experiment
    TASK_KINDS.remove("regression_test")
    registry.experiments()  # the package's modules are imported before the temporary one is dropped
    registry.unregister_experiment("regression_test")


def test_the_kind_declares_its_fields_and_metric(regression):
    kind, _ = regression
    assert [f.name for f in kind.fields] == ["test_mse", "train_mse"]
    assert kind.metric == "test_mse" and not kind.higher_is_better and kind.stacks
    assert "test_mse" not in fraction_fields() and {"test_accuracy", "train_accuracy"} <= fraction_fields()
    assert RegressionConfig.task.metric == "test_mse" and not RegressionConfig.task.higher_is_better


def test_a_regression_study_runs_end_to_end(regression, tmp_path):
    _, experiment = regression
    configs = [experiment.make_config(seed=s) for s in (0, 1)]
    stacked = experiment.run_batch(configs)
    single = [r for c in configs for r in experiment.run_single(c)]
    assert [(r["variant"], r["seed"]) for r in stacked] == [(r["variant"], r["seed"]) for r in sorted(
        single, key=lambda r: (r["variant"] != "dense", r["seed"]))]
    by_key = {(r["variant"], r["seed"]): r for r in single}
    for record in stacked:
        other = by_key[record["variant"], record["seed"]]
        assert record["test_mse"] == pytest.approx(other["test_mse"], rel=1e-4)
        assert "test_accuracy" not in record
        dense = by_key["dense", record["seed"]]["test_mse"]
        assert record["relative_gain"] == pytest.approx((dense - record["test_mse"]) / dense, rel=1e-3, abs=1e-9)
    report = api.run_study("regression_test", "width", seeds=2, out=tmp_path / "run", backend="local", quiet=True)
    rows = list(csv.DictReader((tmp_path / "run" / "records.csv").open()))
    assert len(rows) == 2 * 2 * 2 and all(float(r["test_mse"]) >= 0 for r in rows)
    assert "MSE" in report.read_text()
    api.build_report(tmp_path / "run")  # read back: test_mse is no fraction, so any non-negative value is fine


def test_a_kind_is_checked_when_registered():
    with pytest.raises(InvalidParameterError, match="already registered"):
        register_task_kind("binary", measure=mse)
    with pytest.raises(InvalidParameterError, match="stacked_loss and stacked_measure together"):
        register_task_kind("half", measure=mse, stacked_loss=stacked_mse_loss)
    with pytest.raises(InvalidParameterError, match="declares its 'fields'"):
        register_task_kind("nothing")
    with pytest.raises(InvalidParameterError, match="'metric' parameter"):
        register_task_kind("wrong_metric", fields=[RecordField("a")], metric="b")
    with pytest.raises(InvalidParameterError, match="unknown task kind 'nope'; registered kinds: binary"):
        get_task_kind("nope")


@pytest.mark.parametrize("name", list(TASK_KINDS))
def test_every_registered_kind_declares_its_metric_among_its_fields(name):
    kind = TASK_KINDS[name]
    assert kind.metric in [f.name for f in kind.fields]
    assert kind.stacks == (kind.stacked_loss is not None)
    if kind.measure is not None:
        assert len(kind.fields) >= 2
