"""The layouts package: frozen flags through pack/unpack/load, tampered packed state_dicts, old files."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchfpe
from torchfpe import InvalidParameterError, expand, load_expanded, pack, unpack
from torchfpe.core import expanded_layers
from torchfpe.core.layouts import (LAYOUTS, BlockLinear, decode_layout_state, EllLinear, ExpandedLayer, LayoutError, PackedLinear,
                                   ParentLinear,
                                   auto_layouts, packable_layouts, register_layout)
from helpers import mlp as _mlp


def mlp(sizes, seed=0, dtype=torch.float64):
    return _mlp(sizes, seed, dtype)

FIXTURE = Path(__file__).parent / "fixtures" / "packed_v1.pt"




def cloned(state):
    return {key: (value.clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value))
            for key, value in state.items()}


# ------------------------------------------------------------------------- B2: requires_grad survives
def weight_of(layer):
    return layer.weight if isinstance(layer, torchfpe.MaskedLinear) else layer.values


def trainable(model):
    """{(layer, role): requires_grad} of every expanded layer's weight and bias."""
    return {(name, role): tensor.requires_grad for name, layer in expanded_layers(model)
            for role, tensor in (("weight", weight_of(layer)), ("bias", layer.bias)) if tensor is not None}


@pytest.fixture
def frozen_model():
    """Layer 0 frozen whole, only layer 2's bias frozen, layer 4 trainable."""
    parent = mlp([12, 8, 6, 3])
    parent[0].requires_grad_(False)
    parent[2].bias.requires_grad_(False)
    model = expand(parent, 2, "contiguous", seed=0)
    flags = trainable(model)
    assert flags == {("0", "weight"): False, ("0", "bias"): False, ("2", "weight"): True, ("2", "bias"): False,
                     ("4", "weight"): True, ("4", "bias"): True}
    return model, flags


@pytest.mark.parametrize("layout", ["auto", *packable_layouts()])
def test_pack_and_unpack_keep_frozen_parameters_frozen(frozen_model, layout):
    model, flags = frozen_model
    try:
        packed = pack(model, layout)
    except InvalidParameterError as error:  # a layout whose from_masked does not fit these masks
        if "cannot be packed" not in str(error):
            raise
        pytest.skip(f"the {layout!r} layout does not fit these masks")
    assert trainable(packed) == flags
    assert trainable(unpack(packed)) == flags
    packed(torch.randn(4, 12, dtype=torch.float64)).sum().backward()
    assert packed[0].values.grad is None and packed[2].bias.grad is None and packed[2].values.grad is not None


@pytest.mark.parametrize("packed", [False, True])
def test_load_expanded_keeps_a_saved_frozen_model_frozen(frozen_model, packed, tmp_path):
    model, flags = frozen_model
    saved = pack(model) if packed else model
    torch.save(saved.state_dict(), tmp_path / "model.pt")
    loaded = load_expanded(mlp([12, 8, 6, 3], seed=1), torch.load(tmp_path / "model.pt"))
    assert trainable(loaded) == flags
    x = torch.randn(3, 12, dtype=torch.float64)
    assert torch.allclose(loaded(x), saved(x), atol=1e-12)


# --------------------------------------------------------------- B5: tampered packed state_dicts refused
@pytest.fixture(scope="module")
def chain():
    """block (no gather) -> block (in_index, in_natural, out_index, holes) -> block -> ell (in_natural)."""
    packed = pack(expand(mlp([12, 8, 6, 8, 3]), 2, "contiguous", seed=0))
    assert [layer.layout for _, layer in expanded_layers(packed)] == ["block", "block", "block", "ell"]
    state = packed.state_dict()
    assert {"2.in_index", "2.in_natural", "2.out_index", "2.hole_bits", "6.in_index", "6.in_natural"} <= set(state)
    return packed


def _duplicate_unit(state):
    index = state["2.out_index"]
    index[1] = index[0]
    return f"holds unit {int(index[0])} twice"


def _swap_units_across_blocks(state):
    index = state["2.out_index"]  # 2 blocks of 6 rows: entries 0 and 6 sit in blocks 0 and 1
    index[[0, 6]] = index[[6, 0]]
    return "out of block order"


def _swap_units_in_a_block(state):
    index = state["2.out_index"]
    index[[0, 1]] = index[[1, 0]]
    return "out of block order"


def _unit_out_of_range(state):
    state["2.out_index"][0] = 99
    return "holds unit 99"


def _block_input_twice(state):
    index = state["2.in_index"]
    index[0, 1] = index[0, 0]
    return f"input position {int(index[0, 0])} twice"


def _block_input_out_of_range(state):
    state["2.in_index"][0, 0] = 999
    return "holds input position 999"


def _in_natural_not_a_permutation(state):
    natural = state["2.in_natural"]
    natural[0] = natural[1]
    return "not a permutation"


def _short_hole_bits(state):
    state["2.hole_bits"] = state["2.hole_bits"][:-1]
    return "holds 11 bytes"


def _ell_row_not_ascending(state):
    index, values = state["6.in_index"], state["6.values"]
    index[0, [0, 1]] = index[0, [1, 0]]
    values[0, [0, 1]] = values[0, [1, 0]]
    return "holds row 0 out of ascending order"


def _ell_input_twice(state):
    index = state["6.in_index"]
    index[0, 1] = index[0, 0]
    return f"holds input position {int(index[0, 0])} twice in row 0"


def _ell_index_out_of_range(state):
    state["6.in_index"][0, 0] = -1
    return "holds index -1"


def _ell_in_natural_out_of_range(state):
    state["6.in_natural"][0] = 8
    return "not a permutation"


TAMPERS = {
    "2.out_index": [_duplicate_unit, _swap_units_across_blocks, _swap_units_in_a_block, _unit_out_of_range],
    "2.in_index": [_block_input_twice, _block_input_out_of_range],
    "2.in_natural": [_in_natural_not_a_permutation],
    "2.hole_bits": [_short_hole_bits],
    "6.in_index": [_ell_row_not_ascending, _ell_input_twice, _ell_index_out_of_range],
    "6.in_natural": [_ell_in_natural_out_of_range],
}
CASES = [(key, tamper) for key, tampers in TAMPERS.items() for tamper in tampers]


@pytest.mark.parametrize("key,tamper", CASES, ids=[tamper.__name__.strip("_") for _, tamper in CASES])
def test_tampered_packed_state_dicts_are_refused_naming_the_key(chain, key, tamper):
    state = cloned(chain.state_dict())
    what = tamper(state)
    layer = key.split(".")[0]
    message = f"layer '{layer}': state_dict key '{key}' "
    with pytest.raises(InvalidParameterError) as refused:
        load_expanded(mlp([12, 8, 6, 8, 3]), state)
    assert message in str(refused.value) and what in str(refused.value), str(refused.value)
    assert "\n" not in str(refused.value)
    # into an existing packed model: the same refusal, before the layer's tensors are touched
    existing = copy.deepcopy(chain)
    with pytest.raises(InvalidParameterError) as refused:
        existing.load_state_dict(state)
    assert message in str(refused.value) and what in str(refused.value), str(refused.value)
    for name, tensor in chain.state_dict().items():
        if isinstance(tensor, torch.Tensor):
            assert torch.equal(existing.state_dict()[name], tensor), name


def test_untampered_state_dicts_load_for_many_expansions():
    """The checks refuse nothing that pack writes (every split, budget, forced layout)."""
    for split in ("contiguous", "random", "feature", "grouped", "shared", "overlap", "static_sparse"):
        for layout in ("auto", "block", "ell"):
            for budget in ("global", "outgoing"):
                try:
                    packed = pack(expand(mlp([12, 8, 6, 4]), 2, split, seed=3, budget=budget), layout)
                except InvalidParameterError as error:
                    assert "cannot be packed in blocks" in str(error)
                    continue
                loaded = load_expanded(mlp([12, 8, 6, 4], seed=5), packed.state_dict())
                x = torch.randn(3, 12, dtype=torch.float64)
                assert torch.allclose(loaded(x), packed(x), atol=1e-12), (split, layout, budget)


# ------------------------------------------------------------------ files saved by the first layouts
def test_files_saved_by_the_first_packed_layouts_still_load_and_repack_identically():
    """packed_v1.pt was written by the code before the layouts became a package (see its script)."""
    cases = torch.load(FIXTURE)
    assert len(cases) == 7
    for name, case in cases.items():
        state = case["state"]
        loaded = load_expanded(mlp(case["sizes"], seed=9), state)
        assert [layer.layout for _, layer in expanded_layers(loaded)] == case["layouts"], name
        assert torch.allclose(loaded(case["x"]), case["y"], atol=1e-12), name
        # the tensors are unchanged: packing the same masks again writes the same keys, dtypes and values;
        # the metadata dict of _extra_state is now the fpe_layout tensor (format 2), with the same fields
        names = [path for path, _ in expanded_layers(loaded)]
        again = pack(unpack(loaded), dict(zip(names, case["layouts"]))).state_dict()
        assert list(again) == [key.replace("_extra_state", "fpe_layout") for key in state], name
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                assert again[key].dtype == value.dtype and torch.equal(again[key], value), (name, key)
            else:
                new_key = key.replace("_extra_state", "fpe_layout")
                decoded = decode_layout_state(again[new_key], new_key)
                assert decoded.pop("format") == 2 and decoded.pop("stored")
                assert decoded == value, (name, key)


def test_old_files_cover_every_stored_tensor_of_the_packed_layouts():
    keys = {key.split(".", 1)[1] for case in torch.load(FIXTURE).values() for key in case["state"]}
    assert keys == {"_extra_state", "values", "bias", "in_index", "out_index", "in_natural", "hole_bits", "bias_holes"}
    padded = torch.load(FIXTURE)["padding_rows"]["state"]  # a block with padding rows keeps the natural order
    assert -1 in padded["0.out_index"].tolist() and padded["0._extra_state"]["restore_order"]


# ----------------------------------------------------------------------- a layout from outside the package
class RowsLinear(PackedLinear):
    """A test layout: the masked weight as dense ``values`` with a live mask (no speed, only the contract)."""

    layout = "test_rows"

    def __init__(self, in_features, out_features, *, bias, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.values = nn.Parameter(torch.zeros(out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        self.register_buffer("live", torch.zeros(out_features, in_features, dtype=torch.bool, device=device))
        self.register_buffer("bias_mask", torch.ones(out_features, dtype=torch.bool, device=device) if bias else None)
        self.bias_live = self.bias_mask

    @classmethod
    def from_masked(cls, layer, alpha, *, input_order=None, **options):
        assert input_order is None, "reads_input_order is False: pack must not pass an order"
        packed = cls(layer.in_features, layer.out_features, bias=layer.bias is not None,
                     device=layer.weight.device, dtype=layer.weight.dtype)
        with torch.no_grad():
            packed.values.copy_(layer.masked_weight())
            packed.live.copy_(layer.weight_mask)
            if layer.bias is not None:
                packed.bias.copy_(layer.masked_bias())
                packed.bias_mask.copy_(layer.bias_mask)
        packed._refresh()
        return packed

    @classmethod
    def empty_from_state(cls, extra, tensors, device=None):
        values = tensors["values"]
        layer = cls(int(extra["in_features"]), int(extra["out_features"]), bias="bias" in tensors,
                    device=device or values.device, dtype=values.dtype)
        return layer.restored_from(extra)

    def _refresh(self):
        self.bias_live = self.bias_mask

    def _value_live(self):
        return self.live

    def check_saved(self, saved):
        pass

    def forward(self, x):
        return F.linear(x, self.effective_weight(), self.effective_bias())

    def effective_weight(self):
        return self.values * self.live

    def effective_bias(self):
        return None if self.bias is None else self.bias * self.bias_mask

    def dense_weight_mask(self):
        return self.live

    def dense_bias_mask(self):
        return self.bias_mask


class FirstRowsLinear(RowsLinear):
    layout = "test_rows_first"
    auto_order = 0  # before block and ell


@pytest.fixture
def registered():
    register_layout(RowsLinear)
    register_layout(FirstRowsLinear)
    yield
    for name in ("test_rows", "test_rows_first"):
        LAYOUTS.pop(name)


def test_a_layout_registered_outside_the_package_packs_and_loads(registered):
    masked = expand(mlp([12, 8, 6, 3]), 2, "contiguous", seed=0)
    assert "test_rows" in packable_layouts() and RowsLinear not in auto_layouts()
    x = torch.randn(5, 12, dtype=torch.float64)
    for layout in ("test_rows", {"0": "test_rows", "2": "block"}, {"0": "block", "2": "test_rows"}):
        packed = pack(masked, layout)
        assert torch.allclose(packed(x), masked(x), atol=1e-12), layout
        if isinstance(layout, dict) and layout["2"] == "test_rows":  # its consumer reads natural order only
            assert isinstance(packed[0], BlockLinear) and packed[0].restore_order
        loaded = load_expanded(mlp([12, 8, 6, 3], seed=4), packed.state_dict())
        assert [type(layer) for _, layer in expanded_layers(loaded)] == \
            [type(layer) for _, layer in expanded_layers(packed)], layout
        assert torch.allclose(loaded(x), masked(x), atol=1e-12), layout
        back = unpack(loaded)
        for (name, a), (_, b) in zip(expanded_layers(masked), expanded_layers(back)):
            assert torch.equal(a.weight_mask, b.weight_mask) and torch.equal(a.masked_weight(), b.masked_weight())
    with pytest.raises(ValueError, match="already packed \\('test_rows'\\)"):
        pack(pack(masked, "test_rows"))


def test_auto_tries_layouts_in_their_declared_order(registered):
    tried = auto_layouts()  # read from the registry: a new built-in layout needs no edit here
    assert tried[0] is FirstRowsLinear and tried == sorted(tried, key=lambda cls: cls.auto_order)
    assert [cls for cls in tried if cls in (BlockLinear, ParentLinear, EllLinear)] == [BlockLinear, ParentLinear, EllLinear]
    masked = expand(mlp([12, 8, 3]), 2, "random", seed=0)
    assert all(isinstance(layer, FirstRowsLinear) for _, layer in expanded_layers(pack(masked)))


def test_pack_offers_every_packable_layout_auto_tries_first_in_declared_order():
    """Read from the traits each layout declares (no list of names): a new layout needs no edit here."""
    names = packable_layouts()
    assert sorted(names) == sorted(name for name, cls in LAYOUTS.items() if cls.packable)
    orders = [LAYOUTS[name].auto_order for name in names]
    tried = [order for order in orders if order is not None]
    assert orders[:len(tried)] == tried == sorted(tried), "auto's tries come first, in their declared order"
    assert auto_layouts() == [LAYOUTS[name] for name in names[:len(tried)]]
    assert all(callable(getattr(LAYOUTS[name], "from_masked", None)) for name in names)
    assert LAYOUTS["masked"] is torchfpe.MaskedLinear and not LAYOUTS["masked"].packable  # the reference layout


def test_register_layout_refuses_incomplete_or_clashing_layouts():
    class Half(ExpandedLayer, nn.Module):
        layout = "test_half"

        def effective_weight(self):
            return torch.zeros(1, 1)

    with pytest.raises(TypeError, match="test_half.*does not provide .*dense_weight_mask.*empty_from_state"):
        register_layout(Half)

    class Impostor(RowsLinear):
        layout = "block"

    with pytest.raises(ValueError, match="'block' is taken"):
        register_layout(Impostor)
    with pytest.raises(TypeError, match="subclass of ExpandedLayer"):
        register_layout(nn.Linear)
    assert "test_half" not in LAYOUTS and LAYOUTS["block"] is BlockLinear


def test_from_masked_raises_layout_error_when_the_masks_do_not_fit():
    masked = expand(mlp([12, 8, 3]), 2, "overlap", seed=0)
    with pytest.raises(LayoutError, match="do not share input partitions"):
        BlockLinear.from_masked(masked[0], 2)
    assert isinstance(EllLinear.from_masked(masked[0], 2), EllLinear)
    with pytest.raises(LayoutError, match="one child per parent"):
        BlockLinear.from_masked(masked[0], 1, auto=True)
