"""The optimizer registry: one record per optimizer, read by training, the config check and carry_optimizer."""

import pytest
import torch
from helpers import cli, mlp, one_error_line

from torchfpe import InvalidParameterError, carry_optimizer, expand
from torchfpe.core.optim import OPTIMIZERS, get_optimizer, register_optimizer
from torchfpe.lab.experiments.boolean import EXPERIMENT as BOOLEAN
from torchfpe.lab.train import TrainSettings, make_optimizer

TINY = {"warmup_epochs": 3, "epochs_after": 3, "train_size": 64, "test_size": 64, "neurons": 4}


@pytest.fixture
def rmsprop():
    """RMSprop registered from outside the package, not carried."""
    spec = register_optimizer("rmsprop_test", torch.optim.RMSprop, settings=("lr", "weight_decay", "momentum"))
    yield spec
    OPTIMIZERS.remove("rmsprop_test")


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_registered_optimizer_is_built_from_the_settings(name):
    optimizer = make_optimizer(mlp([4, 3, 1]).parameters(), TrainSettings(optimizer=name, lr=0.02,
                                                                          weight_decay=0.001))
    assert type(optimizer) is OPTIMIZERS[name].cls
    assert optimizer.defaults["lr"] == 0.02 and optimizer.defaults["weight_decay"] == 0.001


@pytest.mark.parametrize("name", OPTIMIZERS.where(carried=True))
def test_every_carried_optimizer_is_carried(name):
    parent = mlp([6, 4, 3])
    optimizer = make_optimizer(parent.parameters(), TrainSettings(optimizer=name))
    parent(torch.randn(5, 6)).square().mean().backward()
    optimizer.step()
    wide = expand(parent, 2, seed=0)
    carried = carry_optimizer(optimizer, parent, wide)
    assert type(carried) is OPTIMIZERS[name].cls and carried.state


def test_an_optimizer_registered_from_outside_trains_every_non_carry_variant(rmsprop):
    variants = "dense+random+clause+dropconnect+static_sparse+random@structured"
    config = BOOLEAN.make_config(**TINY, optimizer="rmsprop_test", variants=variants)
    records = BOOLEAN.run_batch([config])
    assert {r["variant"] for r in records} == set(variants.split("+"))
    assert all(r["optimizer"] == "rmsprop_test" for r in records)
    with pytest.raises(InvalidParameterError, match="registered with carried=True"):
        carry_optimizer(torch.optim.RMSprop(mlp([6, 4, 3]).parameters()), mlp([6, 4, 3]), expand(mlp([6, 4, 3]), 2))


def test_an_optimizer_registered_from_outside_runs_a_study(rmsprop, tmp_path):
    from torchfpe.lab import api

    report = api.run_study("boolean", "headline", seeds=1, out=tmp_path / "run", backend="local", quiet=True,
                           overrides={**TINY, "optimizer": "rmsprop_test", "variants": "dense+random+random@outgoing"})
    assert "rmsprop_test" in report.read_text()


def test_carry_is_refused_at_config_time_for_an_optimizer_not_carried(rmsprop, tmp_path):
    with pytest.raises(InvalidParameterError, match="optimizer='rmsprop_test' is not registered as carried"):
        BOOLEAN.make_config(**TINY, optimizer="rmsprop_test", variants="dense+random@carry")
    out = tmp_path / "run"
    result = cli("reproduce", "boolean", "--out", out, "--quiet", "--backend", "local",
                 "--set", "optimizer=rmsprop_test", "--set", "variants=dense+random@carry")
    assert result.exit_code != 0
    assert "@carry" in one_error_line(result) and "rmsprop_test" in one_error_line(result)
    assert not out.exists(), "nothing written before the check"


def test_registration_is_checked():
    with pytest.raises(InvalidParameterError, match="already registered"):
        register_optimizer("adam", torch.optim.Adam)
    with pytest.raises(InvalidParameterError, match="subclass of torch.optim.Optimizer"):
        register_optimizer("nope", dict)
    with pytest.raises(InvalidParameterError, match="unknown optimizer 'nope'; registered optimizers: adam"):
        get_optimizer("nope")
    with pytest.raises(InvalidParameterError, match="optimizer"):
        TrainSettings(optimizer="nope")
