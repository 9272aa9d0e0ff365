"""The ``parent`` layout and ``budget="structured"`` blocks against the masked reference; the compiled
kernels and their fallback."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import torchfpe
from torchfpe import InvalidParameterError, expand, load_expanded, nonzero_parameters, pack, unpack
from torchfpe.core import BlockLinear, MaskedLinear, ParentLinear, expanded_layers
from torchfpe.core.layouts import native, parent, stored_bytes
from helpers import bias_grad_dense, mlp as _mlp
from helpers import values_grad_dense as value_grad_dense


def mlp(sizes, seed=0, dtype=torch.float64):
    return _mlp(sizes, seed, dtype)




def expanded(split, sizes, alpha=2, seed=0, dtype=torch.float64, **kwargs):
    needs = torchfpe.SPLITS[split].needs
    if "clauses" in needs:
        kwargs.setdefault("clauses", [list(range(i, min(i + 3, sizes[0]))) for i in range(0, sizes[0], 3)])
    if "data" in needs:
        kwargs.setdefault("data", torch.randn(40, sizes[0], generator=torch.Generator().manual_seed(seed),
                                              dtype=dtype))
    if needs:
        kwargs.setdefault("layers", ["0"])
    return expand(mlp(sizes, seed, dtype), alpha, split, seed=seed, **kwargs)






def assert_same_function(masked, packed, batch, *, atol=1e-10, rtol=0.0, dtype=torch.float64):
    x = torch.randn(batch, masked[0].in_features, dtype=dtype, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    out_m, out_p = masked(x), packed(x2)
    assert torch.allclose(out_m, out_p, atol=atol, rtol=rtol)
    weights = torch.randn_like(out_m)
    (out_m * weights).sum().backward()
    (out_p * weights).sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=atol, rtol=rtol)
    for (name, m), (_, p) in zip(expanded_layers(masked), expanded_layers(packed)):
        assert torch.allclose(m.weight.grad * m.weight_mask, value_grad_dense(p), atol=atol, rtol=rtol), name
        if m.bias is not None:
            assert torch.allclose(m.bias.grad * m.bias_mask, bias_grad_dense(p), atol=atol, rtol=rtol), name


# ------------------------------------------------------------------------------- exact, every split
#: Splits whose parents partition their inputs: each parent entry is held by one child.
PARTITIONS = [name for name, split in torchfpe.SPLITS.items() if split.partition and split.widens]


@pytest.mark.parametrize("split", PARTITIONS)
@pytest.mark.parametrize("budget", ["global", "structured"])
def test_parent_layout_equals_masked_for_every_partition_split(split, budget):
    for sizes, alpha in (((12, 8, 3), 2), ((13, 9, 7, 9, 3), 3)):
        masked = expanded(split, sizes, alpha=alpha, budget=budget)
        # structured: every layer holds one weight per parent entry; global: the split layer only
        layout = "parent" if budget == "structured" else {"0": "parent"}
        packed = pack(masked, layout)
        chosen = [layer.layout for _, layer in expanded_layers(packed)]
        assert chosen[0] == "parent" and (budget != "structured" or set(chosen) == {"parent"}), chosen
        for batch in (1, 4, 50):
            assert_same_function(copy.deepcopy(masked), copy.deepcopy(packed), batch)
        assert sum(layer.nonzero_count() for _, layer in expanded_layers(packed)) == \
            sum(layer.nonzero_count() for _, layer in expanded_layers(masked))
        back = unpack(packed)
        for (name, a), (_, b) in zip(expanded_layers(masked), expanded_layers(back)):
            assert torch.equal(a.weight_mask, b.weight_mask) and torch.equal(a.masked_weight(), b.masked_weight())


def test_parent_layout_refuses_masks_it_cannot_hold():
    with pytest.raises(InvalidParameterError, match="layer '0' cannot be packed in the parent's order: parent entry"):
        pack(expanded("overlap", (12, 8, 3)), "parent")
    with pytest.raises(InvalidParameterError, match="layer '2' cannot be packed in the parent's order"):
        pack(expanded("random", (12, 8, 3)), "parent")  # the global budget keeps copied columns in several rows


def test_parent_layout_stores_the_parents_shape_and_a_few_bits_per_entry():
    masked = expanded("random", (64, 32, 3), alpha=4, dtype=torch.float32)
    packed = pack(masked)
    layer = packed[0]
    assert isinstance(layer, ParentLinear) and layer.values.shape == (32, 64)
    assert layer.child_bits.shape == (2, 32, 8)  # log2(4) planes of 64 bits a row
    assert torch.equal(parent.unpack_planes(layer.child_bits, 64).long(),
                       masked[0].weight_mask.view(32, 4, 64).to(torch.int8).argmax(dim=1).long() * layer.live)


def test_parent_layout_reads_a_block_producers_order_and_saves_and_loads():
    model = mlp([12, 16, 16, 40])
    masked = expand(model, 3, {"0": "contiguous", "2": "random"}, seed=0, budget="structured")
    packed = pack(masked)
    assert [type(layer) for _, layer in expanded_layers(packed)] == [BlockLinear, ParentLinear, BlockLinear]
    assert packed[0].output_order() is not None and packed[2].in_natural is not None  # block order read as it is
    assert packed[2].row_copy is not None and packed[4].grouping == "support"
    for batch in (1, 7):
        assert_same_function(copy.deepcopy(masked), copy.deepcopy(packed), batch)
    loaded = load_expanded(mlp([12, 16, 16, 40], seed=5), packed.state_dict())
    x = torch.randn(6, 12, dtype=torch.float64)
    assert torch.allclose(loaded(x), masked(x), atol=1e-12)
    assert [type(layer) for _, layer in expanded_layers(loaded)] == [BlockLinear, ParentLinear, BlockLinear]


def _bad_child(state):
    bits = state["2.child_bits"]  # 3 children in 2 bit planes: code 3 names no child
    bits[:, 0, 0] |= 1
    return "child 3"


def _short_child_bits(state):
    state["2.child_bits"] = state["2.child_bits"][:1]
    return "uint8 bit planes"


def _bad_copy(state):
    state["2.row_copy"][0] = 7
    return "holds copy 7"


def _parent_in_natural(state):
    natural = state["2.in_natural"]
    natural[0] = natural[1]
    return "not a permutation"


@pytest.mark.parametrize("tamper", [_bad_child, _short_child_bits, _bad_copy, _parent_in_natural])
def test_tampered_parent_state_dicts_are_refused_naming_the_key(tamper):
    masked = expand(mlp([12, 16, 16, 40]), 3, {"0": "contiguous", "2": "random"}, seed=0, budget="structured")
    state = {k: v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v) for k, v in pack(masked).state_dict().items()}
    what = tamper(state)
    with pytest.raises(InvalidParameterError) as refused:
        load_expanded(mlp([12, 16, 16, 40]), state)
    assert "layer '2': state_dict key '2." in str(refused.value) and what in str(refused.value), str(refused.value)


def test_parent_layout_trains_like_the_masked_model_and_keeps_holes_zero():
    masked = expanded("random", (12, 10, 3), alpha=2)
    packed = pack(masked)
    assert packed[0].hole_bits is not None and not bool(packed[0].live.all())  # the global budget's holes
    x = torch.randn(64, 12, dtype=torch.float64)
    y = torch.randn(64, 3, dtype=torch.float64)
    for model in (masked, packed):
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
        for _ in range(15):
            optimizer.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            optimizer.step()
    assert torch.allclose(masked(x), packed(x), atol=1e-8)
    assert packed[0].masked_out_nonzero() == 0


# ----------------------------------------------------------------------- budget="structured" as blocks
@pytest.mark.parametrize("split", ["contiguous", "grouped", "feature", "random"])
def test_structured_budget_packs_copied_layers_as_dense_blocks_at_the_parents_count(split):
    parent_model = mlp([32, 256, 256, 256, 48])
    masked = expand(parent_model, 2, split, seed=0, budget="structured")
    packed = pack(masked)
    layouts = [layer.layout for _, layer in expanded_layers(packed)]
    assert layouts[-1] == "block" and packed[6].grouping == "support"  # the outgoing layer: one block per copy
    if torchfpe.SPLITS[split].blocks:
        # the middle layers too: as nested classes of rows (or block's support blocks where nested pads more)
        assert layouts[0] == "block" and set(layouts[1:-1]) <= {"block", "nested"}, layouts
    assert nonzero_parameters(packed) == nonzero_parameters(parent_model)
    for _, layer in expanded_layers(packed):
        if layer.layout in ("block", "nested"):  # dense blocks: only the padding of unequal blocks is stored besides
            assert layer.values.numel() <= 1.5 * int(layer._value_live().sum())
    for batch in (1, 30):
        assert_same_function(copy.deepcopy(masked), copy.deepcopy(packed), batch)


def test_structured_ffn_packs_within_the_bytes_goal():
    """The issue's FFN shape, scaled down (64 -> 256 -> 64, alpha = 2): the parent's count, <= 1.15x bytes."""
    parent_model = mlp([64, 256, 64], dtype=torch.float32)
    packed = pack(expand(parent_model, 2, seed=0, budget="structured"))
    assert [type(layer) for _, layer in expanded_layers(packed)] == [ParentLinear, BlockLinear]
    assert nonzero_parameters(packed) == nonzero_parameters(parent_model)
    assert stored_bytes(packed) <= 1.15 * stored_bytes(parent_model)


# ------------------------------------------------------------------------- the compiled kernels
needs_kernels = pytest.mark.skipif(native.kernels() is None, reason="no compiled kernels here (compiler, ninja, "
                                   "AVX-512)")


@pytest.fixture
def every_layer_native(monkeypatch):
    monkeypatch.setattr(parent, "NATIVE_MIN_SIZE", 0)


@needs_kernels
@pytest.mark.parametrize("alpha", [2, 3, 4, 8])
def test_compiled_kernels_equal_the_masked_layout(every_layer_native, alpha):
    masked = expanded("random", (69, 40, 3), alpha=alpha, dtype=torch.float32)  # 69: a tail of 5 lanes
    packed = pack(masked)
    layer = packed[0]
    assert isinstance(layer, ParentLinear) and layer.hole_bits is not None
    assert layer.path(1, False, torch.device("cpu"), torch.float32) == "native"
    assert layer.path(parent.NATIVE_MAX_BATCH + 1, False, torch.device("cpu"), torch.float32) == "tiled"
    assert layer.path(parent.NATIVE_GRAD_MAX_BATCH + 1, True, torch.device("cpu"), torch.float32) == "tiled"
    # small batches (one pass), large ones (tiles of 64 examples: 70 = a full tile and a part)
    for batch in (1, 3, parent.NATIVE_GRAD_MAX_BATCH, parent.NATIVE_GRAD_MAX_BATCH + 1, 70):
        assert_same_function(copy.deepcopy(masked), copy.deepcopy(packed), batch, atol=1e-4, rtol=1e-4,
                             dtype=torch.float32)
    with torch.no_grad():
        for batch in (1, 5, parent.NATIVE_MAX_BATCH, parent.NATIVE_MAX_BATCH + 1, 70, 130):
            x = torch.randn(batch, 69)
            assert torch.allclose(masked(x), packed(x), atol=1e-5, rtol=1e-5)


@needs_kernels
@pytest.mark.parametrize("batch", [2, 70])  # the small-batch and the tiled kernels
def test_compiled_kernels_with_only_the_input_or_only_the_values_trained(every_layer_native, batch):
    masked = expanded("random", (40, 20, 4), alpha=4, dtype=torch.float32)
    packed = pack(masked)
    packed[0].values.requires_grad_(False)
    x = torch.randn(batch, 40, requires_grad=True)
    packed(x).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    masked(x2).sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-4) and packed[0].values.grad is None
    packed[0].values.requires_grad_(True)
    x = torch.randn(batch, 40)
    packed(x).sum().backward()
    masked[0].weight.grad = None
    masked(x).sum().backward()
    assert torch.allclose(value_grad_dense(packed[0]), masked[0].weight.grad * masked[0].weight_mask, atol=1e-4)


def test_without_kernels_the_torch_path_gives_the_same_numbers(monkeypatch, every_layer_native):
    masked = expanded("random", (37, 21, 5), alpha=4, dtype=torch.float32)
    packed = pack(masked)
    monkeypatch.setattr(native, "kernels", lambda: None)
    assert packed[0].path(1, True, torch.device("cpu"), torch.float32) == "dense"
    assert_same_function(copy.deepcopy(masked), copy.deepcopy(packed), 2, atol=1e-5, rtol=1e-5, dtype=torch.float32)


def test_the_kernels_are_skipped_cleanly_where_they_cannot_be_built(monkeypatch):
    monkeypatch.setenv(native.SWITCH, "0")
    assert native.kernels() is None and native._build() is None
    monkeypatch.delenv(native.SWITCH)
    monkeypatch.setattr(native, "_ninja_on_path", lambda: False)
    assert native._build() is None  # no ninja: no build attempted
    monkeypatch.setattr(native, "_ninja_on_path", lambda: True)
    monkeypatch.setenv("CXX", "no-such-compiler-anywhere")
    assert native._build() is None  # no compiler
    monkeypatch.delenv("CXX")
    from torch.utils import cpp_extension

    def broken(**kwargs):
        raise RuntimeError("Error building extension 'torchfpe_parent_kernels'")

    monkeypatch.setattr(cpp_extension, "load", broken)
    if native.shutil.which("c++") is not None:
        with pytest.warns(RuntimeWarning, match="did not build .*using the torch path"):
            assert native._build() is None


def test_small_layers_never_build_the_kernels(monkeypatch):
    calls = []
    monkeypatch.setattr(native, "kernels", lambda: calls.append(1))
    packed = pack(expanded("random", (12, 8, 3), dtype=torch.float32))
    packed(torch.randn(1, 12))
    assert calls == []  # under NATIVE_MIN_SIZE the torch path is taken without asking for the kernels
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(unpack(packed)[0], MaskedLinear)


def test_small_layers_cached_weights_follow_every_change_of_the_values():
    """Small layers keep their dense weight between calls without gradients; it must never go stale."""
    masked = expanded("random", (12, 8, 3))
    packed = pack(masked)
    assert [layer.layout for _, layer in expanded_layers(packed)] == ["parent", "ell"]
    x = torch.randn(5, 12, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(packed(x), masked(x), atol=1e-12)  # builds the caches
    for model in (masked, packed):  # an optimizer step changes the values in place
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        model(x).sum().backward()
        optimizer.step()
    with torch.no_grad():
        assert torch.allclose(packed(x), masked(x), atol=1e-12)
        other = pack(expanded("random", (12, 8, 3), seed=0))
        with torch.no_grad():
            for _, layer in expanded_layers(other):
                layer.values.mul_(2.0)
        packed.load_state_dict(other.state_dict())  # a load copies new values in
        assert torch.allclose(packed(x), other(x), atol=1e-12)
        assert torch.allclose(packed(x), unpack(other)(x), atol=1e-12)
        moved = copy.deepcopy(packed).float()  # a move gives new storage
        assert torch.allclose(moved(x.float()), packed(x).float(), atol=1e-5)


# ------------------------------------------------------------------- torch.compile (Triton on CUDA)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_compiled_sum_equals_the_masked_layout(monkeypatch, dtype):
    """The CUDA path's torch.compile'd sum, compiled here for the CPU (inductor's C++) to check its numbers."""
    monkeypatch.setattr(parent, "COMPILED_DEVICES", ("cpu",))
    masked = expanded("random", (40, 24, 3), alpha=4, dtype=torch.float32).to(dtype)
    packed = pack(masked)
    layer = packed[0]
    assert layer.path(1, False, torch.device("cpu"), dtype) == "compiled"
    assert layer.path(1, True, torch.device("cpu"), dtype) != "compiled"  # training takes the dense path
    tolerance = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=0.05, rtol=0.02)
    with torch.no_grad():
        for batch in (1, 3):
            x = torch.randn(batch, 40).to(dtype)
            assert torch.allclose(layer(x).float(), masked[0](x).float(), **tolerance)


def test_a_failing_compile_warns_once_and_keeps_the_dense_path(monkeypatch):
    monkeypatch.setattr(parent, "COMPILED_DEVICES", ("cpu",))

    def no_compiler(function, **kwargs):
        def fails(*args):
            raise RuntimeError("no triton")
        return fails

    monkeypatch.setattr(torch, "compile", no_compiler)
    masked = expanded("random", (40, 24, 3), alpha=4, dtype=torch.float32)
    layer = pack(masked)[0]
    x = torch.randn(1, 40)
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="torch.compile of the parent layout's product failed"):
        assert torch.allclose(layer(x), masked[0](x), atol=1e-5)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.allclose(layer(x), masked[0](x), atol=1e-5)  # no second try, no second warning
    assert layer.path(1, False, torch.device("cpu"), torch.float32) != "compiled"


# ------------------------------------------------------------------------------------------ CUDA
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("split,budget", [("contiguous", "global"), ("random", "global"), ("random", "structured"),
                                          ("grouped", "structured")])
def test_packed_layouts_on_cuda_equal_the_masked_layout(split, budget):
    masked = expand(mlp([64, 256, 10]), 2, split, seed=0, budget=budget).cuda()
    packed = pack(masked)
    assert all(layer.values.is_cuda for _, layer in expanded_layers(packed))
    x = torch.randn(5, 64, dtype=torch.float64, device="cuda")
    for batch in (1, 5, 100):
        xb = torch.randn(batch, 64, dtype=torch.float64, device="cuda")
        assert torch.allclose(packed(xb), masked(xb), atol=1e-10)
    packed(x).sum().backward()
    for dtype, tolerance in ((torch.float32, 1e-4), (torch.bfloat16, 5e-2)):
        m, p = copy.deepcopy(masked).to(dtype), copy.deepcopy(packed).to(dtype)
        with torch.no_grad():
            for batch in (1, 100):
                xb = torch.randn(batch, 64, device="cuda").to(dtype)
                assert torch.allclose(p(xb).float(), m(xb).float(), atol=tolerance, rtol=tolerance), (dtype, batch)


@needs_kernels
@pytest.mark.parametrize("batch", [0, 1])
def test_compiled_backward_of_an_empty_batch_gives_zero_gradients(every_layer_native, batch):
    # issue 19, defect 2: the kernel left the value gradient uninitialised for batch 0 (up to 8.5e21 at
    # 512x512, alpha 4; NaN outputs after one SGD step)
    masked = expanded("random", (64, 48, 3), alpha=4, dtype=torch.float32)
    packed = pack(masked)
    assert packed[0].path(batch, True, torch.device("cpu"), torch.float32) == "native"
    for _ in range(3):  # fresh allocations: garbage would show on one of them
        packed.zero_grad(set_to_none=True)
        torch.full((64 * 48 * 4,), 1e30).sum()  # leave non-zero bytes in freed memory
        packed(torch.randn(batch, 64)).sum().backward()
        grad = packed[0].values.grad
        assert torch.isfinite(grad).all()
        if batch == 0:
            assert torch.count_nonzero(grad) == 0
