"""Time and stored bytes of packed expanded MLPs against their dense parent, timed back to back.

The default grid is the memory-bound regime: MLPs ``width -> width -> 10`` (one hidden layer) at
width 4096 and 8192, alpha 2, 4 and 8, every registered split that ``pack`` stores (all but
``dropconnect``), batch 1 and 256, forward and forward + backward (gradients of all weights), one
thread. For each row the parent, the packed model and (up to ``--masked-max-width``) the masked
reference are timed in interleaved rounds, each round as many calls as fill ``--round`` seconds;
a row's ratio is the median over ``--repeats`` rounds of (model's round / parent's round), its
spread (max - min) / median of those per-round ratios. The physical limit of a row is its bytes
ratio: the packed ``state_dict``'s bytes over the parent's.

    OMP_NUM_THREADS=1 .venv/bin/python bench/packed.py --out bench/results/packed_memory.json
    OMP_NUM_THREADS=1 .venv/bin/python bench/packed.py --ffn --out bench/results/packed_ffn.json
    OMP_NUM_THREADS=1 .venv/bin/python bench/packed.py --small --out bench/results/packed_small.json
    .venv/bin/python bench/packed.py --table bench/results/packed_memory.json   # the markdown tables
    .venv/bin/python bench/packed.py --smoke --out /tmp/smoke.json   # seconds: width 64, two splits, one round

``--ffn``: the transformer-FFN shape 1024 -> 4096 -> 1024, alpha 2, budgets ``global`` and
``structured``. ``--small``: one 1024-wide layer alone and in its MLP at batch 1 (the per-call
overhead). ``--quick``: widths 512 and 1024, 1 and 3 hidden layers (the first grid of this script).
``--headline``: one training step of the Boolean headline's shapes (48 inputs, 8 units, alpha 2).

Memory: a masked 8192-wide alpha = 8 model holds 2 GiB of weights, and ``expand``'s global budget
sorts all of them; a row whose estimated peak (``BYTES_PER_EXPANDED_ENTRY`` per expanded entry,
measured 3.0 GiB for the 134 M entries of width 4096 at alpha 8) exceeds ``--max-gb`` is skipped
and listed in the JSON, as is one that would not fit in the memory available (with a quarter to spare)
when its turn comes. The file is rewritten after every row (``"complete": false`` until the end).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

import torchfpe
from torchfpe.core.layouts import native, stored_bytes

#: Every split pack stores (dropconnect keeps the parent's width and is never packed).
SPLITS = [name for name, split in torchfpe.SPLITS.items() if split.widens]
MEMORY = dict(widths=[4096, 8192], alphas=[2, 4, 8], depths=[1], splits=SPLITS, batches=[1, 256])
QUICK = dict(widths=[512, 1024], alphas=[2, 4, 8], depths=[1, 3], splits=["contiguous", "shared", "grouped", "random"],
             batches=[1, 256])
SMOKE = dict(widths=[64], alphas=[2], depths=[1], splits=["contiguous", "random"], batches=[1, 8])
#: Peak resident bytes of expand + pack per entry of the expanded model (measured: 3.04 GB for width
#: 4096, alpha 8, random, global budget: 134 M expanded entries).
BYTES_PER_EXPANDED_ENTRY = 23


def mlp(sizes: list[int], seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def expand_kwargs(split: str, width: int) -> dict:
    """What a split needs, for the first layer's inputs: 4-input clauses, or random examples."""
    needs = torchfpe.SPLITS[split].needs
    kwargs: dict = {}
    if "clauses" in needs:
        kwargs["clauses"] = [list(range(i, min(i + 4, width))) for i in range(0, width, 4)]
    if "data" in needs:
        kwargs["data"] = torch.randn(256, width, generator=torch.Generator().manual_seed(0))
    if needs:
        kwargs["layers"] = ["0"]
    return kwargs


def calibrate(fn, round_seconds: float) -> int:
    """Calls of ``fn`` that fill about ``round_seconds`` (after one warm-up call)."""
    fn()
    started, calls = time.perf_counter(), 0
    while time.perf_counter() - started < round_seconds / 4 or calls < 1:
        fn()
        calls += 1
    per_call = (time.perf_counter() - started) / calls
    return max(1, int(round_seconds / max(per_call, 1e-9)))


def interleaved(fns: dict, round_seconds: float, repeats: int, reference: str) -> dict:
    """Median seconds per call of each function and its median ratio to ``reference`` over rounds
    taken in turn (so a change of the machine's load hits every function of a round alike)."""
    calls = {name: calibrate(fn, round_seconds) for name, fn in fns.items()}
    rounds: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            rounds[name].append((time.perf_counter() - t0) / calls[name])
    out = {}
    for name, values in rounds.items():
        ratios = [v / r for v, r in zip(values, rounds[reference])]
        median = statistics.median(ratios)
        out[name] = {"seconds": statistics.median(values), "ratio": round(median, 3),
                     "spread": round((max(ratios) - min(ratios)) / median, 3)}
    return out


def forward_fn(model, x):
    def run():
        with torch.no_grad():
            model(x)
    return run


def train_fn(model, x):
    params = [p for p in model.parameters() if p.requires_grad]

    def run():
        for p in params:
            p.grad = None
        model(x).sum().backward()
    return run


def load() -> float:
    return round(os.getloadavg()[0], 2)


def layouts_of(model) -> list[str]:
    return [layer.layout for _, layer in torchfpe.core.expanded_layers(model)]


def time_models(models: dict, width: int, batches, args) -> list[dict]:
    """One row per batch: forward and forward + backward of every model, interleaved with the dense parent."""
    rows = []
    for batch in batches:
        x = torch.randn(batch, width)
        row = {"batch": batch, "load_before": load(), "times": {}}
        for mode, make in (("forward", forward_fn), ("forward_backward", train_fn)):
            timed = interleaved({name: make(model, x) for name, model in models.items()}, args.round, args.repeats,
                                "dense")
            for name, result in timed.items():
                row["times"][f"{mode}/{name}"] = result
        row["load_after"] = load()
        rows.append(row)
    return rows


def grid_rows(grid: dict, args, progress=None) -> tuple[list[dict], list[dict]]:
    rows, skipped = [], []
    for width, depth, alpha, split in itertools.product(grid["widths"], grid["depths"], grid["alphas"], grid["splits"]):
        entries = alpha * width * width * depth + alpha * width * 10  # expanded model's weight entries
        estimate = entries * BYTES_PER_EXPANDED_ENTRY / 2**30
        base = {"width": width, "hidden_layers": depth, "alpha": alpha, "split": split, "budget": args.budget}
        available = available_gb()
        if estimate > args.max_gb or estimate * 1.25 > available:  # never push a shared machine into swapping
            skipped.append({**base, "estimated_peak_gb": round(estimate, 1), "available_gb": round(available, 1)})
            print(f"skip w={width} a={alpha} {split}: about {estimate:.0f} GB (--max-gb {args.max_gb}, "
                  f"{available:.0f} GB available)", flush=True)
            continue
        parent = mlp([width] * (depth + 1) + [10])
        t0 = time.perf_counter()
        masked = torchfpe.expand(parent, alpha, split, seed=0, budget=args.budget, **expand_kwargs(split, width))
        t1 = time.perf_counter()
        packed = torchfpe.pack(masked)
        setup = {"expand_seconds": round(t1 - t0, 1), "pack_seconds": round(time.perf_counter() - t1, 1)}
        models = {"dense": parent, "packed": packed}
        if width <= args.masked_max_width:
            models["masked"] = masked
        base.update(packed_layouts=layouts_of(packed), setup=setup,
                    bytes={"dense": stored_bytes(parent), "masked": stored_bytes(masked), "packed": stored_bytes(packed)},
                    nonzero={"dense": torchfpe.nonzero_parameters(parent),
                             "packed": torchfpe.nonzero_parameters(packed)})
        base["bytes_ratio"] = {k: round(v / base["bytes"]["dense"], 3) for k, v in base["bytes"].items()}
        if width > args.masked_max_width:
            del masked
            gc.collect()
        for timed in time_models(models, width, grid["batches"], args):
            row = {**base, **timed}
            rows.append(row)
            print(summary(row), flush=True)
        del models, packed, parent
        masked = None
        gc.collect()
        if progress is not None:
            progress(rows, skipped)  # the file so far: a killed run keeps its finished rows
    return rows, skipped


def available_gb() -> float:
    """MemAvailable of /proc/meminfo in GiB (infinite where it cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")


def summary(row: dict) -> str:
    t = row["times"]
    parts = [f"{k.replace('forward_backward', 'fb').replace('forward', 'f')}={v['ratio']:.2f}" for k, v in t.items()
             if not k.endswith("/dense")]
    return (f"w={row['width']} L={row['hidden_layers']} a={row['alpha']} {row['split']:13s} b={row['batch']:3d} "
            f"{'+'.join(dict.fromkeys(row['packed_layouts']))} {' '.join(parts)} bytes={row['bytes_ratio']['packed']:.3f} "
            f"load={row['load_before']}")


# ------------------------------------------------------------------------------------- FFN, small
def ffn_rows(args) -> list[dict]:
    """The issue's FFN shape 1024 -> 4096 -> 1024, alpha 2: global against structured."""
    sizes = [64, 256, 64] if args.smoke else [1024, 4096, 1024]
    rows = []
    for split, budget in itertools.product(["random", "contiguous"], ["global", "structured"]):
        parent = mlp(sizes)
        packed = torchfpe.pack(torchfpe.expand(parent, 2, split, seed=0, budget=budget))
        base = {"sizes": sizes, "alpha": 2, "split": split, "budget": budget, "packed_layouts": layouts_of(packed),
                "bytes_ratio": round(stored_bytes(packed) / stored_bytes(parent), 3),
                "nonzero": {"dense": torchfpe.nonzero_parameters(parent), "packed": torchfpe.nonzero_parameters(packed)}}
        for timed in time_models({"dense": parent, "packed": packed}, sizes[0], [1, 256] if not args.smoke else [1, 8],
                                 args):
            row = {**base, **timed}
            rows.append(row)
            print(f"ffn {split} {budget} b={row['batch']} {'+'.join(row['packed_layouts'])} "
                  f"f={row['times']['forward/packed']['ratio']:.2f} fb={row['times']['forward_backward/packed']['ratio']:.2f} "
                  f"bytes={row['bytes_ratio']} load={row['load_before']}", flush=True)
    return rows


def small_rows(args) -> list[dict]:
    """A 1024-wide layer at batch 1, alone (as the MLP stores it: block order) and in its MLP."""
    width = 64 if args.smoke else 1024
    rows = []
    x = torch.randn(1, width)
    for split, alpha in itertools.product(["contiguous", "grouped"], [2, 4]):
        parent = mlp([width, width, 10])
        masked = torchfpe.expand(parent, alpha, split, seed=0)
        packed = torchfpe.pack(masked)
        natural = torchfpe.core.layouts.pack_layer(masked[0], natural_output=True)
        timed = interleaved({"dense": forward_fn(parent[0], x), "layer": forward_fn(packed[0], x),
                             "layer_natural_order": forward_fn(natural, x), "mlp_dense": forward_fn(parent, x),
                             "mlp_packed": forward_fn(packed, x)}, args.round, args.repeats, "dense")
        mlp_ratio = timed["mlp_packed"]["seconds"] / timed["mlp_dense"]["seconds"]
        row = {"width": width, "alpha": alpha, "split": split, "packed_layouts": layouts_of(packed),
               "times": timed, "mlp_ratio": round(mlp_ratio, 3), "load": load()}
        rows.append(row)
        print(f"small {split} a={alpha} layer={timed['layer']['ratio']:.2f} natural={timed['layer_natural_order']['ratio']:.2f}"
              f" mlp={mlp_ratio:.2f} load={row['load']}", flush=True)
    return rows


def headline(args) -> list[dict]:
    """One training step (forward + backward, full batch of 4000) of the Boolean headline's shapes."""
    rows = []
    x = torch.randn(4000, 48)
    torch.manual_seed(0)
    parent = nn.Sequential(nn.Linear(48, 8), nn.ReLU(), nn.Linear(8, 1))
    clauses = [list(range(i, i + 3)) for i in range(0, 24, 3)]
    for split in ("random", "clause", "contiguous"):
        masked = torchfpe.expand(parent, 2, split, seed=0, clauses=clauses if split == "clause" else None)
        packed = torchfpe.pack(masked)
        timed = interleaved({"dense": train_fn(parent, x), "masked": train_fn(masked, x), "packed": train_fn(packed, x)},
                            args.round, args.repeats, "dense")
        rows.append({"split": split, "packed_layouts": layouts_of(packed), "times": timed})
        print(split, {k: v["ratio"] for k, v in timed.items()}, flush=True)
    return rows


# ------------------------------------------------------------------------------------------ tables
def table(path: Path) -> None:
    """Print the markdown tables of docs/benchmarks.md from a result file."""
    data = json.loads(path.read_text())
    kind = data["meta"]["kind"]
    if kind == "grid":  # one table per batch: batch 1 reads the weights once, batch 256 reuses them
        for number, batch in enumerate(dict.fromkeys(row["batch"] for row in data["rows"])):
            if number:
                print()
            print(f"| width | α | split | packed layouts | batch | fwd packed | fwd+bwd packed | bytes (limit) "
                  f"| fwd masked | fwd+bwd masked | load |")
            print("|---|---|---|---|---|---|---|---|---|---|---|")
            for row in (r for r in data["rows"] if r["batch"] == batch):
                t = row["times"]

                def cell(key):
                    return f"{t[key]['ratio']:.2f} ±{t[key]['spread']:.0%}" if key in t else "—"
                print(f"| {row['width']} | {row['alpha']} | {row['split']} "
                      f"| {'+'.join(dict.fromkeys(row['packed_layouts']))} | {row['batch']} "
                      f"| **{cell('forward/packed')}** | **{cell('forward_backward/packed')}** "
                      f"| {row['bytes_ratio']['packed']:.3f} | {cell('forward/masked')} | {cell('forward_backward/masked')} "
                      f"| {row['load_before']:.1f} |")
    elif kind == "ffn":
        print("| split | budget | packed layouts | batch | fwd packed | fwd+bwd packed | bytes (limit) | non-zero = parent |")
        print("|---|---|---|---|---|---|---|---|")
        for row in data["rows"]:
            t = row["times"]
            print(f"| {row['split']} | {row['budget']} | {'+'.join(row['packed_layouts'])} | {row['batch']} "
                  f"| **{t['forward/packed']['ratio']:.2f} ±{t['forward/packed']['spread']:.0%}** "
                  f"| {t['forward_backward/packed']['ratio']:.2f} ±{t['forward_backward/packed']['spread']:.0%} "
                  f"| {row['bytes_ratio']:.3f} | {row['nonzero']['packed'] == row['nonzero']['dense']} |")
    elif kind == "small":
        print("| split | α | layer alone (block order) | layer alone (natural order) | MLP |")
        print("|---|---|---|---|---|")
        for row in data["rows"]:
            t = row["times"]
            print(f"| {row['split']} | {row['alpha']} | **{t['layer']['ratio']:.2f} ±{t['layer']['spread']:.0%}** "
                  f"| {t['layer_natural_order']['ratio']:.2f} ±{t['layer_natural_order']['spread']:.0%} "
                  f"| {row['mlp_ratio']:.2f} |")
    else:
        raise SystemExit(f"{path}: no table for results of kind {kind!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="widths 512 and 1024, 1 and 3 hidden layers")
    parser.add_argument("--ffn", action="store_true", help="the FFN shape 1024 -> 4096 -> 1024, global vs structured")
    parser.add_argument("--small", action="store_true", help="a 1024-wide layer at batch 1 (per-call overhead)")
    parser.add_argument("--headline", action="store_true", help="time the Boolean headline's training shapes")
    parser.add_argument("--widths", type=int, nargs="*")
    parser.add_argument("--alphas", type=int, nargs="*")
    parser.add_argument("--depths", type=int, nargs="*")
    parser.add_argument("--splits", nargs="*")
    parser.add_argument("--batches", type=int, nargs="*")
    parser.add_argument("--budget", default="global", help="expand's budget for the grid (default global)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds per model (the medians are over these)")
    parser.add_argument("--round", type=float, default=0.3, help="seconds per timing round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--masked-max-width", type=int, default=4096,
                        help="time the masked reference only up to this width (it costs alpha times the parent)")
    parser.add_argument("--max-gb", type=float, default=8.0, help="skip rows whose estimated peak memory is larger")
    parser.add_argument("--smoke", action="store_true", help="a tiny grid, one short round, to check the script; "
                        "needs --out")
    parser.add_argument("--out", type=Path, help="JSON result file (default bench/results/packed_<kind>.json)")
    parser.add_argument("--table", type=Path, help="print the markdown table of a result file and exit")
    args = parser.parse_args()
    if args.smoke and args.out is None:
        parser.error("--smoke needs --out, so that a smoke run never replaces a result in bench/results/")
    if args.table:
        return table(args.table)
    if args.smoke:
        args.repeats, args.round = 2, 0.01
    torch.set_num_threads(args.threads)
    kind = "ffn" if args.ffn else "small" if args.small else "headline" if args.headline else "grid"
    started = time.perf_counter()
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    grid = None
    out = args.out or Path(f"bench/results/packed_{'memory' if kind == 'grid' and not args.quick else kind if kind != 'grid' else 'quick'}.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(rows: list[dict], skipped: list[dict], complete: bool) -> None:
        meta = {"kind": kind, "date": date, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "torch": torch.__version__, "machine": platform.machine(),
                "processor": platform.processor() or _cpu_name(), "threads": args.threads, "cpu_count": os.cpu_count(),
                "grid": grid, "budget": args.budget, "repeats": args.repeats, "round": args.round, "smoke": args.smoke,
                "native_kernels": native.kernels() is not None, "seconds": round(time.perf_counter() - started, 1),
                "skipped": skipped, "complete": complete}
        out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))

    skipped: list[dict] = []
    if kind == "grid":
        grid = dict(SMOKE if args.smoke else QUICK if args.quick else MEMORY)
        for key in grid:
            if getattr(args, key) is not None:
                grid[key] = getattr(args, key)
        rows, skipped = grid_rows(grid, args, progress=lambda r, s: write(r, s, False))
    else:
        rows = {"ffn": ffn_rows, "small": small_rows, "headline": headline}[kind](args)
    write(rows, skipped, True)
    print(f"wrote {out} ({time.perf_counter() - started:.0f} s)")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


if __name__ == "__main__":
    main()
