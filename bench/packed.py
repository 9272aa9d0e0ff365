"""Time and stored bytes of expanded MLPs in four layouts, side by side in one run.

For each MLP (input width = hidden width = ``width``, 10 outputs, 1 or 3 hidden layers), alpha and
split: the dense parent, the masked expanded model (``MaskedLinear``, the reference), the same
weights as torch CSR tensors (forward only: torch has no CSR weight gradient for this product), and
``torchfpe.pack`` of the masked model; forward and forward+backward (gradients of all weights), at
batch 1 and 256; stored bytes of each ``state_dict``. One thread (``torch.set_num_threads(1)``);
each time is the median of ``--repeats`` rounds, a round being as many calls as fill ``--round``
seconds. Ratios are to the dense parent measured in the same run.

    .venv/bin/python bench/packed.py --quick --out bench/results/packed_quick.json
    .venv/bin/python bench/packed.py --out bench/results/packed.json   # the full grid: hours, 20+ GiB
    .venv/bin/python bench/packed.py --headline --out bench/results/packed_headline.json
    .venv/bin/python bench/packed.py --smoke --out /tmp/smoke.json   # seconds: width 32, two splits, one round

``--headline`` instead times one training step (forward + backward, full batch of 4000) of the
Boolean headline's shapes (48 inputs, 8 units, 1 output, alpha 2), the experiments' training shape.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

import torchfpe
from torchfpe.core.layouts import stored_bytes

FULL = dict(widths=[512, 1024, 2048, 4096], alphas=[2, 4, 8], depths=[1, 3],
            splits=["contiguous", "shared", "grouped", "feature", "random", "clause", "overlap", "static_sparse"],
            batches=[1, 256])
QUICK = dict(widths=[512, 1024], alphas=[2, 4, 8], depths=[1, 3], splits=["contiguous", "shared", "grouped", "random"],
             batches=[1, 256])
SMOKE = dict(widths=[32], alphas=[2], depths=[1, 3], splits=["contiguous", "random"], batches=[1, 8])


def mlp(width: int, depth: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


class CsrMLP(nn.Module):
    """The masked model's effective weights as torch sparse CSR tensors (forward only)."""

    def __init__(self, masked: nn.Sequential) -> None:
        super().__init__()
        self.steps = []
        for module in masked:
            if isinstance(module, torchfpe.ExpandedLayer):
                weight = module.effective_weight().detach()
                self.steps.append(("csr", weight.to_sparse_csr(), module.effective_bias().detach()))
            elif isinstance(module, nn.Linear):
                self.steps.append(("dense", module.weight.detach(), module.bias.detach()))
            else:
                self.steps.append(("act", module, None))

    def forward(self, x):
        for kind, a, b in self.steps:
            if kind == "csr":
                x = torch.sparse.mm(a, x.T).T + b
            elif kind == "dense":
                x = torch.nn.functional.linear(x, a, b)
            else:
                x = a(x)
        return x

    def state_bytes(self) -> int:
        total = 0
        for kind, a, b in self.steps:
            if kind == "csr":
                total += sum(t.numel() * t.element_size() for t in (a.values(), a.crow_indices(), a.col_indices()))
                total += b.numel() * b.element_size()
            elif kind == "dense":
                total += (a.numel() + b.numel()) * a.element_size()
        return total


def median_time(fn, round_seconds: float, repeats: int) -> tuple[float, float]:
    """(median, spread = (max - min) / median) of seconds per call over ``repeats`` rounds."""
    fn()
    started, calls = time.perf_counter(), 0
    while time.perf_counter() - started < round_seconds / 4 or calls < 1:
        fn()
        calls += 1
    per_call = (time.perf_counter() - started) / calls
    number = max(1, int(round_seconds / max(per_call, 1e-9)))
    rounds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        rounds.append((time.perf_counter() - t0) / number)
    med = statistics.median(rounds)
    return med, (max(rounds) - min(rounds)) / med


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


def headline(args) -> None:
    rows = []
    x = torch.randn(4000, 48)
    torch.manual_seed(0)
    parent = nn.Sequential(nn.Linear(48, 8), nn.ReLU(), nn.Linear(8, 1))
    clauses = [list(range(i, i + 3)) for i in range(0, 24, 3)]
    for split in ("random", "clause", "contiguous"):
        masked = torchfpe.expand(parent, 2, split, seed=0, clauses=clauses if split == "clause" else None)
        packed = torchfpe.pack(masked)
        row = {"split": split, "packed_layouts": [l.layout for _, l in torchfpe.core.expanded_layers(packed)],
               "seconds": {}}
        for name, model in (("dense", parent), ("masked", masked), ("packed", packed)):
            row["seconds"][name] = median_time(train_fn(model, x), args.round, args.repeats)[0]
        row["ratio_to_masked"] = {k: round(v / row["seconds"]["masked"], 3) for k, v in row["seconds"].items()}
        rows.append(row)
        print(row, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                             "torch": torch.__version__, "threads": args.threads},
                                    "rows": rows}, indent=1))


def table(path: Path) -> None:
    """Print the markdown table of docs/benchmarks.md from a result file."""
    data = json.loads(path.read_text())
    print("| hidden layers | width | α | split | packed layouts | batch | fwd masked | fwd CSR | fwd packed "
          "| fwd+bwd masked | fwd+bwd packed | bytes masked | bytes CSR | bytes packed |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in data["rows"]:
        r, b = row["ratio_to_dense"], row["bytes_ratio"]
        layouts = "+".join(sorted(set(row["packed_layouts"]), key=row["packed_layouts"].index))
        print(f"| {row['hidden_layers']} | {row['width']} | {row['alpha']} | {row['split']} | {layouts} | "
              f"{row['batch']} | {r['forward/masked']:.2f} | {r['forward/csr']:.2f} | **{r['forward/packed']:.2f}** | "
              f"{r['forward_backward/masked']:.2f} | **{r['forward_backward/packed']:.2f}** | {b['masked']:.2f} | "
              f"{b['csr']:.2f} | **{b['packed']:.2f}** |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small grid for a shared 2-core machine")
    parser.add_argument("--widths", type=int, nargs="*")
    parser.add_argument("--alphas", type=int, nargs="*")
    parser.add_argument("--depths", type=int, nargs="*")
    parser.add_argument("--splits", nargs="*")
    parser.add_argument("--batches", type=int, nargs="*")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--round", type=float, default=0.2, help="seconds per timing round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-width-deep", type=int, default=1024,
                        help="skip 3-hidden-layer models wider than this (memory and time of the masked model)")
    parser.add_argument("--smoke", action="store_true", help="a tiny grid, one short round, to check the script; "
                        "needs --out")
    parser.add_argument("--out", type=Path, help="JSON result file (default bench/results/packed.json)")
    parser.add_argument("--headline", action="store_true", help="time the Boolean headline's training shapes")
    parser.add_argument("--table", type=Path, help="print the markdown table of a result file and exit")
    args = parser.parse_args()
    if args.smoke and args.out is None:
        parser.error("--smoke needs --out, so that a smoke run never replaces a result in bench/results/")
    if args.smoke:
        args.repeats, args.round = 1, 0.01
    args.out = args.out or Path("bench/results/packed.json")
    if args.table:
        return table(args.table)
    if args.headline:
        torch.set_num_threads(args.threads)
        return headline(args)
    grid = dict(SMOKE if args.smoke else QUICK if args.quick else FULL)
    for key in grid:
        if getattr(args, key) is not None:
            grid[key] = getattr(args, key)
    torch.set_num_threads(args.threads)
    rows = []
    for width, depth, alpha, split in itertools.product(grid["widths"], grid["depths"], grid["alphas"], grid["splits"]):
        if depth > 1 and width > args.max_width_deep:
            continue
        parent = mlp(width, depth)
        kwargs = {}
        if split == "clause":  # a clause map of 4-input clauses over the first layer's inputs
            kwargs = dict(clauses=[list(range(i, min(i + 4, width))) for i in range(0, width, 4)], layers=["0"])
        t0 = time.perf_counter()
        masked = torchfpe.expand(parent, alpha, split, seed=0, **kwargs)
        packed = torchfpe.pack(masked)
        setup = time.perf_counter() - t0
        csr = CsrMLP(masked)
        layouts = [layer.layout for _, layer in torchfpe.core.expanded_layers(packed)]
        base = {"width": width, "hidden_layers": depth, "alpha": alpha, "split": split, "packed_layouts": layouts,
                "setup_seconds": round(setup, 2),
                "bytes": {"dense": stored_bytes(parent), "masked": stored_bytes(masked), "csr": csr.state_bytes(),
                          "packed": stored_bytes(packed)},
                "nonzero": {"dense": torchfpe.nonzero_parameters(parent), "packed": torchfpe.nonzero_parameters(packed)}}
        for batch in grid["batches"]:
            x = torch.randn(batch, width)
            row = {**base, "batch": batch, "seconds": {}, "spread": {}}
            for mode, make in (("forward", forward_fn), ("forward_backward", train_fn)):
                for name, model in (("dense", parent), ("masked", masked), ("csr", csr), ("packed", packed)):
                    if name == "csr" and mode == "forward_backward":
                        continue
                    seconds, spread = median_time(make(model, x), args.round, args.repeats)
                    row["seconds"][f"{mode}/{name}"] = seconds
                    row["spread"][f"{mode}/{name}"] = round(spread, 3)
            row["ratio_to_dense"] = {key: round(value / row["seconds"][key.split("/")[0] + "/dense"], 3)
                                     for key, value in row["seconds"].items()}
            row["bytes_ratio"] = {k: round(v / base["bytes"]["dense"], 3) for k, v in base["bytes"].items()}
            rows.append(row)
            print(f"w={width} L={depth} a={alpha} {split:13s} b={batch:3d} layouts={','.join(layouts)} "
                  + " ".join(f"{k}={v:.2f}" for k, v in row["ratio_to_dense"].items())
                  + f" bytes={row['bytes_ratio']['packed']:.2f}", flush=True)
        del masked, packed, csr
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
            "machine": platform.machine(), "processor": platform.processor(), "threads": args.threads,
            "cpu_count": __import__("os").cpu_count(), "grid": grid, "repeats": args.repeats, "round": args.round,
            "smoke": args.smoke}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
