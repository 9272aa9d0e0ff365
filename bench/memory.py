"""Resident memory of packed expanded models against their dense parent (issue 21, item 1).

Two figures per model, both in bytes:

- **resident**: the sum of the distinct storages reachable from the module: parameters, buffers
  (persistent or not) and every tensor held as a module attribute, directly or inside a dict, list
  or tuple attribute (caches). A storage shared by two names counts once. This is what the model
  holds between calls, whatever its ``state_dict`` says.
- **peak extra** of one forward and backward (gradients of every weight) at batch 1 and 256: the
  high-water mark of the CPU allocator's live bytes during the step, above what was live before it,
  read from the profiler's allocation events (``torch.profiler`` with ``profile_memory=True``).
  Output, activations saved for backward, temporaries and the gradients themselves all count.

Shapes: the transformer FFN ``1024 -> 4096 -> 1024`` and the memory-bound layer ``4096 -> 4096 -> 10``
(the 4096 layer of ``bench/packed.py``), alpha 2 and 4, splits ``random`` and ``grouped``, budgets
``global`` and ``structured``; ``pack(layout="auto")`` picks the layout. One thread.

    OMP_NUM_THREADS=1 .venv/bin/python bench/memory.py --out bench/results/memory.json
    .venv/bin/python bench/memory.py --smoke --out /tmp/memory_smoke.json    # seconds: width 64
    .venv/bin/python bench/memory.py --table bench/results/memory.json       # the markdown table
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

import torchfpe
from torchfpe.core.layouts import expanded_layers

SHAPES = {"ffn": (1024, 4096, 1024), "layer4096": (4096, 4096, 10)}
GRID = dict(shapes=list(SHAPES), alphas=[2, 4], splits=["random", "grouped"], budgets=["global", "structured"],
            batches=[1, 256])
SMOKE = dict(shapes=["smoke"], alphas=[2], splits=["random", "grouped"], budgets=["global"], batches=[1, 8])


def mlp(sizes: tuple[int, int, int], seed: int = 0) -> nn.Sequential:
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(sizes[0], sizes[1]), nn.GELU(), nn.Linear(sizes[1], sizes[2]))
    torch.random.set_rng_state(generator_state)
    return model


def _tensors(value, found: list[torch.Tensor]) -> None:
    if isinstance(value, torch.Tensor):
        found.append(value)
    elif isinstance(value, dict):
        for item in value.values():
            _tensors(item, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _tensors(item, found)


def resident_bytes(model: nn.Module) -> int:
    """Bytes of the distinct storages reachable from ``model`` (see the module docstring)."""
    found: list[torch.Tensor] = []
    for module in model.modules():
        for name, value in vars(module).items():
            if name in ("_modules",):
                continue
            _tensors(value, found)
    seen: dict[tuple[int, str], int] = {}
    for tensor in found:
        storage = tensor.untyped_storage()
        seen[(storage.data_ptr(), str(tensor.device))] = storage.nbytes()
    return sum(seen.values())


def peak_extra_bytes(model: nn.Module, batch: int, in_features: int) -> int:
    """High-water mark of live CPU bytes during one forward + backward, above the bytes live before it."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(batch, in_features)
    model.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(x).sum().backward()
    sizes: list[tuple[int, int]] = []

    def walk(node) -> None:
        if node.tag == _EventType.Allocation:
            sizes.append((node.start_time_ns, node.extra_fields.alloc_size))
        for child in node.children:
            walk(child)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    live = peak = 0
    for _, size in sorted(sizes):
        live += size
        peak = max(peak, live)
    model.zero_grad(set_to_none=True)
    return peak


def row(shape: str, sizes, alpha: int, split: str, budget: str, batches: list[int]) -> dict:
    parent = mlp(sizes)
    wide = torchfpe.expand(parent, alpha=alpha, split=split, seed=0, budget=budget)
    packed = torchfpe.pack(wide)
    layouts = sorted({layer.layout for _, layer in expanded_layers(packed)})
    result = {"shape": shape, "sizes": list(sizes), "alpha": alpha, "split": split, "budget": budget,
              "layouts": layouts, "resident": {}, "peak_extra": {}}
    for name, model in (("parent", parent), ("masked", wide), ("packed", packed)):
        result["resident"][name] = resident_bytes(model)
        result["peak_extra"][name] = {str(b): peak_extra_bytes(model, b, sizes[0]) for b in batches}
    parent_bytes = result["resident"]["parent"]
    result["resident_ratio"] = {k: v / parent_bytes for k, v in result["resident"].items()}
    return result


def table(path: Path) -> None:
    """Print the markdown table of a results file: resident bytes and peak extra bytes as x the parent's."""
    data = json.loads(Path(path).read_text())
    batches = sorted({int(b) for r in data["rows"] for b in r["peak_extra"]["parent"]})
    print("| shape | alpha | split | budget | packed layouts | parent MB | resident packed | resident masked | "
          + " | ".join(f"peak extra packed, batch {b}" for b in batches) + " |")
    print("|---|---|---|---|---|---|---|---|" + "---|" * len(batches))
    for r in data["rows"]:
        peaks = " | ".join(f"{r['peak_extra']['packed'][str(b)] / r['peak_extra']['parent'][str(b)]:.2f}x"
                           for b in batches)
        print(f"| {r['shape']} {'→'.join(map(str, r['sizes']))} | {r['alpha']} | {r['split']} | {r['budget']} | "
              f"{', '.join(r['layouts'])} | {r['resident']['parent'] / 1e6:.1f} | {r['resident_ratio']['packed']:.2f}x | "
              f"{r['resident_ratio']['masked']:.2f}x | {peaks} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, help="print the markdown table of a results file and exit")
    parser.add_argument("--out", type=Path, default=Path("bench/results/memory.json"))
    parser.add_argument("--smoke", action="store_true", help="width 64, seconds (needs --out)")
    args = parser.parse_args()
    if args.table is not None:
        table(args.table)
        return
    if args.smoke and "--out" not in " ".join(__import__("sys").argv):
        parser.error("--smoke needs --out (a smoke run never writes to bench/results/)")
    grid = SMOKE if args.smoke else GRID
    shapes = {"smoke": (64, 128, 64), **SHAPES}
    torch.set_num_threads(1)
    rows = []
    out = {"command": "bench/memory.py" + (" --smoke" if args.smoke else ""), "machine": platform.processor()
           or platform.machine(), "cpu": _cpu_model(), "torch": torch.__version__,
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "smoke": args.smoke,
           "rows": rows, "complete": False}
    for shape, alpha, split, budget in itertools.product(grid["shapes"], grid["alphas"], grid["splits"],
                                                         grid["budgets"]):
        rows.append(row(shape, shapes[shape], alpha, split, budget, grid["batches"]))
        r = rows[-1]
        print(f"{shape:9} a={alpha} {split:8} {budget:10} {','.join(r['layouts']):12} resident "
              f"packed {r['resident_ratio']['packed']:.2f}x masked {r['resident_ratio']['masked']:.2f}x  peak@"
              f"{grid['batches'][-1]} packed/parent "
              f"{r['peak_extra']['packed'][str(grid['batches'][-1])] / max(1, r['peak_extra']['parent'][str(grid['batches'][-1])]):.2f}x",
              flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1))
    out["complete"] = True
    args.out.write_text(json.dumps(out, indent=1))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
