"""What a training step of the byte-level LMs costs, dense and expanded, and what the LM studies cost from it.

For each model size, with one thread: the seconds of one optimizer step (forward, backward, Adam) of
the dense model, of its FPE expansion in the masked layout (``random``, the studies' layout) and of
the ``grouped`` expansion packed as dense blocks (``torchfpe.pack``, the parent's cost), timed back to
back in one process; then the CPU seconds of one run of the ``width`` study's variants at that size
(T1 + T2 dense steps, three T2 expansions, a T1 + T2 static-sparse control; evaluation not counted).

    .venv/bin/python bench/lm_steps.py --out bench/results/lm_steps.json
    .venv/bin/python bench/lm_steps.py --smoke --out /tmp/smoke.json   # seconds: one tiny model
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import torchfpe
from torchfpe.lab.experiments import lm

#: name -> (arch, d_model, layers, heads, d_ff, context, batch windows)
SIZES = {
    "default": ("gpt2", 64, 2, 2, 256, 64, 32),
    "default-llama": ("llama", 64, 2, 2, 256, 64, 32),
    "x2": ("gpt2", 128, 4, 4, 512, 128, 32),
    "x4": ("gpt2", 256, 4, 4, 1024, 256, 32),
}
SMOKE = {"tiny": ("gpt2", 16, 1, 2, 16, 16, 4)}


def step_seconds(model, windows: torch.Tensor, steps: int) -> float:
    """Best of three rounds of ``steps`` Adam steps, seconds per step."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step():
        optimizer.zero_grad(set_to_none=True)
        lm.windows_loss(model, windows).backward()
        optimizer.step()

    step()
    rounds = []
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(steps):
            step()
        rounds.append((time.perf_counter() - started) / steps)
    return min(rounds)


def measure(name: str, size: tuple, steps: int, warmup: int, after: int) -> dict:
    arch, d_model, layers, heads, d_ff, context, batch = size
    parent = lm.build_lm(arch, d_model, layers, heads, d_ff, context, seed=0)
    pairs = [list(entry) for entry in lm.ffn_pairs(arch, layers)]
    masked = torchfpe.expand(parent, 2, "random", pairs=pairs, seed=0)
    packed = torchfpe.pack(torchfpe.expand(parent, 2, "grouped", pairs=pairs, seed=0, budget="structured"), "block")
    windows = torch.randint(0, 256, (batch, context + 1), generator=torch.Generator().manual_seed(0))
    seconds = {label: step_seconds(model, windows, steps)
               for label, model in (("dense", parent), ("fpe_masked", masked), ("fpe_packed_block", packed))}
    run = (warmup + after) * seconds["dense"] + 3 * after * seconds["fpe_masked"] + (warmup + after) * seconds["fpe_masked"]
    return {"name": name, "arch": arch, "d_model": d_model, "layers": layers, "heads": heads, "d_ff": d_ff,
            "context": context, "batch": batch, "parameters": sum(p.numel() for p in parent.parameters()),
            "tokens_per_step": batch * context, "step_seconds": seconds,
            "ratio_to_dense": {k: v / seconds["dense"] for k, v in seconds.items()},
            "width_run_cpu_seconds": run}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="steps per timing round")
    parser.add_argument("--warmup-steps", type=int, default=300, help="T1 of the run whose cost is estimated")
    parser.add_argument("--steps-after", type=int, default=300, help="T2 of the run whose cost is estimated")
    parser.add_argument("--smoke", action="store_true", help="one tiny model, one step a round; needs --out")
    parser.add_argument("--out", type=Path, help="JSON result file (default bench/results/lm_steps.json)")
    args = parser.parse_args()
    if args.smoke and args.out is None:
        parser.error("--smoke needs --out, so that a smoke run never replaces a result in bench/results/")
    sizes, steps = (SMOKE, 1) if args.smoke else (SIZES, args.steps)
    args.out = args.out or Path("bench/results/lm_steps.json")
    torch.set_num_threads(1)
    rows = [measure(name, size, steps, args.warmup_steps, args.steps_after) for name, size in sizes.items()]
    report = {
        "benchmark": "lm_steps",
        "meta": {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
                 "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                 "threads": torch.get_num_threads(), "steps_per_round": steps, "smoke": args.smoke,
                 "warmup_steps": args.warmup_steps, "steps_after": args.steps_after},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for row in rows:
        ratio = row["ratio_to_dense"]
        print(f"{row['name']:>14}: {row['parameters']:>9} params, dense {1000 * row['step_seconds']['dense']:.0f} ms/step, "
              f"FPE masked ×{ratio['fpe_masked']:.2f}, packed blocks ×{ratio['fpe_packed_block']:.2f}; a width-study run "
              f"≈ {row['width_run_cpu_seconds']:.0f} CPU s")


if __name__ == "__main__":
    main()
