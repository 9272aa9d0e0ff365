"""The ``nested`` layout (middle layers of a deep expansion as classes of rows) against the masked reference."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file

import torchfpe
from torchfpe import expand, pack, unpack
from torchfpe.core import expanded_layers, load_expanded
from torchfpe.core.layouts import LayoutError, NestedLinear, auto_layouts, BlockLinear

from helpers import bias_grad_dense, values_grad_dense
from helpers import mlp as _mlp

SIZES = [12, 16, 16, 16, 3]  # three hidden layers: two middle layers read copied columns


def mlp(sizes=SIZES, seed=0, dtype=torch.float64):
    return _mlp(sizes, seed, dtype)


def deep(split: str, alpha: int = 2, budget: str = "structured", seed: int = 0) -> torch.nn.Sequential:
    return expand(mlp(seed=seed), alpha, split, seed=seed, budget=budget)


def nested_layers(model) -> list[str]:
    return [name for name, layer in expanded_layers(model) if isinstance(layer, NestedLinear)]


MIDDLE = {"2": "nested", "4": "nested"}  # forced on the middle layers; auto wants wider layers


@pytest.mark.parametrize("split", ["contiguous", "grouped", "shared", "random"])
@pytest.mark.parametrize("alpha", [2, 3])
def test_outputs_and_gradients_equal_the_masked_layout(split, alpha):
    masked = deep(split, alpha)
    packed = pack(masked, MIDDLE)
    assert nested_layers(packed) == ["2", "4"]
    x = torch.randn(5, SIZES[0], dtype=torch.float64, requires_grad=True)
    x_copy = x.detach().clone().requires_grad_(True)
    out_m, out_p = masked(x), packed(x_copy)
    assert torch.allclose(out_m, out_p, atol=1e-12)
    weights = torch.randn_like(out_m)
    (out_m * weights).sum().backward()
    (out_p * weights).sum().backward()
    assert torch.allclose(x.grad, x_copy.grad, atol=1e-12)
    for (name, layer_m), (_, layer_p) in zip(expanded_layers(masked), expanded_layers(packed)):
        assert torch.allclose(layer_m.weight.grad * layer_m.weight_mask, values_grad_dense(layer_p), atol=1e-12), name
        assert torch.allclose(layer_m.bias.grad * layer_m.bias_mask, bias_grad_dense(layer_p), atol=1e-12), name
        if isinstance(layer_p, NestedLinear):  # holes and padding get exactly no gradient
            assert not layer_p.values.grad[~layer_p.live].any(), name
    assert torch.equal(unpack(packed)[2].weight_mask, masked[2].weight_mask)


@pytest.mark.parametrize("split", ["contiguous", "grouped"])
def test_adamw_steps_track_the_masked_layout_and_holes_stay_zero(split):
    masked = deep(split, 2)
    packed = pack(masked, MIDDLE)
    opt_m = torch.optim.AdamW(masked.parameters(), lr=1e-2, weight_decay=0.1)
    opt_p = torch.optim.AdamW(packed.parameters(), lr=1e-2, weight_decay=0.1)
    generator = torch.Generator().manual_seed(1)
    for _ in range(4):
        x = torch.randn(8, SIZES[0], dtype=torch.float64, generator=generator)
        for model, opt in ((masked, opt_m), (packed, opt_p)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    x = torch.randn(8, SIZES[0], dtype=torch.float64, generator=generator)
    assert torch.allclose(masked(x), packed(x), atol=1e-10)
    for name in ("2", "4"):
        layer = packed[int(name)]
        assert not layer.values.detach()[~layer.live].any(), name  # holes and padding exactly 0.0
        assert layer.masked_out_nonzero() == 0
        assert torch.allclose(layer.effective_weight(), masked[int(name)].masked_weight(), atol=1e-10)
    assert torchfpe.nonzero_parameters(packed) == torchfpe.nonzero_parameters(masked)


def test_state_dict_holds_tensors_only_and_round_trips_through_safetensors(tmp_path):
    model = pack(deep("grouped", 2), MIDDLE).eval()
    state = model.state_dict()
    assert all(isinstance(value, torch.Tensor) for value in state.values())
    save_file(state, tmp_path / "model.safetensors")
    loaded = load_expanded(mlp(seed=7), load_file(tmp_path / "model.safetensors")).eval()
    assert nested_layers(loaded) == ["2", "4"]
    assert loaded[2].buckets == model[2].buckets
    x = torch.randn(5, SIZES[0], dtype=torch.float64)
    assert torch.equal(loaded(x), model(x))
    other = copy.deepcopy(model)
    with torch.no_grad():
        for param in other.parameters():
            param.add_(1.0)
    other.load_state_dict(load_file(tmp_path / "model.safetensors"))
    assert torch.equal(other(x), model(x))


def test_tampered_index_tensors_are_refused_naming_the_key():
    model = pack(deep("contiguous", 2), MIDDLE)
    state = model.state_dict()
    for key, value in (("2.in_index", torch.full_like(state["2.in_index"], 10_000)),
                       ("2.out_index", torch.zeros_like(state["2.out_index"])),
                       ("2.hole_bits", state["2.hole_bits"][:-1])):
        tampered = {**state, key: value}
        with pytest.raises(torchfpe.InvalidParameterError, match=repr(key)):
            copy.deepcopy(model).load_state_dict(tampered)


def test_from_masked_refuses_masks_that_do_not_fit():
    # the global budget prunes inside the classes: rows no longer share their inputs
    with pytest.raises(LayoutError):
        NestedLinear.from_masked(deep("random", 2, budget="global")[2], 2, auto=True)
    # a first layer reads no copied columns: auto leaves it to block
    with pytest.raises(LayoutError, match="copied columns"):
        NestedLinear.from_masked(deep("contiguous", 2)[0], 2, auto=True)
    # forced, any masks fit (a class per row, at worst): exact, if slow
    masked = deep("random", 2, budget="global")
    x = torch.randn(3, SIZES[0], dtype=torch.float64)
    assert torch.allclose(pack(masked, {"2": "nested"})(x), masked(x), atol=1e-12)


def test_auto_tries_nested_before_block_and_takes_wide_middle_layers():
    assert auto_layouts().index(NestedLinear) < auto_layouts().index(BlockLinear)
    parent = _mlp([64, 256, 256, 256, 10], 0, torch.float32)
    model = expand(parent, 4, "contiguous", seed=0, budget="structured")
    packed = pack(model)
    assert nested_layers(packed) == ["2", "4"]
    assert isinstance(packed[0], BlockLinear)
    layer = packed[2]
    assert layer.values.numel() <= 1.25 * int(model[2].weight_mask.sum())  # padding bounded
    x = torch.randn(4, 64)
    assert torch.allclose(packed(x), model(x), atol=1e-4)
