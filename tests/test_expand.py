"""Invariants of the FPE operator, hand-computed cases, and errors."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import torchfpe
from torchfpe import MaskedLinear, expand, nonzero_parameters
from helpers import mlp




def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key in before:
        assert torch.equal(after[key], before[key]), key


# ------------------------------------------------------------------------ property-based invariants
@settings(max_examples=40, deadline=None)
@given(
    d=st.integers(2, 17), h=st.integers(1, 6), c=st.integers(1, 4), alpha=st.integers(2, 5),
    split=st.sampled_from(["random", "contiguous", "feature", "clause"]), seed=st.integers(0, 10_000),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_children_partition_parent_inputs_and_budget_is_exact(d, h, c, alpha, split, seed, dtype):
    alpha = min(alpha, d)
    parent = mlp([d, h, c], seed=seed, dtype=dtype)
    before = snapshot(parent)
    clauses = [list(range(i, min(i + 3, d))) for i in range(0, d, 3)] if split == "clause" else None

    unpruned = expand(parent, alpha, split, seed=seed, clauses=clauses, budget="none")
    masks = unpruned[0].weight_mask.reshape(h, alpha, d).int()
    assert torch.equal(masks.sum(dim=1), torch.ones(h, d, dtype=torch.int)), "children must be disjoint and covering"
    sizes = masks.sum(dim=2)
    if split in ("random", "contiguous", "feature"):
        assert int(sizes.max() - sizes.min()) <= 1, "balanced splits differ in size by at most one"
    # children keep the parent's weights exactly where their mask is on
    expected = parent[0].weight.detach().repeat_interleave(alpha, 0) * unpruned[0].weight_mask
    assert torch.equal(unpruned[0].weight.detach(), expected)
    assert unpruned[0].weight.dtype == dtype

    pruned = expand(parent, alpha, split, seed=seed, clauses=clauses)
    assert nonzero_parameters(pruned) == nonzero_parameters(parent)
    assert_unchanged(parent, before)


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(3, 9), min_size=3, max_size=5), alpha=st.integers(2, 3),
       budget=st.sampled_from(["global", "outgoing", "layerwise"]), seed=st.integers(0, 1000))
def test_deep_consecutive_pairs_keep_budget(sizes, alpha, budget, seed):
    parent = mlp(sizes, seed=seed)
    expanded, report = expand(parent, alpha, seed=seed, budget=budget, return_report=True)
    assert nonzero_parameters(expanded) == nonzero_parameters(parent) == report.model_nonzero_after
    hidden = [m for m in expanded if isinstance(m, nn.Linear)]
    for layer, width in zip(hidden[:-1], sizes[1:-1]):
        assert layer.out_features == alpha * width
    assert hidden[-1].out_features == sizes[-1]
    if budget == "layerwise":
        assert all(change.nonzero_after == change.nonzero_before for change in report.layers)
    if budget == "outgoing":
        first = report.layers[0]
        assert first.role == "in" and first.nonzero_after == first.nonzero_split


def test_middle_layer_children_partition_its_expanded_input():
    parent = mlp([6, 4, 5, 1])
    expanded = expand(parent, 2, "random", seed=3, budget="none")
    middle = expanded[2]
    assert middle.weight.shape == (10, 8)
    assert torch.equal(middle.weight_mask.reshape(5, 2, 8).sum(dim=1), torch.ones(5, 8, dtype=torch.long))


# ------------------------------------------------------------------------------ hand-computed case
def test_hand_computed_children_entry_by_entry():
    parent = nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        parent[0].weight.copy_(torch.tensor([[1.0, -2.0, 3.0, -4.0], [0.5, 0.25, -0.75, 2.0]]))
        parent[0].bias.copy_(torch.tensor([0.1, -0.2]))
        parent[2].weight.copy_(torch.tensor([[10.0, -20.0]]))
        parent[2].bias.copy_(torch.tensor([7.0]))
    expanded = expand(parent, 2, "contiguous", budget="none", bias="divide")
    # contiguous: inputs 0,1 -> child 0; inputs 2,3 -> child 1 (children at 2*i + k)
    assert torch.equal(expanded[0].weight.detach(), torch.tensor([
        [1.0, -2.0, 0.0, 0.0],
        [0.0, 0.0, 3.0, -4.0],
        [0.5, 0.25, 0.0, 0.0],
        [0.0, 0.0, -0.75, 2.0],
    ]))
    assert torch.allclose(expanded[0].bias.detach(), torch.tensor([0.05, 0.05, -0.1, -0.1]))
    assert torch.equal(expanded[2].weight.detach(), torch.tensor([[10.0, 10.0, -20.0, -20.0]]))
    assert torch.equal(expanded[2].bias.detach(), torch.tensor([7.0]))

    # budget: parent has 8+2+2+1 = 13 non-zeros; expanded 8+4+4+1 = 17 -> remove the 4 smallest |w|:
    # 0.25, 0.5, -0.75, 1.0 (all in the incoming layer; outgoing magnitudes are 10 and 20)
    pruned, report = expand(parent, 2, "contiguous", bias="divide", return_report=True)
    assert nonzero_parameters(pruned) == 13
    assert torch.equal(pruned[0].weight.detach(), torch.tensor([
        [0.0, -2.0, 0.0, 0.0],
        [0.0, 0.0, 3.0, -4.0],
        [0.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 2.0],
    ]))
    assert report.layers[0].nonzero_split == 12 and report.layers[0].nonzero_after == 8
    assert "after budget" in str(report)


def test_bias_policies():
    parent = mlp([5, 3, 2])
    copied = expand(parent, 2, budget="none", bias="copy")
    assert torch.equal(copied[0].bias.detach(), parent[0].bias.detach().repeat_interleave(2))
    zeroed = expand(parent, 2, budget="none", bias="zero")
    assert torch.count_nonzero(zeroed[0].bias) == 0 and not zeroed[0].bias_mask.any()


def test_budget_none_reports_excess():
    parent = mlp([6, 4, 3])
    expanded, report = expand(parent, 3, budget="none", return_report=True)
    # copies: 2 extra outgoing columns per unit (4*2*3) and 2 extra biases per unit (4*2)
    assert report.excess == 4 * 2 * 3 + 4 * 2
    assert nonzero_parameters(expanded) - nonzero_parameters(parent) == report.excess


def test_random_split_is_seeded_and_independent_per_parent():
    parent = mlp([40, 6, 1])
    a = expand(parent, 2, "random", seed=1, budget="none")[0].weight_mask
    b = expand(parent, 2, "random", seed=1, budget="none")[0].weight_mask
    c = expand(parent, 2, "random", seed=2, budget="none")[0].weight_mask
    assert torch.equal(a, b) and not torch.equal(a, c)
    rows = a.reshape(6, 2, 40)[:, 0]
    assert len({tuple(r.tolist()) for r in rows}) > 1, "each parent draws its own partition"


def test_clause_split_keeps_whole_clauses_together():
    clauses = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    parent = mlp([14, 3, 1])
    masks = expand(parent, 2, "clause", clauses=clauses, seed=0, budget="none")[0].weight_mask.reshape(3, 2, 14)
    for parent_masks in masks:
        child_of = parent_masks.int().argmax(dim=0)
        for clause in clauses:
            assert len(set(child_of[clause].tolist())) == 1
        assert parent_masks.sum(dim=1).tolist() == [7, 7]  # 2 clauses + 1 unused input each


def test_clause_split_shared_input_goes_with_first_dealt_clause():
    parent = mlp([5, 1, 1])
    masks = expand(parent, 2, "clause", clauses=[[0, 1], [1, 2]], seed=0, budget="none")[0].weight_mask
    assert torch.equal(masks.int().sum(dim=0), torch.ones(5, dtype=torch.int))


def test_user_assignment_tensor_and_callable():
    parent = mlp([6, 2, 1])
    ids = torch.tensor([0, 0, 1, 1, 2, 2])
    masks = expand(parent, 3, ids, budget="none")[0].weight_mask
    assert masks[0].tolist() == [True, True, False, False, False, False]
    assert masks[5].tolist() == [False, False, False, False, True, True]
    same = expand(parent, 3, lambda weight, alpha, gen: ids.expand(weight.shape[0], -1), budget="none")
    assert torch.equal(same[0].weight_mask, masks)


def test_feature_split_groups_inputs_the_layer_uses_together():
    # inputs 0-3 drive units together, inputs 4-7 drive others: the Gram matrix has two blocks
    parent = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 1))
    with torch.no_grad():
        parent[0].weight.zero_()
        parent[0].weight[:2, :4] = torch.tensor([[1.0, 1.1, 0.9, 1.0], [0.8, 1.0, 1.2, 1.0]])
        parent[0].weight[2:, 4:] = torch.tensor([[1.0, 0.9, 1.0, 1.1], [1.2, 1.0, 0.8, 1.0]])
        parent[0].weight += 0.01
    masks = expand(parent, 2, "feature", seed=0, budget="none")[0].weight_mask.reshape(4, 2, 8)
    groups = {tuple(masks[0, k].nonzero().flatten().tolist()) for k in range(2)}
    assert groups == {(0, 1, 2, 3), (4, 5, 6, 7)}


# ------------------------------------------------------------------------------------------ controls
@pytest.mark.parametrize("split", torchfpe.SPLITS.where(control=True))
def test_controls_match_parent_budget(split):
    parent = mlp([12, 5, 3])
    expanded = expand(parent, 2, split, seed=0)
    assert nonzero_parameters(expanded) == nonzero_parameters(parent)


def test_overlap_children_overlap():
    parent = mlp([20, 4, 1])
    masks = expand(parent, 2, "overlap", seed=0, budget="none")[0].weight_mask.reshape(4, 2, 20)
    assert masks.sum(dim=2).eq(10).all()
    assert (masks[:, 0] & masks[:, 1]).any(), "overlap control must share inputs between children"


def test_dropconnect_keeps_width_and_drops_in_training():
    parent = mlp([10, 4, 1])
    expanded = expand(parent, 2, "dropconnect")
    layer = expanded[0]
    assert isinstance(layer, torchfpe.DropConnectLinear) and layer.out_features == 4 and layer.p == 0.5
    x = torch.randn(3, 10)
    layer.eval()
    assert torch.allclose(layer(x), parent[0](x))
    layer.train()
    torch.manual_seed(0)
    assert not torch.allclose(layer(x), parent[0](x))


def test_static_sparse_mask_counts_match_parent_layers():
    parent = mlp([10, 4, 3])
    expanded = expand(parent, 2, "static_sparse", seed=0, budget="none")
    assert int(expanded[0].weight_mask.sum()) == 40 and expanded[0].weight.shape == (8, 10)
    assert int(expanded[2].weight_mask.sum()) == 12


# ------------------------------------------------------------------------------- any model via pairs
class FeedForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.ModuleDict({"up": nn.Linear(8, 16), "down": nn.Linear(16, 8)})
        self.act = nn.GELU()

    def forward(self, x):
        return x + self.block["down"](self.act(self.block["up"](x)))


def test_pairs_on_a_transformer_style_block():
    torch.manual_seed(0)
    model = FeedForward()
    expanded = expand(model, 4, pairs=[("block.up", "block.down")], seed=0)
    assert expanded.block["up"].out_features == 64 and expanded.block["down"].in_features == 64
    assert nonzero_parameters(expanded) == nonzero_parameters(model)
    assert expanded(torch.randn(2, 8)).shape == (2, 8)


def test_expanding_an_expanded_model_keeps_the_earlier_masks():
    parent = mlp([12, 3, 1])
    once = expand(parent, 2, seed=0)
    twice = expand(once, 2, seed=1)
    old = once[0].weight_mask.repeat_interleave(2, 0)
    assert not (twice[0].weight_mask & ~old).any()
    assert nonzero_parameters(twice) == nonzero_parameters(parent)


# -------------------------------------------------------------------------------- masks are fixed
@pytest.mark.parametrize("make_optimizer", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2),
    lambda p: torch.optim.Adam(p, lr=1e-2),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    lambda p: torch.optim.RMSprop(p, lr=1e-2, momentum=0.5, weight_decay=1e-3),
], ids=["sgd-momentum", "adam", "adamw-decay", "rmsprop"])
def test_masked_entries_stay_exactly_zero_under_training(make_optimizer):
    parent = mlp([10, 6, 6, 2])
    expanded = expand(parent, 2, seed=0)
    masks = {n: m.weight_mask.clone() for n, m in expanded.named_modules() if isinstance(m, MaskedLinear)}
    count = nonzero_parameters(expanded)
    optimizer = make_optimizer(expanded.parameters())
    x, y = torch.randn(64, 10), torch.randint(0, 2, (64,))
    for _ in range(200):
        optimizer.zero_grad()
        nn.functional.cross_entropy(expanded(x), y).backward()
        optimizer.step()
    for name, module in expanded.named_modules():
        if isinstance(module, MaskedLinear):
            assert torch.equal(module.weight_mask, masks[name])
            assert torch.count_nonzero(module.weight.detach()[~module.weight_mask]) == 0
    assert nonzero_parameters(expanded) <= count


def test_state_dict_round_trip_into_fresh_model(tmp_path):
    parent = mlp([9, 4, 4, 2], dtype=torch.float64)
    expanded = expand(parent, 3, seed=5)
    path = tmp_path / "fpe.pt"
    torch.save(expanded.state_dict(), path)
    fresh_parent = mlp([9, 4, 4, 2], seed=99, dtype=torch.float64)
    loaded = torchfpe.load_expanded(fresh_parent, torch.load(path))
    x = torch.randn(5, 9, dtype=torch.float64)
    assert torch.equal(loaded(x), expanded(x))
    for a, b in zip(loaded.modules(), expanded.modules()):
        if isinstance(b, MaskedLinear):
            assert torch.equal(a.weight_mask, b.weight_mask)
    # also: re-expanding a fresh parent with the same arguments and loading the state dict
    rebuilt = expand(fresh_parent, 3, seed=0)
    rebuilt.load_state_dict(torch.load(path))
    assert torch.equal(rebuilt(x), expanded(x))


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("kwargs, error, words", [
    ({"alpha": 1}, ValueError, "alpha"),
    ({"alpha": 2.0}, TypeError, "alpha"),
    ({"alpha": True}, TypeError, "alpha"),
    ({"alpha": "2"}, TypeError, "alpha"),
    ({"alpha": 9}, ValueError, "fan-in"),
    ({"alpha": 2, "split": "bogus"}, ValueError, "unknown split"),
    ({"alpha": 2, "budget": "bogus"}, ValueError, "budget"),
    ({"alpha": 2, "bias": "half"}, ValueError, "bias"),
    ({"alpha": 2, "split": "clause"}, ValueError, "clauses"),
    ({"alpha": 2, "split": "clause", "clauses": [[0, 1], []]}, ValueError, "empty"),
    ({"alpha": 2, "split": "clause", "clauses": [[0, 8]]}, ValueError, "out of range"),
    ({"alpha": 2, "split": "clause", "clauses": []}, ValueError, "non-empty"),
    ({"alpha": 2, "pairs": [("0", "nope")]}, ValueError, "not a submodule"),
    ({"alpha": 2, "pairs": [("0", "1")]}, TypeError, "nn.Linear"),
    ({"alpha": 2, "pairs": [("0", "4")]}, ValueError, "does not chain"),
    ({"alpha": 2, "layers": ["4"]}, ValueError, "not hidden layers"),
    ({"alpha": 2, "split": torch.tensor([0, 5, 1, 0, 1, 0, 1, 0])}, ValueError, "child ids"),
    ({"alpha": 2, "split": {"0": "random"}}, ValueError, "split mapping"),
])
def test_bad_input_raises_before_anything_changes(kwargs, error, words):
    parent = mlp([8, 5, 4, 1])
    before = snapshot(parent)
    with pytest.raises(error, match=words):
        expand(parent, **kwargs)
    assert_unchanged(parent, before)


def test_no_hidden_layer_and_non_sequential_errors():
    with pytest.raises(ValueError, match="no hidden layer"):
        expand(nn.Sequential(nn.Linear(4, 2)), 2)
    with pytest.raises(ValueError, match="no hidden layer"):
        expand(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 1)), 2)
    with pytest.raises(TypeError, match="pairs="):
        expand(FeedForward(), 2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_rejected(bad):
    parent = mlp([4, 3, 1])
    with torch.no_grad():
        parent[0].weight[1, 2] = bad
    before = snapshot(parent)
    with pytest.raises(ValueError, match="NaN or inf"):
        expand(parent, 2)
    assert all(torch.equal(a, b) or (a.isnan() & b.isnan()).any() for a, b in zip(parent.state_dict().values(), before.values()))


def test_parent_is_never_modified_and_forward_works():
    parent = mlp([7, 5, 5, 3])
    before = snapshot(parent)
    frozen = copy.deepcopy(parent)
    expanded = expand(parent, 2, "feature", seed=1)
    assert expanded(torch.randn(4, 7)).shape == (4, 3)
    assert_unchanged(parent, before)
    assert all(type(a) is type(b) for a, b in zip(parent.modules(), frozen.modules()))
