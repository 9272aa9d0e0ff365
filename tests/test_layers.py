"""The expanded-layer interface, layout state in the state_dict, and the parent checks of load_expanded."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchfpe
from torchfpe import DropConnectLinear, MaskedLinear, expand, load_expanded, nonzero_parameters
from torchfpe.core.layouts import ExpandedLayer, decode_layout_state, effective_parameters, expanded_layers
from torchfpe.metrics import hidden_weights
from helpers import mlp




def test_masked_layer_meets_the_interface():
    expanded = expand(mlp([6, 4, 3]), 2, "random", seed=0)
    layers = expanded_layers(expanded)
    assert [name for name, _ in layers] == ["0", "2"]
    for _, layer in layers:
        assert isinstance(layer, ExpandedLayer) and layer.layout == "masked"
        assert torch.equal(layer.effective_weight(), layer.weight * layer.weight_mask)
        assert torch.equal(layer.dense_weight_mask(), layer.weight_mask)
        assert layer.masked_out_nonzero() == 0
    assert sum(layer.nonzero_count() for _, layer in layers) == nonzero_parameters(expanded)
    assert expanded[0].parent_features == (6, 4) and expanded[2].parent_features == (4, 3)
    # effective_parameters reads plain and expanded layers alike
    weight, bias, weight_mask, bias_mask = effective_parameters(nn.Linear(3, 2))
    assert weight_mask.all() and bias_mask.all()
    weight, bias, weight_mask, bias_mask = effective_parameters(expanded[0])
    assert torch.equal(weight_mask, expanded[0].weight_mask) and torch.equal(weight, expanded[0].masked_weight())
    with pytest.raises(TypeError, match="ReLU"):
        effective_parameters(nn.ReLU())


def test_metrics_read_the_interface():
    expanded = expand(mlp([6, 4, 3]), 2, "random", seed=0)
    (name, weight), = hidden_weights(expanded)
    assert name == "0" and torch.equal(weight, expanded[0].effective_weight().detach())


def test_state_dict_carries_layout_and_dropconnect_p(tmp_path):
    parent = mlp([6, 4, 3])
    model = expand(parent, 2, "dropconnect", dropconnect_p=0.3, seed=0)
    assert decode_layout_state(model.state_dict()["0.fpe_layout"], "0.fpe_layout")["layout"] == "dropconnect"
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    loaded = load_expanded(mlp([6, 4, 3], seed=5), torch.load(path))
    assert isinstance(loaded[0], DropConnectLinear) and loaded[0].p == pytest.approx(0.3)
    assert loaded[0].parent_features == (6, 4)
    assert torch.equal(loaded[0].weight, model[0].weight)


def test_load_expanded_reads_files_saved_before_layouts_were_recorded():
    model = expand(mlp([6, 4, 3]), 2, "random", seed=0)
    old_style = {k: v for k, v in model.state_dict().items() if not k.endswith("fpe_layout")}
    loaded = load_expanded(mlp([6, 4, 3], seed=1), old_style)
    assert isinstance(loaded[0], MaskedLinear) and torch.equal(loaded[0].weight_mask, model[0].weight_mask)


def test_zeros_of_a_pruned_parent_stay_pruned_in_training():
    parent = mlp([8, 4, 2])
    with torch.no_grad():
        parent[0].weight[:, :3] = 0.0  # a pruned parent
    count = nonzero_parameters(parent)
    expanded = expand(parent, 2, "random", seed=0)
    assert nonzero_parameters(expanded) == count
    assert not expanded[0].weight_mask.reshape(4, 2, 8)[:, :, :3].any(), "zeros of the parent must be masked"
    optimizer = torch.optim.Adam(expanded.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        expanded(torch.randn(16, 8)).pow(2).sum().backward()
        optimizer.step()
    assert nonzero_parameters(expanded) <= count


def test_load_expanded_refuses_a_parent_of_another_width_and_leaves_it_unchanged():
    model = expand(mlp([6, 4, 3]), 2, "random", seed=0)
    other = mlp([12, 4, 3])  # 12 is a multiple of 6: only the recorded parent shape tells them apart
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(ValueError, match="layer '0'.*12 inputs"):
        load_expanded(other, model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), before.values()))
    old_style = {k: v for k, v in model.state_dict().items() if not k.endswith("fpe_layout")}
    with pytest.raises(ValueError, match="layer '0'"):
        load_expanded(mlp([5, 4, 3]), old_style)


def test_load_expanded_refuses_weights_outside_their_masks():
    model = expand(mlp([6, 4, 3]), 2, "random", seed=0)
    state = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in model.state_dict().items()}
    state["2.weight"][~state["2.weight_mask"]] = 1.0
    with pytest.raises(ValueError, match="layer '2'.*outside the layer's mask"):
        load_expanded(mlp([6, 4, 3]), state)


def test_load_expanded_refuses_a_layer_that_is_not_linear():
    model = expand(mlp([6, 4, 3]), 2, "random", seed=0)
    wrong = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.ReLU())
    with pytest.raises(TypeError, match="'2'.*ReLU"):
        load_expanded(wrong, model.state_dict())


def test_public_names():
    assert torchfpe.MaskedLinear is MaskedLinear
