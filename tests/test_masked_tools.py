"""The masked layout (``MaskedLinear``, what ``expand`` returns) and the ``dropconnect`` control layer in the
standard tools (issue 20, items 4 and 8): FSDP2, DDP, bf16 autocast, ``torch.compile`` without graph breaks,
``torch.export`` at any batch size, dynamic quantization (through ``torchfpe.bake``), ONNX.

The packed layouts' rows are in ``tests/test_standard_tools.py``; ``torch.nn.utils.prune`` is refused on
every layout (``tests/test_summary_bake.py::test_torch_prune_cannot_replace_the_fpe_masks``).
"""

from __future__ import annotations

import socket

import pytest
import torch
from torch import nn

import torchfpe
from torchfpe import DropConnectLinear, MaskedLinear
from torchfpe.core.layouts import expanded_layers, packable_layouts
from helpers import mlp

LAYOUTS = ["masked", "dropconnect"]
SIZES = (12, 8, 5)


def wide_model(layout: str, seed: int = 0) -> nn.Module:
    split = "dropconnect" if layout == "dropconnect" else "random"
    model = torchfpe.expand(mlp(SIZES, seed), 2, split, seed=seed)
    assert expanded_layers(model) and {layer.layout for _, layer in expanded_layers(model)} == {layout}
    return model


def holes(model: nn.Module) -> int:
    return sum(layer.masked_out_nonzero() for _, layer in expanded_layers(model))


#: FSDP2 and quantization are checked for every layout here (the packed ones' other tools: tests/test_standard_tools.py)
PACKED = packable_layouts()
SPLIT_FOR = {"block": "grouped"}  # a split whose masks each packed layout stores (as test_standard_tools)


def any_model(layout: str) -> nn.Module:
    if layout in LAYOUTS:
        return wide_model(layout)
    wide = torchfpe.expand(mlp(SIZES, 0), 2, SPLIT_FOR.get(layout, "random"), seed=0)
    try:
        packed = torchfpe.pack(wide, layout=layout)
    except torchfpe.InvalidParameterError:  # the outgoing layer (copied columns) where it fits
        packed = torchfpe.pack(wide, layout={"0": layout, "2": "auto"})
    assert dict(expanded_layers(packed))["0"].layout == layout
    return packed


def test_the_layouts_are_the_classes_under_test():
    assert type(wide_model("masked")[0]) is MaskedLinear and type(wide_model("dropconnect")[0]) is DropConnectLinear


# ------------------------------------------------------------------------------------- one process
@pytest.mark.parametrize("layout", LAYOUTS)
def test_bf16_autocast_forward_backward_and_a_step_keep_the_holes(layout):
    model = wide_model(layout)
    x = torch.randn(6, SIZES[0], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model.eval()(x)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    out.float().square().mean().backward()
    for _, layer in expanded_layers(model):
        assert torch.isfinite(layer.weight.grad).all()
        assert torch.count_nonzero(layer.weight.grad[~layer.weight_mask]) == 0  # no gradient reaches a hole
    optimizer.step()
    assert holes(model) == 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # eval: dropconnect's drop is off
        out = wide_model(layout).eval()(x)
    torch.testing.assert_close(out.float(), expected, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_compile_fullgraph_trains_like_eager(layout):
    torch._dynamo.reset()
    eager, traced = wide_model(layout), wide_model(layout)
    x = torch.randn(4, SIZES[0], generator=torch.Generator().manual_seed(2))
    compiled = torch.compile(traced, fullgraph=True, backend="aot_eager")  # a graph break is an error
    if layout == "dropconnect":  # the random drop: compare in eval mode, train in train mode
        torch.testing.assert_close(compiled.eval()(x), eager.eval()(x), rtol=0, atol=1e-6)
        compiled.train()
    compiled(x).square().mean().backward()
    eager(x).square().mean().backward()
    for (_, a), (_, b) in zip(expanded_layers(eager), expanded_layers(traced)):
        assert torch.count_nonzero(b.weight.grad[~b.weight_mask]) == 0
        if layout == "masked":
            torch.testing.assert_close(b.weight.grad, a.weight.grad, rtol=1e-5, atol=1e-6)
    optimizer = torch.optim.AdamW(traced.parameters(), lr=1e-2)
    optimizer.step()
    assert holes(traced) == 0


@pytest.mark.parametrize("layout", LAYOUTS)
def test_export_at_any_batch_size(layout):
    model = wide_model(layout).eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, (torch.randn(4, SIZES[0]),), dynamic_shapes=({0: batch},))
    for n in (1, 3, 17, 64):
        x = torch.randn(n, SIZES[0])
        torch.testing.assert_close(program.module()(x), model(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("layout", LAYOUTS + PACKED)
def test_quantize_dynamic_skips_expanded_layers_so_bake_first(layout):
    """torch matches quantize_dynamic's modules by exact type, so an expanded layer (a subclass of
    nn.Linear; a packed layer is none) is left in float without a word; ``torchfpe.bake`` first makes every
    layer quantizable."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear
    from torch.ao.quantization import quantize_dynamic

    model = any_model(layout).eval()
    expanded = dict(expanded_layers(model))
    skipped = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    for name in expanded:  # left in float, no warning (a plain nn.Linear beside it is quantized)
        assert type(getattr(skipped, name)) is type(expanded[name])

    baked = torchfpe.bake(model)
    linear = [name for name, m in baked.named_children() if isinstance(m, nn.Linear)]
    assert set(expanded) <= set(linear)
    quantized = quantize_dynamic(baked, {nn.Linear}, dtype=torch.qint8)
    assert [type(getattr(quantized, name)) for name in linear] == [DynamicQuantizedLinear] * len(linear)
    for name, layer in expanded.items():
        int8 = getattr(quantized, name).weight().int_repr()  # symmetric qint8: 0.0 is the integer 0
        assert torch.count_nonzero(int8[~layer.dense_weight_mask()]) == 0  # the holes stay holes
    x = torch.randn(16, SIZES[0], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(quantized(x), model(x), atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_onnx_export_with_a_dynamic_batch(layout, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")  # torch.onnx.export(dynamo=True) needs it
    model = wide_model(layout).eval()
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (torch.randn(4, SIZES[0]),), str(path), dynamo=True,
                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    onnx.checker.check_model(onnx.load(str(path)))


def test_a_trainer_checkpoint_of_a_masked_model_saves_and_resumes(tmp_path):
    """As tests/test_pretrained.py does for packed layers (parent, ell), for the masked layout that expand returns."""
    pytest.importorskip("accelerate")
    from test_pretrained import tiny, transformers

    def masked_gpt2():
        parent = tiny("gpt2")
        return torchfpe.expand(parent, 2, "random", pairs=torchfpe.find_ffn_pairs(parent), seed=0).train()

    wide = masked_gpt2()
    assert {layer.layout for _, layer in expanded_layers(wide)} == {"masked"}
    rows = torch.randint(0, 50, (8, 8), generator=torch.Generator().manual_seed(2))
    data = [{"input_ids": row, "labels": row} for row in rows]
    arguments = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=2, save_steps=1,
                                               per_device_train_batch_size=4, report_to=[], use_cpu=True,
                                               save_only_model=False, disable_tqdm=True)
    transformers.Trainer(model=wide, args=arguments, train_dataset=data).train()
    assert (tmp_path / "checkpoint-1" / "model.safetensors").is_file() and holes(wide) == 0
    resumed = masked_gpt2()
    transformers.Trainer(model=resumed, args=arguments, train_dataset=data).train(
        resume_from_checkpoint=str(tmp_path / "checkpoint-1"))
    assert torchfpe.nonzero_parameters(resumed) == torchfpe.nonzero_parameters(wide)
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), wide.state_dict().values()))


@pytest.mark.parametrize("layout", LAYOUTS + PACKED)
def test_torch_prune_is_refused_on_every_layout(layout):
    """The guard of tests/test_summary_bake.py::test_torch_prune_cannot_replace_the_fpe_masks (masked, parent),
    on each layout's incoming layer."""
    from torch.nn.utils import prune

    layer = any_model(layout)[0]
    with pytest.raises(torchfpe.InvalidParameterError, match="torch.nn.utils.prune would replace them"):
        prune.l1_unstructured(layer, layer.weight_parameter, amount=0.3)
    assert holes(nn.Sequential(layer)) == 0 and not list(layer._forward_pre_hooks.values())


# ------------------------------------------------------------------------------- two processes (gloo)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batches(rank: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + rank)  # each rank its own data
    return [torch.randn(5, SIZES[0], generator=generator) for _ in range(3)]


def _full(value):
    return value.full_tensor() if hasattr(value, "full_tensor") else value  # FSDP2's parameters are DTensors


def _train(rank: int, world: int, tool: str, layout: str) -> dict:
    model = any_model(layout)
    if tool == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        wrapped = DistributedDataParallel(model)
    else:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FSDPModule, fully_shard
        mesh = init_device_mesh("cpu", (world,))
        for _, layer in expanded_layers(model):
            fully_shard(layer, mesh=mesh)  # "object layout differs" before ExpandedLayer took ABCMeta
        wrapped = fully_shard(model, mesh=mesh)
        assert all(isinstance(layer, FSDPModule) for _, layer in expanded_layers(model))
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=1e-2, weight_decay=0.1)
    for x in _batches(rank):
        optimizer.zero_grad()
        wrapped(x).square().mean().backward()
        optimizer.step()
    state = {k: _full(v).detach().clone() for k, v in model.state_dict().items()}
    return {"state": state, "classes": [type(layer).__name__ for _, layer in expanded_layers(model)]}


def _worker(rank: int, world: int, port: int, tool: str, layouts: list[str], out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results = {}
        for layout in layouts:
            try:
                results[layout] = _train(rank, world, tool, layout)
            except Exception as error:  # noqa: BLE001 - reported per layout, in the test that names it
                results[layout] = {"error": f"{type(error).__name__}: {error}"}
        torch.save(results, f"{out}.{rank}")
        dist.barrier()  # neither rank tears gloo down while the other still uses it (a rank aborted so, rarely)
    finally:
        dist.destroy_process_group()


def _run_two_ranks(tool: str, layouts: list[str], directory) -> list[dict]:
    import torch.multiprocessing as mp

    out = str(directory / "rank")
    mp.start_processes(_worker, args=(2, _free_port(), tool, layouts, out), nprocs=2, join=True,
                       start_method="spawn")
    return [torch.load(f"{out}.{rank}", weights_only=True) for rank in range(2)]


def _reference(layout: str) -> dict[str, torch.Tensor]:
    """One process, both ranks' batches at once: the mean of the ranks' mean losses (what DDP/FSDP average)."""
    model = any_model(layout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for x0, x1 in zip(_batches(0), _batches(1)):
        optimizer.zero_grad()
        model(torch.cat([x0, x1])).square().mean().backward()
        optimizer.step()
    return model.state_dict()


def _check_ranks(ranks: list[dict], layout: str) -> None:
    assert "error" not in ranks[0][layout], ranks[0][layout].get("error")
    states = [ranks[rank][layout]["state"] for rank in range(2)]
    assert states[0].keys() == states[1].keys()
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key  # the ranks agree
    fresh = any_model(layout)
    start = fresh.state_dict()
    assert start.keys() == states[0].keys()  # masks and index buffers, fpe_layout: all kept
    for key, value in start.items():
        if not value.is_floating_point():
            assert torch.equal(states[0][key], value), key  # fixed buffers unchanged
    assert any(not torch.equal(states[0][k], v) for k, v in start.items() if v.is_floating_point())  # it trained
    fresh.load_state_dict(states[0])
    assert holes(fresh) == 0  # pruned entries exactly 0.0
    if layout != "dropconnect":  # its drop is random per rank
        for key, value in _reference(layout).items():
            torch.testing.assert_close(states[0][key], value, rtol=1e-4, atol=1e-5, msg=key)


@pytest.fixture(scope="module")
def ddp_ranks(tmp_path_factory):
    return _run_two_ranks("ddp", LAYOUTS, tmp_path_factory.mktemp("ddp"))


@pytest.fixture(scope="module")
def fsdp2_ranks(tmp_path_factory):
    return _run_two_ranks("fsdp2", LAYOUTS + PACKED, tmp_path_factory.mktemp("fsdp2"))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ddp_gloo_two_processes(layout, ddp_ranks):
    _check_ranks(ddp_ranks, layout)


BLOCK_STATE_DICT = ("block's _save_to_state_dict indexes its values (a sharded DTensor under FSDP2) with a plain "
                    "tensor: 'aten.index.Tensor got mixed torch.Tensor and DTensor'; training itself runs")


@pytest.mark.parametrize("layout", LAYOUTS + [
    pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=BLOCK_STATE_DICT)) if name == "block" else name
    for name in PACKED])
def test_fsdp2_fully_shard_per_expanded_layer_gloo_two_processes(layout, fsdp2_ranks):
    """fully_shard on each expanded layer, then the root; 3 AdamW steps; gathered with full_tensor()."""
    _check_ranks(fsdp2_ranks, layout)
    classes = fsdp2_ranks[0][layout]["classes"]
    assert classes and all(name.startswith("FSDP") for name in classes)
