"""Packed layers in the standard tools (issue 21, item 4): bf16 autocast, DDP (gloo, 2 processes),
``torch.compile`` without graph breaks, ``torch.export`` at any batch size.

Every packable layout is tested, read from the layout registry, each on a split whose masks it stores.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
from torch import nn

import torchfpe
from torchfpe.core.layouts import LAYOUTS, expanded_layers, packable_layouts

#: a split each packable layout stores (block: parents sharing partitions; the others: any partition)
SPLIT_FOR = {"block": "grouped"}


def packed_model(layout: str, seed: int = 0, sizes=(12, 8, 5), alpha: int = 2) -> tuple[nn.Module, nn.Module]:
    generator = torch.Generator().manual_seed(seed)
    parent = nn.Sequential(nn.Linear(sizes[0], sizes[1]), nn.ReLU(), nn.Linear(sizes[1], sizes[2]))
    with torch.no_grad():
        for p in parent.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    wide = torchfpe.expand(parent, alpha=alpha, split=SPLIT_FOR.get(layout, "random"), seed=seed)
    # the incoming layer in the layout under test; the outgoing one (copied columns, which ``parent``
    # cannot hold) in the same layout where it fits, else where ``auto`` puts it
    try:
        packed = torchfpe.pack(wide, layout=layout)
    except torchfpe.InvalidParameterError:
        packed = torchfpe.pack(wide, layout={"0": layout, "2": "auto"})
    assert dict(expanded_layers(packed))["0"].layout == layout
    return wide, packed


LAYOUT_NAMES = packable_layouts()


def test_every_packable_layout_is_covered():
    assert LAYOUT_NAMES and all(LAYOUTS[name].packable for name in LAYOUT_NAMES)


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_bf16_autocast_forward_and_backward(layout):
    wide, packed = packed_model(layout)
    x = torch.randn(6, 12)
    outputs = {}
    for name, model in (("masked", wide), ("packed", packed)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        out.float().square().sum().backward()
        outputs[name] = out.float()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    assert torch.allclose(outputs["masked"], outputs["packed"], atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_compile_without_graph_breaks(layout):
    torch._dynamo.reset()
    wide, packed = packed_model(layout)
    x = torch.randn(4, 12)
    expected = packed(x)
    compiled = torch.compile(packed, fullgraph=True, backend="aot_eager")  # fullgraph: a break is an error
    out = compiled(x)
    out.sum().backward()
    assert torch.allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_export_at_any_batch_size(layout):
    wide, packed = packed_model(layout)
    packed.eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(packed, (torch.randn(4, 12),), dynamic_shapes=({0: batch},))
    for n in (1, 3, 17, 64):
        x = torch.randn(n, 12)
        assert torch.allclose(program.module()(x), packed(x), atol=1e-6), n


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, layout: str, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        _, packed = packed_model(layout)
        model = DistributedDataParallel(packed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        generator = torch.Generator().manual_seed(100 + rank)  # each rank its own data
        for _ in range(3):
            optimizer.zero_grad()
            model(torch.randn(5, 12, generator=generator)).square().mean().backward()
            optimizer.step()
        holes = sum(layer.masked_out_nonzero() for _, layer in expanded_layers(packed))
        torch.save({"state": {k: v.detach().clone() for k, v in packed.state_dict().items()
                              if isinstance(v, torch.Tensor)}, "holes": holes}, f"{out}.{rank}")
        dist.barrier()  # neither rank tears gloo down while the other still uses it
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_ddp_gloo_two_processes(layout, tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "rank")
    mp.start_processes(_ddp_worker, args=(2, _free_port(), layout, out), nprocs=2, join=True, start_method="spawn")
    ranks = [torch.load(f"{out}.{rank}", weights_only=True) for rank in range(2)]
    assert ranks[0]["holes"] == 0 and ranks[1]["holes"] == 0
    assert ranks[0]["state"].keys() == ranks[1]["state"].keys()
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
    _, fresh = packed_model(layout)
    changed = [k for k, v in fresh.state_dict().items() if isinstance(v, torch.Tensor) and v.is_floating_point()
               and not torch.equal(v, ranks[0]["state"][k])]
    assert changed  # the ranks trained (and agree), not merely stayed at their common start


def test_compile_the_parent_layouts_compiled_kernels_without_graph_breaks(monkeypatch):
    """The parent layout's C++ kernels are torch operators (torch.library), so a traced graph holds them."""
    from torchfpe.core.layouts import native, parent

    if not native.ready():
        pytest.skip("no compiled kernels here (compiler, ninja, AVX-512)")
    monkeypatch.setattr(parent, "NATIVE_MIN_SIZE", 0)  # the small test layer takes the kernels' path
    wide, packed = packed_model("parent", sizes=(40, 24, 5), alpha=4)
    for batch, path in ((2, "native"), (70, "tiled")):
        layer = dict(expanded_layers(packed))["0"]
        assert layer.path(batch, True, torch.device("cpu"), torch.float32) == path
        torch._dynamo.reset()
        x = torch.randn(batch, 40)
        explained = torch._dynamo.explain(lambda x: packed(x).square().sum())(x)
        assert explained.graph_break_count == 0, explained.break_reasons
        packed.zero_grad(set_to_none=True)
        packed(x).square().sum().backward()
        expected = [p.grad.clone() for p in packed.parameters()]
        packed.zero_grad(set_to_none=True)
        compiled = torch.compile(packed, fullgraph=True, backend="aot_eager")
        compiled(x).square().sum().backward()
        for grad, p in zip(expected, packed.parameters()):
            assert torch.allclose(p.grad, grad, atol=1e-5), batch
