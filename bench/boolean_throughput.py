"""Runs per hour on the Boolean headline config: one model at a time vs batched vs batched + process pool.

One *run* is one seed of the headline config with its three variants (dense, FPE random, FPE clause):
2000 epochs of the dense model plus 1000 epochs of each expanded model. All three ways are timed
side by side in one invocation, on the same seeds, and their ratios reported; the records of the
three ways are compared too (same seeds must give the same accuracies up to float rounding).

    .venv/bin/python bench/boolean_throughput.py --seeds 10 --out bench/results/boolean_throughput.json
    .venv/bin/python bench/boolean_throughput.py --smoke --out /tmp/smoke.json   # seconds: tiny configs, 1 worker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from torchfpe.lab.experiments.boolean import EXPERIMENT as BOOLEAN
from torchfpe.lab.sweep import ResultStore, execute, make_jobs


#: --smoke: a config small enough that the three ways take about a second (checks the script, not speed).
SMOKE = dict(n_vars=12, clauses=3, literals=2, train_size=64, test_size=64, warmup_epochs=5, epochs_after=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field (e.g. epochs for a quick check)")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny run (2 seeds of a tiny config, 1 worker) to check the script; needs --out")
    parser.add_argument("--out", type=Path, help="JSON result file (default bench/results/boolean_throughput.json)")
    args = parser.parse_args()
    if args.smoke and args.out is None:
        parser.error("--smoke needs --out, so that a smoke run never replaces a result in bench/results/")
    args.out = args.out or Path("bench/results/boolean_throughput.json")
    overrides = dict(SMOKE) if args.smoke else {}
    if args.smoke:
        args.seeds, args.workers = 2, 1
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value) if value[:1] in "-0123456789[{tn" else value
    configs = [BOOLEAN.make_config(**overrides, seed=seed) for seed in range(args.seeds)]

    torch.set_num_threads(1)
    results = {}

    started = time.perf_counter()
    single = [r for config in configs for r in BOOLEAN.run_single(config)]
    results["one_model_at_a_time"] = time.perf_counter() - started
    print(f"one model at a time      {results['one_model_at_a_time']:7.1f} s", flush=True)

    started = time.perf_counter()
    batched = BOOLEAN.run_batch(configs)
    results["batched"] = time.perf_counter() - started
    print(f"batched (1 process)      {results['batched']:7.1f} s", flush=True)

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        execute(make_jobs("boolean", [c.to_dict() for c in configs]), ResultStore(folder), backend="process",
                workers=args.workers, quiet=True)
        results["batched_process_pool"] = time.perf_counter() - started
        pooled = ResultStore(folder).records()
    print(f"batched + {args.workers} processes   {results['batched_process_pool']:7.1f} s", flush=True)

    def accuracies(records):
        return {(r["variant"], r["seed"]): r["test_accuracy"] for r in records}

    reference = accuracies(single)
    max_difference = {
        name: max(abs(reference[k] - v) for k, v in accuracies(records).items())
        for name, records in (("batched", batched), ("batched_process_pool", pooled))
    }
    report = {
        "benchmark": "boolean_throughput",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch": torch.__version__, "threads_per_process": 1},
        "config": configs[0].to_dict() | {"seed": f"0..{args.seeds - 1}"},
        "runs": args.seeds,
        "smoke": args.smoke,
        "seconds": results,
        "runs_per_hour": {name: 3600 * args.seeds / seconds for name, seconds in results.items()},
        "speedup_vs_one_model": {name: results["one_model_at_a_time"] / s for name, s in results.items()},
        "max_test_accuracy_difference_vs_one_model": max_difference,
        "mean_test_accuracy": {
            name: {v: sum(a for (variant, _), a in accuracies(records).items() if variant == v) / args.seeds
                   for v in configs[0].variants}
            for name, records in (("one_model_at_a_time", single), ("batched", batched),
                                  ("batched_process_pool", pooled))
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    for name in results:
        print(f"{name:24s} {report['runs_per_hour'][name]:8.0f} runs/h  x{report['speedup_vs_one_model'][name]:.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
