"""Issue 20 item 3: expand_ (in place), carry_optimizer in place, wrapped optimizers and schedulers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import mlp
from torchfpe import (ExpansionReport, InvalidParameterError, MaskedLinear, carry_optimizer, expand, expand_,
                      trainable_positions)


def step(model: nn.Module, optimizer, scheduler=None, seed: int = 0) -> None:
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(seed))
    optimizer.zero_grad()
    model(x).square().mean().backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()


def adam_run(model):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    for seed in range(3):
        step(model, optimizer, scheduler, seed)
    return optimizer, scheduler


def test_expand_in_place_equals_expand_and_keeps_the_object():
    model = mlp([6, 4, 3])
    wide = expand(model, 2, seed=0)
    untouched = model[1]
    report = expand_(model, 2, seed=0)
    assert isinstance(report, ExpansionReport) and report.excess == 0
    assert isinstance(model[0], MaskedLinear) and model[1] is untouched
    for name, tensor in wide.state_dict().items():
        if isinstance(tensor, torch.Tensor):
            assert torch.equal(model.state_dict()[name], tensor), name


def test_expand_in_place_carries_the_optimizer_like_carry_optimizer():
    model, reference = mlp([6, 4, 3]), mlp([6, 4, 3])
    optimizer, scheduler = adam_run(model)
    ref_optimizer, _ = adam_run(reference)
    ref_wide = expand(reference, 2, seed=0)
    ref_carried = carry_optimizer(ref_optimizer, reference, ref_wide)
    expand_(model, 2, seed=0, optimizer=optimizer)
    assert scheduler.optimizer is optimizer
    assert [p for g in optimizer.param_groups for p in g["params"]] == list(model.parameters())
    for param, ref_param in zip(model.parameters(), ref_wide.parameters()):
        for key, value in ref_carried.state[ref_param].items():
            assert torch.equal(optimizer.state[param][key], value), key
    lr = optimizer.param_groups[0]["lr"]
    for seed in range(3, 7):  # the schedule continues on the same object; masks hold
        step(model, optimizer, scheduler, seed)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lr * 0.25)
    assert all(layer.masked_out_nonzero() == 0 for layer in (model[0], model[2]))
    assert not model[0].weight.detach()[~model[0].weight_mask].any()


def test_expand_in_place_refuses_before_changing_anything():
    model = mlp([6, 4, 3])
    optimizer = torch.optim.RMSprop(model.parameters())
    with pytest.raises(InvalidParameterError, match="RMSprop"):
        expand_(model, 2, seed=0, optimizer=optimizer)
    assert type(model[0]) is nn.Linear
    with pytest.raises(InvalidParameterError, match="return_report"):
        expand_(model, 2, return_report=True)


def test_carry_in_place_keeps_the_optimizer_object():
    parent = mlp([6, 4, 3])
    optimizer, scheduler = adam_run(parent)
    wide = expand(parent, 2, seed=0)
    fresh = carry_optimizer(optimizer, parent, wide)
    same = carry_optimizer(optimizer, parent, wide, in_place=True)
    assert same is optimizer and scheduler.optimizer is optimizer
    assert optimizer.param_groups[0]["params"] == list(wide.parameters())
    for param in wide.parameters():
        for key, value in fresh.state[param].items():
            assert torch.equal(optimizer.state[param][key], value)


def test_carry_rebinds_the_scheduler_to_a_new_optimizer():
    parent = mlp([6, 4, 3])
    optimizer, scheduler = adam_run(parent)
    last_epoch, lr = scheduler.last_epoch, scheduler.get_last_lr()
    wide = expand(parent, 2, seed=0)
    fresh = carry_optimizer(optimizer, parent, wide, scheduler=scheduler)
    assert scheduler.optimizer is fresh and scheduler.last_epoch == last_epoch
    assert fresh.param_groups[0]["lr"] == lr[0]
    step(wide, fresh, scheduler, 3)
    assert fresh.param_groups[0]["lr"] == pytest.approx(lr[0] * 0.5)  # StepLR halves at epoch 4
    other = torch.optim.SGD(mlp([6, 4, 3]).parameters(), lr=0.1)
    with pytest.raises(InvalidParameterError, match="another optimizer"):
        carry_optimizer(optimizer, parent, wide, scheduler=torch.optim.lr_scheduler.StepLR(other, 1))


def test_accelerate_wrapped_optimizer_is_carried_in_place():
    accelerate = pytest.importorskip("accelerate")
    from accelerate.optimizer import AcceleratedOptimizer
    from accelerate.scheduler import AcceleratedScheduler

    accelerate.state.AcceleratorState._reset_state()
    accelerate.Accelerator(cpu=True)
    model = mlp([6, 4, 3])
    inner, plain = adam_run(model)
    wrapped = AcceleratedOptimizer(inner, device_placement=False)
    scheduler = AcceleratedScheduler(plain, wrapped)
    report = expand_(model, 2, seed=0, optimizer=wrapped)
    assert report.excess == 0 and wrapped.optimizer is inner
    assert inner.param_groups[0]["params"] == list(model.parameters())
    assert trainable_positions(model) == sum(p.numel() for p in mlp([6, 4, 3]).parameters())
    for seed in range(3, 6):
        step(model, wrapped, scheduler, seed)
    assert model[0].masked_out_nonzero() == 0
    # a new optimizer from a wrapped one: the wrapped scheduler's torch scheduler follows it
    parent = mlp([6, 4, 3])
    inner, plain = adam_run(parent)
    wrapped = AcceleratedOptimizer(inner, device_placement=False)
    fresh = carry_optimizer(wrapped, parent, expand(parent, 2, seed=0), scheduler=AcceleratedScheduler(plain, wrapped))
    assert type(fresh) is torch.optim.AdamW and plain.optimizer is fresh
    accelerate.state.AcceleratorState._reset_state()
