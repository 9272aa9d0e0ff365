"""``summary``, ``bake`` and the refusal of ``torch.nn.utils.prune`` on expanded layers, for every layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import torchfpe
from torchfpe import InvalidParameterError, bake, expand, nonzero_parameters, pack, summary
from torchfpe.core import expanded_layers
from torchfpe.core.layouts import LAYOUTS
from helpers import mlp as _mlp
from test_state_format import model_in_layout


def mlp(seed=0):
    return _mlp([12, 8, 6, 3], seed, torch.float64)


def test_summary_rows_and_table():
    wide = expand(mlp(), 2, "random", seed=0)
    packed = pack(wide)
    for model in (wide, packed):
        report = summary(model)
        assert [row["layer"] for row in report.rows] == ["0", "2", "4"]
        assert report.nonzero == sum(layer.nonzero_count() for _, layer in expanded_layers(model))
        assert report.nonzero == nonzero_parameters(model) == nonzero_parameters(mlp())
        first = report.rows[0]
        assert first["shape"] == "16x12" and first["parent_shape"] == "8x12" and first["parent"] == 12 * 8 + 8
        table = str(report)
        assert table.splitlines()[0].split()[:3] == ["layer", "layout", "shape"] and "total" in table
    assert summary(wide).rows[0]["stored"] == 16 * 12 + 16  # masked stores alpha x the parent's weights
    assert summary(packed).rows[0]["stored"] < summary(wide).rows[0]["stored"]
    with pytest.raises(InvalidParameterError, match="no expanded layer"):
        summary(mlp())


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_bake_gives_plain_linear_layers_with_the_same_outputs_and_count(name):
    model = model_in_layout(name).eval()
    baked, report = bake(model, return_summary=True)
    assert not expanded_layers(baked) and all(type(m) is nn.Linear for m in baked if hasattr(m, "weight"))
    x = torch.randn(5, 12, dtype=torch.float64)
    torch.testing.assert_close(baked(x), model(x), rtol=0, atol=1e-12)
    assert nonzero_parameters(baked) == nonzero_parameters(model) == report.nonzero + nonzero_parameters(
        nn.Sequential(*[m for m in model if not isinstance(m, torchfpe.ExpandedLayer)]))
    assert expanded_layers(model), "bake leaves the model itself alone"


def test_bake_keeps_frozen_flags():
    parent = mlp()
    parent[2].requires_grad_(False)
    baked = bake(expand(parent, 2, seed=0))
    assert not baked[2].weight.requires_grad and baked[0].weight.requires_grad


@pytest.mark.parametrize("layout", [None, "auto"])
def test_torch_prune_cannot_replace_the_fpe_masks(layout):
    model = expand(mlp(), 2, seed=0)
    model = pack(model, layout) if layout else model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InvalidParameterError, match="torch.nn.utils.prune would replace them"):
        prune.l1_unstructured(model[0], "weight", amount=0.3)
    with pytest.raises(InvalidParameterError, match="'bias_orig'"):
        prune.random_unstructured(model[0], "bias", amount=0.3)
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())
    model(torch.randn(2, 12, dtype=torch.float64))
    prune.l1_unstructured(bake(model)[0], "weight", amount=0.3)  # a baked model is plain torch again
