"""Issue 20 item 5: the budget holds trainable positions (mask entries), not current values, fixed."""

from __future__ import annotations

import os
import warnings

import pytest
import torch
from torch import nn

from helpers import mlp
from torchfpe import InvalidParameterError, expand, find_ffn_pairs, nonzero_parameters, pack, trainable_positions

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SPLITS = ["random", "static_sparse", "overlap", "dropconnect", "grouped"]


def gpt2(seed: int = 0):
    """A tiny GPT-2 from its config: biases start at exactly 0, as in every GPT-2."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2, n_inner=16,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None,
                                     eos_token_id=None)
    return transformers.GPT2LMHeadModel(config)


def adamw_steps(model: nn.Module, steps: int = 2) -> None:
    batch = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        model(batch, labels=batch).loss.backward()
        optimizer.step()


def test_positions_count_mask_entries_not_values():
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.bias.zero_()
    assert trainable_positions(layer) == 15 and nonzero_parameters(layer) == 12
    wide = expand(mlp([4, 3, 2]), 2, seed=0)
    masks = sum(int(m.weight_mask.sum()) + int(m.bias_mask.sum()) for m in (wide[0], wide[2]))
    assert trainable_positions(wide) == masks
    wide[0].weight.requires_grad_(False)
    assert trainable_positions(wide) == masks - int(wide[0].weight_mask.sum())


def test_a_shared_parameter_counts_once_and_a_model_is_required():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    model[1].weight = model[0].weight
    assert trainable_positions(model) == 9 + 3 + 3
    with pytest.raises(InvalidParameterError, match="'model' parameter of trainable_positions"):
        trainable_positions("model")


@pytest.mark.parametrize("layout", ["ell", "block", "parent"])
def test_packing_keeps_the_positions(layout):
    wide = expand(mlp([8, 6, 2]), 2, "contiguous", seed=0, budget="structured")
    assert trainable_positions(pack(wide, layout=layout)) == trainable_positions(wide)


@pytest.mark.parametrize("split", SPLITS)
def test_an_untrained_gpt2_keeps_its_positions_at_expansion_and_after_training(split):
    parent = gpt2()
    biases = [m.bias for m in parent.modules() if isinstance(getattr(m, "bias", None), nn.Parameter)]
    assert biases and all(not b.any() for b in biases[:1]), "GPT-2 initialises its biases to 0"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the budget is met exactly: no 'below the parent' warning
        wide, report = expand(parent, 2, split, seed=0, pairs=find_ffn_pairs(parent), return_report=True)
    assert trainable_positions(wide) == trainable_positions(parent) == report.model_positions_after
    assert report.excess == 0 and report.model_positions_before == trainable_positions(parent)
    assert nonzero_parameters(wide) <= trainable_positions(wide)
    adamw_steps(wide)
    adamw_steps(parent)
    assert trainable_positions(wide) == trainable_positions(parent)
    assert nonzero_parameters(wide) <= trainable_positions(wide)
    # after training every live entry has moved off 0, so the values count matches as well
    assert nonzero_parameters(wide) == nonzero_parameters(parent) == trainable_positions(parent)


@pytest.mark.parametrize("budget", ["global", "outgoing", "layerwise"])
def test_every_budget_counts_positions(budget):
    parent = gpt2()
    wide = expand(parent, 2, "random", seed=0, pairs=find_ffn_pairs(parent), budget=budget)
    assert trainable_positions(wide) == trainable_positions(parent)


def test_zero_weights_of_a_parent_are_read_as_pruned():
    parent = mlp([8, 4, 2])
    with torch.no_grad():
        parent[0].weight[:, :3] = 0.0
    wide, report = expand(parent, 2, seed=0, return_report=True)
    assert report.model_positions_before == trainable_positions(parent) - 12 == trainable_positions(wide)
    assert report.excess == 0
