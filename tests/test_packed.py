"""The packed layouts against the masked reference: outputs, gradients, training, state_dict, errors."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import torchfpe
from torchfpe import expand, nonzero_parameters, pack, unpack
from torchfpe.core import BlockLinear, EllLinear, MaskedLinear, ParentLinear, expanded_layers, \
    load_expanded
from torchfpe.core.layouts import stored_bytes

from helpers import bias_grad_dense
from helpers import mlp as _mlp
from helpers import values_grad_dense as dense_from_values_grad

SRC = Path(__file__).resolve().parents[1] / "src"


def mlp(sizes, seed=0, dtype=torch.float64):
    return _mlp(sizes, seed, dtype)


def expanded(split, sizes=(12, 8, 3), alpha=2, seed=0, **kwargs):
    parent = mlp(list(sizes), seed=seed)
    needs = torchfpe.SPLITS[split].needs if isinstance(split, str) else ()
    if "clauses" in needs:
        kwargs.setdefault("clauses", [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9, 10, 11]])
    if "data" in needs:
        kwargs.setdefault("data", torch.randn(40, sizes[0], generator=torch.Generator().manual_seed(seed),
                                              dtype=torch.float64))
    if needs:  # what a split needs describes the first layer's inputs
        kwargs.setdefault("layers", ["0"])
    return expand(parent, alpha, split, seed=seed, **kwargs)


def assert_same_function(masked, packed, batch):
    device = next(masked.parameters()).device
    x = torch.randn(batch, masked[0].in_features, dtype=torch.float64, device=device, requires_grad=True)
    x_copy = x.detach().clone().requires_grad_(True)
    out_m, out_p = masked(x), packed(x_copy)
    assert torch.allclose(out_m, out_p, atol=1e-10)
    weights = torch.randn_like(out_m)
    (out_m * weights).sum().backward()
    (out_p * weights).sum().backward()
    assert torch.allclose(x.grad, x_copy.grad, atol=1e-10)
    for (name, layer_m), (_, layer_p) in zip(expanded_layers(masked), expanded_layers(packed)):
        # the packed layer's value gradients, laid out densely, equal the masked weight's gradient
        dense_m = layer_m.weight.grad * layer_m.weight_mask
        rebuilt = dense_from_values_grad(layer_p)
        assert torch.allclose(dense_m, rebuilt, atol=1e-10), name
        if layer_m.bias is not None:
            assert torch.allclose(layer_m.bias.grad * layer_m.bias_mask,
                                  bias_grad_dense(layer_p), atol=1e-10), name


@pytest.fixture(autouse=True)
def every_ell_path_on_small_layers(monkeypatch):
    """The tests' layers are tiny; let them take the sparse paths that large layers take, and build
    their dense weight a few rows at a time (blocks of 1-3 rows, the last one partial)."""
    monkeypatch.setattr(torchfpe.core.layouts.ell, "ELL_SPARSE_MIN_SIZE", 0)
    monkeypatch.setattr(torchfpe.core.layouts.ell, "ELL_BLOCK_BYTES", 600)


#: Every registered split that widens (dropconnect keeps the parent's width and is never packed).
SPLITS = [name for name, split in torchfpe.SPLITS.items() if split.widens]


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("sizes", [(12, 8, 3), (12, 8, 6, 8, 3)])
@pytest.mark.parametrize("layout", ["auto", "ell"])
def test_packed_equals_masked_outputs_and_gradients(split, sizes, layout):
    masked = expanded(split, sizes)
    packed = pack(masked, layout)
    for batch in (1, 3, 100):  # with gradients: ELL gathers up to ELL_GATHER_MAX_BATCH, dense above
        m, p = copy.deepcopy(masked), copy.deepcopy(packed)
        assert_same_function(m, p, batch)
    with torch.no_grad():  # without: ELL multiplies as CSR up to ELL_SPARSE_MAX_BATCH, dense above
        for batch in (1, 40, 100):
            x = torch.randn(batch, 12, dtype=torch.float64)
            assert torch.allclose(masked(x), packed(x), atol=1e-10)
    assert nonzero_parameters(packed) <= nonzero_parameters(masked)
    assert sum(layer.nonzero_count() for _, layer in expanded_layers(packed)) == \
        sum(layer.nonzero_count() for _, layer in expanded_layers(masked))


@pytest.mark.parametrize("split", ["contiguous", "feature", "random"])
def test_unpack_round_trip_is_exact(split):
    masked = expanded(split, (12, 8, 6, 8, 3), alpha=3, bias="zero")
    back = unpack(pack(masked))
    for (name, a), (_, b) in zip(expanded_layers(masked), expanded_layers(back)):
        assert isinstance(b, MaskedLinear)
        assert torch.equal(a.weight_mask, b.weight_mask), name
        assert torch.equal(a.bias_mask, b.bias_mask), name
        assert torch.equal(a.masked_weight(), b.masked_weight()), name
        assert b.parent_features == a.parent_features


def test_shared_partitions_become_blocks_at_the_parents_size():
    masked = expanded("contiguous", (16, 8, 3), alpha=4, budget="outgoing")
    packed = pack(masked)
    first = packed[0]
    assert isinstance(first, BlockLinear) and first.in_index is None  # contiguous chunks: no gather at all
    assert first.values.numel() == 16 * 8  # exactly the parent's weights
    assert first.hole_bits is None and not first.restore_order  # emits block order, read by the next layer
    assert isinstance(packed[2], EllLinear) and packed[2].in_natural is not None


def test_independent_partitions_pack_in_the_parents_order():
    masked = expanded("random", (24, 40, 3), alpha=2)
    packed = pack(masked)  # 40 parents, each its own partition: more than MAX_GROUPS groups
    assert isinstance(packed[0], ParentLinear) and packed[0].values.shape == (40, 24)  # the parent's shape
    assert isinstance(packed[2], EllLinear)  # the copied columns under the global budget
    assert pack(masked, "block")[0].layout == "block"  # forced: one group per parent
    assert pack(masked, "ell")[0].layout == "ell"


@pytest.mark.parametrize("optimizer", [
    lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=0.01),
    lambda p: torch.optim.AdamW(p, lr=0.05),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    lambda p: torch.optim.RMSprop(p, lr=0.01),
    lambda p: torch.optim.Adagrad(p, lr=0.1),
])
@pytest.mark.parametrize("split", ["contiguous", "random"])
def test_training_follows_the_masked_model_and_keeps_pruned_entries_zero(optimizer, split):
    masked = expanded(split, (12, 8, 6, 8, 3))
    packed = pack(masked)
    count = nonzero_parameters(masked)
    opt_m, opt_p = optimizer(masked.parameters()), optimizer(packed.parameters())
    torch.manual_seed(1)
    for _ in range(5):
        x, y = torch.randn(20, 12, dtype=torch.float64), torch.randn(20, 3, dtype=torch.float64)
        for model, opt in ((masked, opt_m), (packed, opt_p)):
            opt.zero_grad()
            (model(x) - y).pow(2).mean().backward()
            opt.step()
    for (name, a), (_, b) in zip(expanded_layers(masked), expanded_layers(packed)):
        assert torch.allclose(a.effective_weight(), b.effective_weight(), atol=1e-8), name
        assert b.masked_out_nonzero() == 0, f"{name}: a pruned entry moved"
    assert nonzero_parameters(packed) <= count


# bias="zero" with the layerwise budget may end below the parent's count; expand says so, and packing
# must be exact all the same.
@pytest.mark.filterwarnings("ignore:expand ends")
@settings(max_examples=25, deadline=None)
@given(d=st.integers(4, 14), h=st.integers(1, 6), c=st.integers(1, 3), alpha=st.integers(2, 4),
       split=st.sampled_from([s for s in SPLITS if not torchfpe.SPLITS[s].at_init]), seed=st.integers(0, 1000),
       budget=st.sampled_from(["global", "outgoing", "layerwise", "structured"]),
       bias=st.sampled_from(["copy", "divide", "zero"]))
def test_pack_is_exact_for_any_expansion(d, h, c, alpha, split, seed, budget, bias):
    alpha = min(alpha, d)
    parent = mlp([d, h, c], seed=seed)
    needs = {}
    if "clauses" in torchfpe.SPLITS[split].needs:
        needs["clauses"] = [list(range(i, min(i + 3, d))) for i in range(0, d, 3)]
    if "data" in torchfpe.SPLITS[split].needs:
        needs["data"] = torch.randn(20, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    try:
        masked = expand(parent, alpha, split, seed=seed, budget=budget, bias=bias, **needs)
    except ValueError as error:  # expand's own refusals (e.g. a budget that cannot be met) are not ours
        if "budget" not in str(error):
            raise
        assume(False)
    packed = pack(masked)
    x = torch.randn(5, d, dtype=torch.float64)
    assert torch.allclose(masked(x), packed(x), atol=1e-10)
    assert torch.allclose(masked(x[:1]), packed(x[:1]), atol=1e-10)
    for (_, a), (_, b) in zip(expanded_layers(masked), expanded_layers(unpack(packed))):
        assert torch.equal(a.weight_mask, b.weight_mask)


def test_state_dict_holds_only_the_layout_and_loads_in_a_fresh_process(tmp_path):
    masked = expanded("contiguous", (16, 8, 3), 4)
    packed = pack(masked)
    state = packed.state_dict()
    assert not any(key.endswith(("weight_mask", ".live", ".gather", ".index")) for key in state)
    assert stored_bytes(packed) < stored_bytes(masked)
    path = tmp_path / "packed.pt"
    torch.save(state, path)
    x = torch.randn(4, 16, dtype=torch.float64)
    torch.save(x, tmp_path / "x.pt")
    torch.save(packed(x).detach(), tmp_path / "y.pt")
    script = f"""
import torch
from torch import nn
import torchfpe
torch.manual_seed(123)
parent = nn.Sequential(nn.Linear(16, 8, dtype=torch.float64), nn.ReLU(), nn.Linear(8, 3, dtype=torch.float64))
model = torchfpe.load_expanded(parent, torch.load({str(path)!r}))
assert [type(m).__name__ for m in model] == ["BlockLinear", "ReLU", "EllLinear"], model
y = model(torch.load({str(tmp_path / 'x.pt')!r}))
assert torch.allclose(y, torch.load({str(tmp_path / 'y.pt')!r}), atol=1e-12)
model(torch.randn(2, 16, dtype=torch.float64)).sum().backward()
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_packed_state_dict_into_the_wrong_architecture_names_the_layer():
    packed = pack(expanded("contiguous", (16, 8, 3), 4))
    wrong = mlp([16, 6, 3])
    before = copy.deepcopy(wrong.state_dict())
    with pytest.raises(ValueError, match="layer '0'"):
        load_expanded(wrong, packed.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(wrong.state_dict().values(), before.values()))
    state = dict(packed.state_dict())
    state["0.values"] = state["0.values"][:-1]  # fewer values than the layer holds
    with pytest.raises(ValueError, match="layer '0'"):
        load_expanded(mlp([16, 8, 3]), state)


def test_load_expanded_refuses_non_zero_holes():
    packed = pack(expanded("contiguous", (16, 8, 3), 4))  # global budget leaves holes in layer 0 or 2
    state = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in packed.state_dict().items()}
    state["2.values"][state["2.in_index"].long() >= 32] = 1.0  # padding slots of the ELL layer
    with pytest.raises(ValueError, match="layer '2'.*outside the layer's mask"):
        load_expanded(mlp([16, 8, 3]), state)


def test_bad_input_names_the_layer_and_leaves_the_model_unchanged():
    with pytest.raises(ValueError, match="no expanded layer"):
        pack(mlp([4, 3, 2]))
    masked = expanded("random", (12, 8, 3))
    before = {k: v.clone() for k, v in masked.state_dict().items() if isinstance(v, torch.Tensor)}
    with pytest.raises(ValueError, match="layer '0' cannot be packed in blocks"):
        pack(expanded("overlap", (12, 8, 3)), "block")
    with pytest.raises(ValueError, match="layer '2'.*allowed"):
        pack(masked, {"2": "csr"})
    with pytest.raises(ValueError, match="not expanded layers"):
        pack(masked, {"1": "ell"})
    with pytest.raises(ValueError, match="layer '0' is a DropConnect control"):
        pack(expanded("dropconnect", (12, 8, 3)))
    with pytest.raises(ValueError, match="layer '0' is already packed"):
        pack(pack(masked))
    with pytest.raises(ValueError, match="no packed layer"):
        unpack(masked)
    for key, value in masked.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, before[key]), key
    assert isinstance(masked[0], MaskedLinear)


def test_public_api():
    assert torchfpe.pack is pack and torchfpe.unpack is unpack


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("split", ["contiguous", "random", "static_sparse"])
def test_packed_equals_masked_on_cuda(split):
    masked = expanded(split, (12, 8, 6, 8, 3)).cuda()
    packed = pack(masked)
    assert packed[0].values.is_cuda
    for batch in (1, 100):
        assert_same_function(copy.deepcopy(masked), copy.deepcopy(packed), batch)
    assert torch.equal(unpack(packed)[0].weight_mask.cpu(), masked[0].weight_mask.cpu())


def test_block_state_dict_stores_live_values_only():
    masked = expanded("contiguous", (12, 8, 6, 8, 3), alpha=2)  # middle layer: blocks about half full
    packed = pack(masked)
    middle = packed[2]
    assert isinstance(middle, BlockLinear) and middle.hole_bits is not None
    state = packed.state_dict()
    assert state["2.values"].dim() == 1 and state["2.values"].numel() == int(middle.live.sum())
    loaded = load_expanded(mlp([12, 8, 6, 8, 3]), state)
    x = torch.randn(5, 12, dtype=torch.float64)
    assert torch.allclose(loaded(x), packed(x), atol=1e-12)
    fresh = copy.deepcopy(packed)
    with torch.no_grad():
        fresh[2].values.zero_()
    fresh.load_state_dict(state)
    assert torch.equal(fresh[2].values, packed[2].values)


def test_shared_and_grouped_splits_partition_and_pack_into_few_groups():
    from torchfpe.core.splits import GROUPED_PARTITIONS

    parent = mlp([24, 12, 3])
    for split, groups in (("shared", 1), ("grouped", GROUPED_PARTITIONS)):
        masked = expand(parent, 3, split, seed=0, budget="none")
        masks = masked[0].weight_mask.reshape(12, 3, 24)
        assert torch.equal(masks.sum(dim=1), torch.ones(12, 24, dtype=torch.long)), split
        distinct = {tuple(masks[i].int().argmax(dim=0).tolist()) for i in range(12)}
        assert len(distinct) == groups, split
        packed = pack(masked, "block")  # auto would want 8 parents per group; these layers have 12 parents
        assert isinstance(packed[0], BlockLinear) and packed[0].blocks == 3 * groups, split
        assert packed[0].values.numel() == 24 * 12  # the parent's weights, no padding


def test_expanding_a_packed_model_asks_to_unpack_first():
    parent = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    packed = torchfpe.pack(torchfpe.expand(parent, 2, "contiguous", seed=0))
    with pytest.raises(torchfpe.InvalidParameterError, match="unpack"):
        torchfpe.expand(packed, 2, seed=0)
    again = torchfpe.expand(torchfpe.unpack(packed), 2, seed=0)  # unpacked, it expands as usual
    assert torchfpe.nonzero_parameters(again) == torchfpe.nonzero_parameters(parent)
