"""Batched training gives the same models and records as training one model at a time."""

import pytest
import torch
from torch import nn

from torchfpe import expand
from torchfpe.core.optim import OPTIMIZERS
from torchfpe.lab.batched import StackedMLP, can_stack, fit_stacked
from torchfpe.lab.experiments.boolean import EXPERIMENT as BOOLEAN
from torchfpe.lab.train import TrainSettings, fit


def tiny_models(count, widths=(6, 4, 1), seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return [nn.Sequential(nn.Linear(widths[0], widths[1]), nn.ReLU(), nn.Linear(widths[1], widths[2])).to(dtype)
            for _ in range(count)]


@pytest.mark.parametrize("batch_size", [None, 16])
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_stack_follows_separate_training(batch_size, optimizer):
    settings = TrainSettings(optimizer=optimizer, lr=1e-2, weight_decay=1e-3, batch_size=batch_size)
    models = [expand(m, 2, seed=i) for i, m in enumerate(tiny_models(3))]
    x = torch.randn(3, 40, 6, dtype=torch.float64)
    y = (torch.rand(3, 40) > 0.5).double()
    stack = StackedMLP(models)
    fit_stacked(stack, x, y, 30, settings, generators=[torch.Generator().manual_seed(i) for i in range(3)])
    for i, (model, trained) in enumerate(zip(models, stack.unstack())):
        fit(model, x[i], y[i], 30, settings, generator=torch.Generator().manual_seed(i))
        for (name, a), b in zip(model.state_dict().items(), trained.state_dict().values()):
            if not isinstance(a, torch.Tensor):  # a layer's extra state (layout name, parent shape)
                assert a == b, name
                continue
            assert torch.allclose(a, b, atol=1e-10), name
        # masked entries stayed at exactly zero in the stack too
        assert torch.count_nonzero(trained[0].weight[~trained[0].weight_mask]) == 0


def test_unstack_round_trip_and_stackability():
    models = tiny_models(2)
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    stack = StackedMLP(models)
    out = stack(x)
    for i, model in enumerate(stack.unstack()):
        assert torch.allclose(out[i], models[i](x[i]))
    assert not can_stack([*tiny_models(1), *tiny_models(1, widths=(6, 5, 1))])
    with pytest.raises(ValueError, match="layout"):
        StackedMLP([*tiny_models(1), expand(tiny_models(1)[0], 2)])


def test_boolean_batched_records_equal_single_path():
    configs = [BOOLEAN.make_config(warmup_epochs=40, epochs_after=40, train_size=200, test_size=200, dtype="float64",
                           variants="dense+random+clause+static_sparse", seed=s) for s in (0, 1, 2)]
    single = {(r["variant"], r["seed"]): r for c in configs for r in BOOLEAN.run_single(c)}
    batched = {(r["variant"], r["seed"]): r for r in BOOLEAN.run_batch(configs)}
    assert single.keys() == batched.keys()
    for key, a in single.items():
        b = batched[key]
        for field in ("test_accuracy", "train_accuracy", "nonzero_parameters", "capacity_mean", "cosine_mean"):
            assert a[field] == pytest.approx(b[field], abs=1e-9), (key, field)
