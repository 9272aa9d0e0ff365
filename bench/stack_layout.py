"""Where a stacked training step spends its time, on the Boolean headline shapes.

Measures, with one thread: the first layer's batched product in the two layouts (examples × units,
``x @ Wᵀ``, and units × examples, ``W @ xᵀ``, the one :class:`torchfpe.lab.batched.StackedMLP` uses),
their GFLOP/s, the time of one full stacked step, and the share of that step spent in matrix
products (torch.profiler).

    .venv/bin/python bench/stack_layout.py --out bench/results/stack_layout.json
    .venv/bin/python bench/stack_layout.py --smoke --out /tmp/smoke.json   # a second: 2 tiny models
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from torchfpe.lab.batched import StackedMLP, fit_stacked
from torchfpe.lab.train import TrainSettings


def best_of(fn, repeats: int = 5, number: int = 20) -> float:
    """Best mean seconds per call over ``repeats`` rounds of ``number`` calls (least noisy)."""
    fn()
    rounds = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(number):
            fn()
        rounds.append((time.perf_counter() - started) / number)
    return min(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--examples", type=int, default=4000)
    parser.add_argument("--inputs", type=int, default=48)
    parser.add_argument("--units", type=int, default=8)
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny run (2 models, 64 examples, 8 inputs, 4 units) to check the script; needs --out")
    parser.add_argument("--out", type=Path, help="JSON result file (default bench/results/stack_layout.json)")
    args = parser.parse_args()
    if args.smoke and args.out is None:
        parser.error("--smoke needs --out, so that a smoke run never replaces a result in bench/results/")
    if args.smoke:
        args.models, args.examples, args.inputs, args.units = 2, 64, 8, 4
    args.out = args.out or Path("bench/results/stack_layout.json")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    b, n, d, h = args.models, args.examples, args.inputs, args.units
    x = torch.randn(b, n, d).sign()
    x_t = x.transpose(1, 2).contiguous()
    weight = torch.randn(b, h, d)
    flops = 2 * b * n * d * h

    examples_by_units = best_of(lambda: torch.bmm(x, weight.transpose(1, 2)))
    units_by_examples = best_of(lambda: torch.bmm(weight, x_t))

    models = [nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, 1)) for _ in range(b)]
    stack = StackedMLP(models)
    y = (torch.rand(b, n) > 0.5).float()
    settings = TrainSettings()
    optimizer = fit_stacked(stack, x, y, 5, settings)
    epochs = 20  # one call trains 20 full-batch steps, so the per-call setup is amortised
    step = best_of(lambda: fit_stacked(stack, x, y, epochs, settings, optimizer=optimizer), repeats=3, number=1) / epochs
    with torch.profiler.profile() as profile:
        fit_stacked(stack, x, y, 20, settings, optimizer=optimizer)
    events = profile.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    products = sum(e.self_cpu_time_total for e in events if e.key in ("aten::bmm", "aten::baddbmm", "aten::mm"))

    report = {
        "benchmark": "stack_layout",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": 1},
        "smoke": args.smoke,
        "shape": {"models": b, "examples": n, "inputs": d, "units": h},
        "first_layer_ms": {"examples_by_units": 1e3 * examples_by_units, "units_by_examples": 1e3 * units_by_examples},
        "first_layer_gflops": {"examples_by_units": flops / examples_by_units / 1e9,
                               "units_by_examples": flops / units_by_examples / 1e9},
        "layout_speedup": examples_by_units / units_by_examples,
        "stacked_step_ms": 1e3 * step,
        "stacked_step_ms_per_model": 1e3 * step / b,
        "matrix_product_share_of_step": products / total,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
