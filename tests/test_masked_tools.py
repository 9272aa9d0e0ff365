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
from torchfpe.core.layouts import expanded_layers
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


@pytest.mark.parametrize("layout", LAYOUTS)
def test_quantize_dynamic_skips_expanded_layers_so_bake_first(layout):
    """torch matches quantize_dynamic's modules by exact type, so an expanded layer (a subclass of
    nn.Linear) is left in float without a word; ``torchfpe.bake`` first makes every layer quantizable."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear
    from torch.ao.quantization import quantize_dynamic

    model = wide_model(layout).eval()
    linear = [name for name, m in model.named_children() if isinstance(m, nn.Linear)]
    expanded = dict(expanded_layers(model))
    skipped = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    for name in expanded:  # left in float, no warning (a plain nn.Linear beside it is quantized)
        assert type(getattr(skipped, name)) is type(expanded[name])

    baked = torchfpe.bake(model)
    quantized = quantize_dynamic(baked, {nn.Linear}, dtype=torch.qint8)
    assert [type(getattr(quantized, name)) for name in linear] == [DynamicQuantizedLinear] * len(linear)
    for name, layer in expanded.items():
        int8 = getattr(quantized, name).weight().int_repr()  # symmetric qint8: 0.0 is the integer 0
        assert torch.count_nonzero(int8[~layer.weight_mask]) == 0  # the holes stay holes
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


def _worker(rank: int, world: int, port: int, tool: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results = {}
        for layout in LAYOUTS:
            model = wide_model(layout)
            if tool == "ddp":
                from torch.nn.parallel import DistributedDataParallel
                wrapped = DistributedDataParallel(model)
            else:
                from torch.distributed.device_mesh import init_device_mesh
                from torch.distributed.fsdp import FSDPModule, fully_shard
                mesh = init_device_mesh("cpu", (world,))
                for _, layer in expanded_layers(model):
                    fully_shard(layer, mesh=mesh)  # "object layout differs" before ExpandedLayer used ABCMeta
                wrapped = fully_shard(model, mesh=mesh)
                assert all(isinstance(layer, FSDPModule) for _, layer in expanded_layers(model))
            optimizer = torch.optim.AdamW(wrapped.parameters(), lr=1e-2, weight_decay=0.1)
            for x in _batches(rank):
                optimizer.zero_grad()
                wrapped(x).square().mean().backward()
                optimizer.step()
            state = {k: _full(v).detach().clone() for k, v in model.state_dict().items()}
            results[layout] = {"state": state, "classes": [type(layer).__name__ for _, layer in expanded_layers(model)]}
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _reference(layout: str) -> dict[str, torch.Tensor]:
    """One process, both ranks' batches at once: the mean of the ranks' mean losses (what DDP/FSDP average)."""
    model = wide_model(layout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for x0, x1 in zip(_batches(0), _batches(1)):
        optimizer.zero_grad()
        (model(torch.cat([x0, x1])).square().mean()).backward()
        optimizer.step()
    return model.state_dict()


def _run_two_ranks(tool: str, tmp_path) -> list[dict]:
    import torch.multiprocessing as mp

    out = str(tmp_path / "rank")
    mp.start_processes(_worker, args=(2, _free_port(), tool, out), nprocs=2, join=True, start_method="spawn")
    return [torch.load(f"{out}.{rank}", weights_only=True) for rank in range(2)]


def _check_ranks(ranks: list[dict]) -> None:
    for layout in LAYOUTS:
        states = [ranks[rank][layout]["state"] for rank in range(2)]
        assert states[0].keys() == states[1].keys()
        for key, value in states[0].items():
            assert torch.equal(value, states[1][key]), (layout, key)
        fresh = wide_model(layout).state_dict()
        assert fresh.keys() == states[0].keys()  # masks (buffers) and fpe_layout kept
        for name, _ in expanded_layers(wide_model(layout)):
            weight, mask = states[0][f"{name}.weight"], states[0][f"{name}.weight_mask"]
            assert torch.equal(mask, fresh[f"{name}.weight_mask"])
            assert torch.count_nonzero(weight[~mask]) == 0, (layout, name)  # holes exactly 0.0
            assert not torch.equal(weight, fresh[f"{name}.weight"])  # it trained
        if layout == "masked":  # dropconnect's drop is random per rank
            for key, value in _reference(layout).items():
                torch.testing.assert_close(states[0][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_ddp_gloo_two_processes(tmp_path):
    _check_ranks(_run_two_ranks("ddp", tmp_path))


def test_fsdp2_fully_shard_per_expanded_layer_gloo_two_processes(tmp_path):
    ranks = _run_two_ranks("fsdp2", tmp_path)
    assert ranks[0]["masked"]["classes"] == ["FSDPMaskedLinear"] * 2
    assert ranks[0]["dropconnect"]["classes"] == ["FSDPDropConnectLinear"]  # its outgoing layer stays nn.Linear
    _check_ranks(ranks)
