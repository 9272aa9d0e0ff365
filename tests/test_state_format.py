"""A layer's state is tensors only: every registered layout through safetensors, old files, refused states."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from torchfpe import InvalidParameterError, MaskedLinear, apply_masks_, expand, load_expanded, pack
from torchfpe.core import SPLITS, expanded_layers, nonzero_parameters
from torchfpe.core.layouts import LAYOUTS, decode_layout_state, encode_layout_state
from helpers import mlp as _mlp

FIXTURE = Path(__file__).parent / "fixtures" / "layouts_v2.pt"
SIZES = [12, 8, 6, 3]


def mlp(sizes=SIZES, seed=0, dtype=torch.float64):
    return _mlp(sizes, seed, dtype)


def model_in_layout(name: str) -> torch.nn.Module:
    """An expanded MLP with at least one layer in layout ``name``, found through the registries."""
    layout = LAYOUTS[name]
    if not layout.packable:
        for split, traits in SPLITS.items():
            if traits.needs:
                continue
            model = expand(mlp(), 2, split, seed=0)
            if any(layer.layout == name for _, layer in expanded_layers(model)):
                return model
    else:
        for split in ("random", "contiguous"):
            for budget in ("global", "structured", "none"):
                model = expand(mlp(), 2, split, seed=0, budget=budget)
                for choice in (name, {"0": name}, {"2": name}):
                    try:
                        return pack(model, choice)
                    except InvalidParameterError:
                        continue
    pytest.fail(f"no recipe here builds a model in layout {name!r}; give the test one")


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_every_layout_round_trips_through_safetensors(name, tmp_path):
    model = model_in_layout(name).eval()
    if name == "masked":
        model[2].requires_grad_(False)  # frozen flags travel too
    state = model.state_dict()
    assert all(isinstance(value, torch.Tensor) for value in state.values()), name
    save_file(state, tmp_path / "model.safetensors")
    loaded = load_expanded(mlp(seed=7), load_file(tmp_path / "model.safetensors")).eval()
    assert [type(layer) for _, layer in expanded_layers(loaded)] == [type(layer) for _, layer in expanded_layers(model)]
    x = torch.randn(5, SIZES[0], dtype=torch.float64)
    assert torch.equal(loaded(x), model(x)), name
    assert {n: p.requires_grad for n, p in loaded.named_parameters()} == \
        {n: p.requires_grad for n, p in model.named_parameters()}
    other = copy.deepcopy(model)  # the second load path: into a model of the same layouts
    with torch.no_grad():
        for param in other.parameters():
            param.add_(1.0)
    other.load_state_dict(load_file(tmp_path / "model.safetensors"))
    assert torch.equal(other(x), model(x)), name


def test_metadata_is_a_uint8_tensor_of_json_that_names_the_layout():
    state = expand(mlp(), 2, "dropconnect", dropconnect_p=0.25, seed=0).state_dict()
    saved = decode_layout_state(state["0.fpe_layout"], "0.fpe_layout")
    assert state["0.fpe_layout"].dtype == torch.uint8 and not any(key.endswith("_extra_state") for key in state)
    assert saved["format"] == 2 and saved["layout"] == "dropconnect" and saved["p"] == 0.25
    assert saved["stored"] == ["weight", "bias", "weight_mask", "bias_mask"]


# ----------------------------------------------------------------------- files of the dict format
@pytest.mark.parametrize("case", list(torch.load(FIXTURE)))
def test_files_with_dict_extra_state_still_load(case):
    saved = torch.load(FIXTURE)[case]
    loaded = load_expanded(mlp(saved["sizes"], seed=9), saved["state"]).eval()
    assert [layer.layout for _, layer in expanded_layers(loaded)] == saved["layouts"]
    assert torch.equal(loaded(saved["x"]), saved["y"])
    frozen = {name for name, layer in expanded_layers(loaded) if layer.frozen_roles()}
    assert frozen == ({saved["frozen"]} if saved["frozen"] else set())
    resaved = loaded.state_dict()  # saving again writes the tensor format
    assert all(isinstance(value, torch.Tensor) for value in resaved.values())
    assert torch.equal(load_expanded(mlp(saved["sizes"]), resaved).eval()(saved["x"]), saved["y"])


def test_a_dict_extra_state_loads_into_an_existing_model():
    saved = torch.load(FIXTURE)["masked"]
    model = load_expanded(mlp(saved["sizes"]), saved["state"])
    fresh = copy.deepcopy(model)
    fresh.load_state_dict(saved["state"])
    assert torch.equal(fresh(saved["x"]), saved["y"])


# ------------------------------------------------------------------ issue 19, defect 3: holes lost
def parent_packed():
    return pack(expand(mlp([12, 8, 3]), 2, "random", seed=0), {"0": "parent"})


def test_a_parent_layer_without_its_hole_bits_is_refused_naming_the_key():
    state = {key: value for key, value in parent_packed().state_dict().items() if key != "0.hole_bits"}
    with pytest.raises(InvalidParameterError, match=r"'0.hole_bits' is missing") as error:
        load_expanded(mlp([12, 8, 3]), state)
    assert "\n" not in str(error.value)
    with pytest.raises(InvalidParameterError, match=r"'0.hole_bits' is missing"):
        parent_packed().load_state_dict(state, strict=False)


def test_an_old_parent_file_without_hole_bits_is_refused_naming_the_key():
    state = dict(torch.load(FIXTURE)["parent_holes"]["state"])
    del state["0.hole_bits"]
    with pytest.raises(InvalidParameterError, match=r"'0.hole_bits' is missing but '0.values' holds \d+ exact zeros"):
        load_expanded(mlp([12, 8, 3]), state)


def test_pruned_entries_of_a_loaded_parent_layer_stay_zero_in_training():
    packed = parent_packed()
    count = nonzero_parameters(packed)
    loaded = load_expanded(mlp([12, 8, 3]), packed.state_dict())
    optimizer = torch.optim.AdamW(loaded.parameters(), lr=0.1)
    for _ in range(10):
        optimizer.zero_grad()
        loaded(torch.randn(16, 12, dtype=torch.float64)).pow(2).sum().backward()
        optimizer.step()
    assert nonzero_parameters(loaded) == count


# -------------------------------------------------------------- issue 19, defect 4: frozen parents
def test_a_frozen_parent_stays_frozen_when_a_trainable_checkpoint_loads():
    trained = expand(mlp(), 2, "random", seed=0)
    parent = mlp()
    parent[2].requires_grad_(False)
    parent[4].bias.requires_grad_(False)
    for packed in (False, True):
        state = (pack(trained) if packed else trained).state_dict()
        loaded = load_expanded(parent, state)
        flags = {name: param.requires_grad for name, param in loaded.named_parameters()}
        assert [name for name, flag in flags.items() if not flag] == \
            [name for name in flags if name.startswith("2.") or name == "4.bias"], packed


# ------------------------------------------------------------------------------ one clear line
def test_a_layer_of_another_shape_in_load_state_dict_names_the_key_and_load_expanded():
    narrow = pack(expand(mlp([10, 6, 4, 2]), 2, "overlap", seed=0), "ell")
    wide = pack(expand(mlp([10, 6, 4, 2]), 2, "overlap", seed=0, budget="none"), "ell")
    assert narrow[0].width < wide[0].width
    with pytest.raises(InvalidParameterError, match=r"layer '0': state_dict key '0.fpe_layout' does not fit this "
                                                    r"layer: its row width \d+ is not this layer's \d+; .*load_expanded"):
        wide.load_state_dict(narrow.state_dict())


def test_tampered_metadata_and_block_values_are_refused_naming_the_key():
    block = pack(expand(mlp([16, 8, 3]), 4, "contiguous", seed=0, budget="global"), {"0": "block"})
    state = block.state_dict()
    assert state["0.values"].dim() == 1, "the block layer stores its live values only"
    cases = {
        "0.fpe_layout": state["0.fpe_layout"].to(torch.int32),
        "2.fpe_layout": torch.tensor(list(b"{not json"), dtype=torch.uint8),
        "0.hole_bits": torch.zeros_like(state["0.hole_bits"]),  # live count no longer that of values
    }
    for key, value in cases.items():
        for load in ("load_expanded", "load_state_dict"):
            tampered = {**state, key: value}
            with pytest.raises(InvalidParameterError) as error:
                load_expanded(mlp([16, 8, 3]), tampered) if load == "load_expanded" else \
                    copy.deepcopy(block).load_state_dict(tampered)
            assert repr(key) in str(error.value) or repr(key.replace("hole_bits", "values")) in str(error.value), \
                (key, load, str(error.value))
            assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_any_deleted_tensor_is_refused_naming_the_key(name):
    state = model_in_layout(name).state_dict()
    for key in [key for key in state if not key.endswith("fpe_layout") and key.startswith(("0.", "2."))]:
        meta = state.get(key.split(".")[0] + ".fpe_layout")
        if meta is None or decode_layout_state(meta, key)["layout"] != name:
            continue
        partial = {k: v for k, v in state.items() if k != key}
        with pytest.raises(InvalidParameterError, match=f"'{key}' is missing") as error:
            load_expanded(mlp(), partial)
        assert "\n" not in str(error.value)


def test_load_expanded_refuses_numpy_arrays_naming_the_key():
    state = {key: value.numpy() for key, value in expand(mlp(), 2, seed=0).state_dict().items()}
    with pytest.raises(InvalidParameterError, match=r"state_dict key '0.weight' holds a numpy.ndarray, not a torch"):
        load_expanded(mlp(), state)


def test_an_unregistered_layout_name_is_refused_naming_the_key():
    state = expand(mlp(), 2, seed=0).state_dict()
    state["0.fpe_layout"] = encode_layout_state({**decode_layout_state(state["0.fpe_layout"], "k"), "layout": "nope"})
    with pytest.raises(InvalidParameterError, match=r"'0.fpe_layout' names the layout 'nope', which is not registered"):
        load_expanded(mlp(), state)


@pytest.mark.parametrize("argument, value", [
    ("weight_mask", torch.ones(4, dtype=torch.bool)),     # broadcast silently before
    ("weight_mask", torch.ones(3, 4)),                     # floats, not booleans
    ("bias_mask", None),
    ("weight", torch.ones(4)),
])
def test_masked_linear_from_tensors_refuses_wrong_tensors_naming_the_argument(argument, value):
    arguments = {"weight": torch.randn(3, 4), "bias": torch.randn(3), "weight_mask": torch.ones(3, 4, dtype=torch.bool),
                 "bias_mask": torch.ones(3, dtype=torch.bool), argument: value}
    with pytest.raises(InvalidParameterError, match=f"the '{argument}' parameter of MaskedLinear.from_tensors"):
        MaskedLinear.from_tensors(**arguments)


def test_apply_masks_refuses_none():
    with pytest.raises(InvalidParameterError, match="the 'model' parameter of apply_masks_ must be"):
        apply_masks_(None)



def test_a_model_that_is_one_expanded_layer_round_trips(tmp_path):
    layer = pack(expand(mlp([6, 4, 2]), 2, seed=0))[0]
    save_file(layer.state_dict(), tmp_path / "layer.safetensors")
    loaded = load_expanded(torch.nn.Linear(6, 4, dtype=torch.float64), load_file(tmp_path / "layer.safetensors"))
    x = torch.randn(3, 6, dtype=torch.float64)
    assert type(loaded) is type(layer) and torch.equal(loaded(x), layer(x))


def test_the_torchscript_onnx_exporter_reads_the_state(tmp_path):
    """It detached every state_dict value ('dict' object has no attribute 'detach' before)."""
    pytest.importorskip("onnx")
    model = expand(mlp(), 2, seed=0).float().eval()
    torch.onnx.export(model, (torch.randn(2, SIZES[0]),), str(tmp_path / "model.onnx"), dynamo=False)
    assert (tmp_path / "model.onnx").stat().st_size > 0
