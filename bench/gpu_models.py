"""The GPU path in one command: packed layouts against the dense parent, training steps, two studies.

Prepared to run on a CUDA machine in under 8 minutes and write one JSON file:

    .venv/bin/python bench/gpu_models.py --out bench/results/gpu_models.json                 # --device cuda
    .venv/bin/python bench/gpu_models.py --smoke --device cpu --out /tmp/gpu_models_smoke.json   # seconds, on any machine

What it measures (each time the median of ``--repeats`` rounds, synchronised, after a warm-up):

- ``layers``: MLPs ``width -> width -> 10`` at width 4096 and 8192, alpha 4, the default ``random``
  split (``parent`` layout) and ``contiguous`` (``block`` layout), float32 and bfloat16: forward at
  batch 1 and 256 without gradients, forward + backward at batch 256; the dense parent, the masked
  reference and the packed model on the device, with the bytes ratio (the physical limit);
- ``training``: one Adam step (forward, backward, update) at batch 256 of the packed and masked
  models against the parent's;
- ``studies``: the Boolean headline (``torchfpe reproduce boolean``, 20 seeds) and one heads study
  (``reproduce heads --study width`` on the built-in synthetic-100 embeddings, a stand-in) on the
  device, each with its wall time; the headline is run on the CPU too, and the JSON gives how far
  each record's test accuracy on the device is from the CPU's (``headline_vs_cpu``).

The expansions are built on the CPU (``expand`` and ``pack`` are set-up, not timed) and moved.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

import torchfpe
from torchfpe.core.layouts import stored_bytes
from torchfpe.core.validation import InvalidParameterError
from torchfpe.lab.devices import resolve_device

FULL = dict(widths=[4096, 8192], alphas=[4], splits=["random", "contiguous"], dtypes=["float32", "bfloat16"],
            batches=[1, 256], seeds=20)
SMOKE = dict(widths=[64], alphas=[2], splits=["random", "contiguous"], dtypes=["float32", "bfloat16"],
             batches=[1, 8], seeds=2)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
#: The smoke run's studies: tiny configs that train in seconds on a CPU.
SMOKE_BOOLEAN = {"n_vars": 12, "clauses": 3, "literals": 2, "train_size": 64, "test_size": 64, "warmup_epochs": 3,
                 "epochs_after": 3}
SMOKE_HEADS = {"neurons": [4], "alpha": [2], "variants": "dense+random", "warmup_epochs": 2, "epochs_after": 2}


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def median_seconds(fn, device: torch.device, repeats: int, round_seconds: float) -> tuple[float, float]:
    """(median seconds per call, spread) over ``repeats`` rounds of about ``round_seconds`` each."""
    fn()
    synchronise(device)
    t0, calls = time.perf_counter(), 0
    while time.perf_counter() - t0 < round_seconds / 4 or calls < 1:
        fn()
        calls += 1
    synchronise(device)
    number = max(1, int(round_seconds / max((time.perf_counter() - t0) / calls, 1e-9)))
    rounds = []
    for _ in range(repeats):
        synchronise(device)
        start = time.perf_counter()
        for _ in range(number):
            fn()
        synchronise(device)
        rounds.append((time.perf_counter() - start) / number)
    median = statistics.median(rounds)
    return median, (max(rounds) - min(rounds)) / median


def mlp(width: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))


def layer_rows(grid: dict, device: torch.device, args) -> list[dict]:
    rows = []
    for width in grid["widths"]:
        for alpha in grid["alphas"]:
            for split in grid["splits"]:
                parent_cpu = mlp(width)
                masked_cpu = torchfpe.expand(parent_cpu, alpha, split, seed=0)
                packed_cpu = torchfpe.pack(masked_cpu)
                layouts = [layer.layout for _, layer in torchfpe.core.expanded_layers(packed_cpu)]
                bytes_ratio = round(stored_bytes(packed_cpu) / stored_bytes(parent_cpu), 3)
                for dtype_name in grid["dtypes"]:
                    dtype = DTYPES[dtype_name]
                    models = {name: copy.deepcopy(model).to(device=device, dtype=dtype) for name, model in
                              (("dense", parent_cpu), ("masked", masked_cpu), ("packed", packed_cpu))}
                    for batch in grid["batches"]:
                        x = torch.randn(batch, width, device=device, dtype=dtype)
                        row = {"width": width, "alpha": alpha, "split": split, "dtype": dtype_name, "batch": batch,
                               "packed_layouts": layouts, "bytes_ratio": bytes_ratio, "seconds": {}, "spread": {}}
                        for name, model in models.items():
                            def forward(model=model):
                                with torch.no_grad():
                                    model(x)
                            row["seconds"][f"forward/{name}"], row["spread"][f"forward/{name}"] = median_seconds(
                                forward, device, args.repeats, args.round)
                            if batch == max(grid["batches"]):
                                params = list(model.parameters())

                                def train(model=model, params=params):
                                    for p in params:
                                        p.grad = None
                                    model(x).float().sum().backward()
                                key = f"forward_backward/{name}"
                                row["seconds"][key], row["spread"][key] = median_seconds(train, device, args.repeats,
                                                                                         args.round)
                        row["ratio_to_dense"] = {k: round(v / row["seconds"][k.split("/")[0] + "/dense"], 3)
                                                 for k, v in row["seconds"].items()}
                        rows.append(row)
                        print(f"layers w={width} a={alpha} {split} {dtype_name} b={batch} "
                              f"{ {k: v for k, v in row['ratio_to_dense'].items() if not k.endswith('dense')} }",
                              flush=True)
                    del models
                del parent_cpu, masked_cpu, packed_cpu
    return rows


def training_rows(grid: dict, device: torch.device, args) -> list[dict]:
    """One Adam step at the largest batch: packed and masked against the parent (float32)."""
    rows = []
    width, alpha, batch = grid["widths"][0], grid["alphas"][0], max(grid["batches"])
    for split in grid["splits"]:
        parent_cpu = mlp(width)
        masked_cpu = torchfpe.expand(parent_cpu, alpha, split, seed=0)
        models = {"dense": parent_cpu, "masked": masked_cpu, "packed": torchfpe.pack(masked_cpu)}
        x = torch.randn(batch, width, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        row = {"width": width, "alpha": alpha, "split": split, "batch": batch, "seconds": {}}
        for name, model_cpu in models.items():
            model = copy.deepcopy(model_cpu).to(device)
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

            def step(model=model, optimizer=optimizer):
                optimizer.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()
            row["seconds"][name] = median_seconds(step, device, args.repeats, args.round)[0]
        row["ratio_to_dense"] = {k: round(v / row["seconds"]["dense"], 3) for k, v in row["seconds"].items()}
        rows.append(row)
        print(f"training {split} {row['ratio_to_dense']}", flush=True)
    return rows


def study_rows(grid: dict, device: torch.device, args) -> dict:
    from torchfpe.lab import api

    folder = Path(tempfile.mkdtemp(prefix="torchfpe-gpu-"))
    try:
        boolean = SMOKE_BOOLEAN if args.smoke else {}
        heads = {"embeddings": "synthetic-100", **(SMOKE_HEADS if args.smoke else {"neurons": [4, 16], "alpha": [2, 4],
                                                                                    "variants": "dense+random+feature"})}
        out: dict = {}
        for name, device_name in (("headline", str(device)), ("headline_cpu", "cpu")):
            started = time.perf_counter()
            api.run_study("boolean", "headline", seeds=grid["seeds"], overrides=boolean, out=folder / name,
                          backend="local" if device_name != "cpu" or args.smoke else "process", quiet=True,
                          device=device_name)
            out[name] = {"seconds": round(time.perf_counter() - started, 1), "records": _records(folder / name)}
            print(f"study {name} on {device_name}: {out[name]['seconds']} s", flush=True)
        started = time.perf_counter()
        api.run_study("heads", "width", seeds=1 if args.smoke else 3, overrides=heads, out=folder / "heads",
                      backend="local", quiet=True, device=str(device))
        out["heads"] = {"seconds": round(time.perf_counter() - started, 1), "records": _records(folder / "heads")}
        print(f"study heads on {device}: {out['heads']['seconds']} s", flush=True)
        out["headline_vs_cpu"] = _compare(out["headline"]["records"], out["headline_cpu"]["records"])
        for entry in ("headline", "headline_cpu", "heads"):
            out[entry]["mean_test_accuracy"] = _means(out[entry]["records"])
            del out[entry]["records"]
        return out
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _records(folder: Path) -> list[dict]:
    import csv

    with open(folder / "records.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _means(records: list[dict]) -> dict:
    groups: dict[str, list[float]] = {}
    for record in records:
        label = "/".join(str(record.get(k, "")) for k in ("variant", "neurons", "alpha"))
        groups.setdefault(label, []).append(float(record["test_accuracy"]))
    return {label: round(statistics.mean(values), 4) for label, values in groups.items()}


def _compare(device_records: list[dict], cpu_records: list[dict]) -> dict:
    """Per record (variant, seed): the test accuracy on the device minus on the CPU."""
    cpu = {(r["variant"], r["seed"]): float(r["test_accuracy"]) for r in cpu_records}
    differences = [float(r["test_accuracy"]) - cpu[(r["variant"], r["seed"])] for r in device_records
                   if (r["variant"], r["seed"]) in cpu]
    per_variant: dict[str, list[float]] = {}
    for r in device_records:
        if (r["variant"], r["seed"]) in cpu:
            per_variant.setdefault(r["variant"], []).append(float(r["test_accuracy"]) - cpu[(r["variant"], r["seed"])])
    return {"records": len(differences), "max_abs_difference": round(max(map(abs, differences)), 4) if differences else None,
            "mean_difference": {v: round(statistics.mean(d), 4) for v, d in per_variant.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", help="where to measure (default cuda; a --smoke run defaults to cpu)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--round", type=float, default=0.2, help="seconds per timing round")
    parser.add_argument("--skip-studies", action="store_true", help="only the layers and training steps")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes and studies, to check the script; needs --out")
    parser.add_argument("--out", type=Path, help="JSON result file (default bench/results/gpu_models.json)")
    args = parser.parse_args()
    if args.smoke and args.out is None:
        parser.error("--smoke needs --out, so that a smoke run never replaces a result in bench/results/")
    try:
        device = resolve_device(args.device or ("cpu" if args.smoke else "cuda"), "bench/gpu_models.py")
    except InvalidParameterError as error:
        parser.exit(2, f"error: {error}\n")
    if args.smoke:
        args.repeats, args.round = 2, 0.01
    grid = SMOKE if args.smoke else FULL
    started = time.perf_counter()
    result = {"layers": layer_rows(grid, device, args), "training": training_rows(grid, device, args)}
    if not args.skip_studies:
        result["studies"] = study_rows(grid, device, args)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    result["meta"] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
                      "device": str(device), "device_name": name, "python": sys.version.split()[0], "grid": grid,
                      "repeats": args.repeats, "round": args.round, "smoke": args.smoke,
                      "seconds": round(time.perf_counter() - started, 1)}
    out = args.out or Path("bench/results/gpu_models.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out} ({result['meta']['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
