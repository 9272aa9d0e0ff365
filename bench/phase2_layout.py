"""Which layout phase 2 of the protocol should train in: one optimizer step, masked against packed.

For the shapes the studies train one model at a time (the LM, the CNN, the heads and deep MLPs when
they do not stack, the Boolean MLP on its reference path), with one thread: seconds of one training
step (forward, backward, Adam) of the expanded model in the masked layout and packed by
``torchfpe.pack(model)`` (``auto``), timed back to back in alternating rounds (best round kept, so
a busy machine disturbs both alike). ``--layout auto``'s rule is decided from it
(:mod:`torchfpe.lab.train_layout`, where the table is).

    .venv/bin/python bench/phase2_layout.py --out bench/results/phase2_layout.json
    .venv/bin/python bench/phase2_layout.py --smoke --out /tmp/smoke.json   # seconds: tiny shapes
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import torchfpe
from torchfpe.lab.experiments import cnn, lm


def mlp(widths: list[int]) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(widths, widths[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def classifier_case(model: nn.Module, examples: int, features, classes: int, layers=None):
    """Cross-entropy over ``classes`` logits (the Boolean MLP's one logit stands as two)."""
    x = torch.randn(examples, *features, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, classes, (examples,), generator=torch.Generator().manual_seed(2))
    kwargs = {"layers": layers} if layers else {}
    return model, kwargs, lambda m: F.cross_entropy(m(x), y)


def lm_case(d_ff: int, batch: int = 32, context: int = 64):
    model = lm.build_lm("gpt2", 64, 2, 2, d_ff, context, seed=0)
    windows = torch.randint(0, 256, (batch, context + 1), generator=torch.Generator().manual_seed(0))
    pairs = [list(entry) for entry in lm.ffn_pairs("gpt2", 2)]
    return model, {"pairs": pairs}, lambda m: lm.windows_loss(m, windows)


#: name -> builder of (parent, expand's arguments, loss of a model); each is timed at every VARIANT
CASES = {
    "boolean 48-8-2, 4000 full batch": lambda: classifier_case(mlp([48, 8, 2]), 4000, (48,), 2),
    "heads 1280-32-10, batch 2048": lambda: classifier_case(mlp([1280, 32, 10]), 2048, (1280,), 10),
    "heads 1280-4-10, batch 2048": lambda: classifier_case(mlp([1280, 4, 10]), 2048, (1280,), 10),
    "deep 1280-16x4-62, batch 256": lambda: classifier_case(mlp([1280, 16, 16, 16, 16, 62]), 256, (1280,), 62),
    "cnn head 256-32-10, batch 128": lambda: classifier_case(cnn.cnn(32, 0, "float32"), 128, (1, 28, 28), 10,
                                                            ["head.0"]),
    "lm gpt2 d_ff=16": lambda: lm_case(16),
    "lm gpt2 d_ff=256": lambda: lm_case(256),
}
#: (alpha, split, budget): the studies' splits; the structured budget is what packs as blocks only
VARIANTS = ((2, "random", "global"), (4, "random", "global"), (2, "grouped", "global"), (2, "grouped", "structured"),
            (4, "grouped", "structured"))
SMOKE = {"boolean 48-8-2, 4000 full batch": lambda: classifier_case(mlp([48, 8, 2]), 64, (48,), 2)}


def step_seconds(model: nn.Module, loss, steps: int) -> float:
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def run() -> float:
        started = time.perf_counter()
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss(model).backward()
            optimizer.step()
        return (time.perf_counter() - started) / steps

    run()
    return run


def measure(name: str, case, alpha: int, split: str, budget: str, steps: int, rounds: int) -> dict:
    parent, kwargs, loss = case()
    masked = torchfpe.expand(parent, alpha, split, seed=0, budget=budget, **kwargs)
    packed = torchfpe.pack(masked)
    layouts = sorted({type(layer).__name__ for _, layer in torchfpe.core.layouts.expanded_layers(packed)})
    timers = {"masked": step_seconds(masked, loss, steps), "packed": step_seconds(packed, loss, steps)}
    best = {label: float("inf") for label in timers}
    for _ in range(rounds):  # alternating rounds: a load spike hits both layouts alike
        for label, timer in timers.items():
            best[label] = min(best[label], timer())
    return {"case": name, "alpha": alpha, "split": split, "budget": budget, "packed_as": layouts,
            "step_ms": {k: 1000 * v for k, v in best.items()}, "packed_over_masked": best["packed"] / best["masked"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="steps per timing round")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds (best kept)")
    parser.add_argument("--smoke", action="store_true", help="one tiny case, one step a round; needs --out")
    parser.add_argument("--out", type=Path, help="JSON result file (default bench/results/phase2_layout.json)")
    parser.add_argument("--cases", help="only the cases whose name contains this text")
    args = parser.parse_args()
    if args.smoke and args.out is None:
        parser.error("--smoke needs --out, so that a smoke run never replaces a result in bench/results/")
    cases, steps, rounds = (SMOKE, 1, 1) if args.smoke else (CASES, args.steps, args.rounds)
    cases = {name: case for name, case in cases.items() if args.cases is None or args.cases in name}
    args.out = args.out or Path("bench/results/phase2_layout.json")
    torch.set_num_threads(1)
    rows = []
    for name, case in cases.items():
        for alpha, split, budget in VARIANTS:
            row = measure(name, case, alpha, split, budget, steps, rounds)
            rows.append(row)
            print(f"{name:>34} α={alpha} {split}@{budget} ({'+'.join(row['packed_as'])}): masked "
                  f"{row['step_ms']['masked']:.2f} ms, packed {row['step_ms']['packed']:.2f} ms, "
                  f"×{row['packed_over_masked']:.2f}", flush=True)
    report = {"benchmark": "phase2_layout",
              "meta": {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
                       "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                       "threads": torch.get_num_threads(), "steps_per_round": steps, "rounds": rounds,
                       "smoke": args.smoke},
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
