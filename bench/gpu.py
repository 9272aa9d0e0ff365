"""The packed layouts' Triton kernels against cuBLAS on one GPU: exactness, time and bandwidth.

One command on a CUDA machine (prepared to finish in under 6 minutes on an H100):

    python bench/gpu.py --out bench/results/gpu.json
    python bench/gpu.py --smoke --out /tmp/gpu_smoke.json    # any machine: tiny shapes; on a CPU the
                                                             # kernels run under TRITON_INTERPRET=1

For each parent ``nn.Linear(in, out)`` of the grid, expanded by ``alpha`` (the layer whose hidden
neurons split), it builds on the CPU (set-up, not timed): the ``random`` split as the masked
reference and as the ``parent`` layout, the ``contiguous`` split as the ``block`` layout; then on
the device, in float32 and bfloat16:

- ``checks``: the Triton output, input gradient and value gradient against the masked layer's, and
  the outputs of both against a float64 cuBLAS product of the same expanded weights (the truth):
  ``ok`` where the kernel's error is within twice cuBLAS's own (masked layer's) or a small floor;
- ``rows``: forward time without gradients at each batch of ``dense`` (the parent ``nn.Linear``,
  cuBLAS), ``masked`` (the reference, alpha times the parent's weights), ``block`` and ``parent``
  (Triton), ``block_torch`` (the block layout's batched cuBLAS product, kernels off); forward +
  backward (``train/...``) at the batches in ``train_batches``. ``ms`` is
  ``triton.testing.do_bench``'s median (the L2 cache cleared before each call: GPU time, weights
  read from memory), ``loop_ms`` a loop of back-to-back calls (host overhead included, L2 warm:
  what an eager Python loop sees at batch 1). With each: the bytes the variant must move (its
  stored tensors once, the input and the output), the bandwidth that makes at ``ms`` and its share
  of the device's peak, and the parent's useful FLOP/s.

The peak is the device's datasheet bandwidth where its name is in :data:`PEAKS`, else the measured
bandwidth of a large device-to-device copy (both are in the JSON). float32 products are IEEE
(``torch.backends.cuda.matmul.allow_tf32`` off, so cuBLAS is too). The run stops adding
configurations after ``--budget`` seconds and lists the ones it skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

FULL = dict(shapes=[[1024, 4096, 2], [1024, 4096, 4], [4096, 4096, 4]], dtypes=["float32", "bfloat16"],
            batches=[1, 16, 256, 4096], train_batches=[256, 4096], check_batch=256)
SMOKE = dict(shapes=[[16, 8, 2], [16, 8, 4]], dtypes=["float32", "bfloat16"], batches=[1, 16],
             train_batches=[16], check_batch=3)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
#: Datasheet memory bandwidth (GB/s) by device name: every listed word must be in the name.
PEAKS = [(("H200",), 4800.0), (("H100", "NVL"), 3900.0), (("H100", "PCIe"), 2000.0), (("H100",), 3350.0),
         (("GH200",), 4000.0), (("A100", "PCIE", "40GB"), 1555.0), (("A100", "PCIe"), 1935.0),
         (("A100", "40GB"), 1555.0), (("A100",), 2039.0), (("L40S",), 864.0), (("A10G",), 600.0)]
#: Error floors for ``ok`` (relative to the largest output): below these, differences are rounding.
FLOORS = {"float32": 1e-5, "bfloat16": 1e-2}


# ------------------------------------------------------------------------------------------ setup
def kernels_module(interpret: bool):
    """``torchfpe.core.kernels``, with the CPU added to its devices when interpreting; ``None``
    when Triton is not installed."""
    from torchfpe.core import kernels

    if interpret:
        kernels.DEVICES = ("cuda", "cpu")
    return kernels if kernels.available() else None


@contextlib.contextmanager
def torch_path(kernels):
    """The layers' own torch paths (the kernels off) inside the block."""
    saved = kernels.DEVICES if kernels is not None else None
    if kernels is not None:
        kernels.DEVICES = ()
    try:
        yield
    finally:
        if kernels is not None:
            kernels.DEVICES = saved


def build(in_features: int, out_features: int, alpha: int) -> dict:
    """The parent ``nn.Linear`` and its expansions (float32, CPU): masked (``random``), parent, block."""
    import torchfpe
    from torchfpe.core import expanded_layers
    from torchfpe.core.layouts import pack_layer

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(in_features, out_features), nn.ReLU(), nn.Linear(out_features, 8))
    random = dict(expanded_layers(torchfpe.expand(model, alpha, "random", seed=0)))["0"]
    contiguous = dict(expanded_layers(torchfpe.expand(model, alpha, "contiguous", seed=0)))["0"]
    return {"dense": model[0], "masked": random, "parent": pack_layer(random, "parent", name="0"),
            "block": pack_layer(contiguous, "block", name="0"), "block_masked": contiguous}


def on(layers: dict, device: torch.device, dtype: torch.dtype) -> dict:
    return {name: copy.deepcopy(layer).to(device=device, dtype=dtype) for name, layer in layers.items()}


# ------------------------------------------------------------------------------------------ timing
def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def milliseconds(fn, device: torch.device, args) -> float:
    """Median milliseconds per call on a cold L2: ``triton.testing.do_bench`` on CUDA (it clears
    the L2 cache before each call and times the call alone between events, so the host's launch
    overhead hides behind the clearing), else a few rounds of ``time.perf_counter``."""
    if device.type == "cuda":
        try:
            from triton.testing import do_bench
        except ImportError:
            do_bench = None
        if do_bench is not None:
            return float(do_bench(fn, warmup=args.warmup_ms, rep=args.rep_ms, return_mode="median"))
    return loop_milliseconds(fn, device, args)


def loop_milliseconds(fn, device: torch.device, args) -> float:
    """Milliseconds per call of a loop of back-to-back calls (what a Python loop sees: host
    overhead included, the L2 cache warm), median of a few rounds."""
    fn()
    synchronise(device)
    rounds = []
    for _ in range(2 if args.smoke else 5):
        calls, start = 0, time.perf_counter()
        while calls < (1 if args.smoke else 3) or time.perf_counter() - start < (0.005 if args.smoke else 0.05):
            fn()
            calls += 1
        synchronise(device)
        rounds.append((time.perf_counter() - start) * 1e3 / calls)
    return statistics.median(rounds)


def peak_bandwidth(device: torch.device) -> dict:
    """Datasheet and measured (copy) bandwidth in GB/s, and which one the table divides by."""
    if device.type != "cuda":
        return {"datasheet_gbs": None, "copy_gbs": None, "peak_gbs": None, "source": "none (no CUDA)"}
    name = torch.cuda.get_device_name(device)
    datasheet = next((gbs for words, gbs in PEAKS if all(w.lower() in name.lower() for w in words)), None)
    source = torch.empty(256 << 20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    for _ in range(3):
        target.copy_(source)
    synchronise(device)
    start = time.perf_counter()
    for _ in range(20):
        target.copy_(source)
    synchronise(device)
    copy_gbs = 2 * source.numel() * 20 / (time.perf_counter() - start) / 1e9  # read + write
    del source, target
    return {"datasheet_gbs": datasheet, "copy_gbs": round(copy_gbs, 1),
            "peak_gbs": datasheet if datasheet is not None else round(copy_gbs, 1),
            "source": f"datasheet ({name})" if datasheet is not None else "measured device-to-device copy"}


def tensor_bytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def layer_bytes(name: str, layer: nn.Module) -> int:
    """Bytes of what the variant's forward reads of its own tensors (once each)."""
    if name == "dense":
        return tensor_bytes(layer.weight, layer.bias)
    if name == "masked":
        return tensor_bytes(layer.weight, layer.weight_mask, layer.bias)
    if name.startswith("block"):
        return tensor_bytes(layer.values, layer.bias, layer.gather, layer.out_index)
    return tensor_bytes(layer.values, layer.bias, layer.child_bits, layer.in_gather)


# ------------------------------------------------------------------------------------------ checks
def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    scale = float(b.abs().max()) or 1.0
    return float((a - b).abs().max()) / scale


def dense_values_grad(layer) -> torch.Tensor:
    """A packed layer's value gradient at its natural (out, in) positions."""
    probe = copy.deepcopy(layer)
    with torch.no_grad():
        probe.values.copy_(layer.values.grad)
    return probe.effective_weight().detach()


def check(layers: dict, kernels, device: torch.device, dtype_name: str, batch: int) -> list[dict]:
    """Output and gradients of each Triton layout against its masked layer and a float64 truth."""
    results = []
    generator = torch.Generator(device="cpu").manual_seed(1)
    for layout, masked_name in (("parent", "masked"), ("block", "block_masked")):
        layer, masked = layers[layout], layers[masked_name]
        x = torch.randn(batch, masked.in_features, generator=generator).to(device, DTYPES[dtype_name])
        served = kernels is not None and kernels.wants(x) and kernels.forward(layer, x) is not None
        truth = F.linear(x.double(), (masked.weight * masked.weight_mask).double(),
                         None if masked.bias is None else (masked.bias * masked.bias_mask).double())
        outputs, grads = {}, {}
        for name, module in (("kernel", layer), ("masked", masked)):
            for p in module.parameters():
                p.grad = None
            xg = x.detach().clone().requires_grad_(True)
            y = module(xg)
            weights = torch.randn(y.shape, generator=torch.Generator(device="cpu").manual_seed(2)).to(device)
            (y.float() * weights).sum().backward()
            outputs[name] = y.detach()
            value_grad = dense_values_grad(module) if name == "kernel" else module.weight.grad * module.weight_mask
            grads[name] = (xg.grad, value_grad)
        row = {"layout": layout, "dtype": dtype_name, "batch": batch, "triton": bool(served),
               "output_vs_truth": relative(outputs["kernel"], truth),
               "masked_output_vs_truth": relative(outputs["masked"], truth),
               "output_vs_masked": relative(outputs["kernel"], outputs["masked"]),
               "grad_input_vs_masked": relative(grads["kernel"][0], grads["masked"][0]),
               "grad_values_vs_masked": relative(grads["kernel"][1], grads["masked"][1])}
        floor = FLOORS[dtype_name]
        row["ok"] = bool(served and row["output_vs_truth"] <= max(2 * row["masked_output_vs_truth"], floor)
                         and row["grad_input_vs_masked"] <= 4 * floor and row["grad_values_vs_masked"] <= 4 * floor)
        results.append(row)
    return results


# ------------------------------------------------------------------------------------------ rows
def time_rows(layers: dict, kernels, device: torch.device, dtype_name: str, shape: list[int], grid: dict,
              peak: float | None, args) -> list[dict]:
    in_features, out_features, alpha = shape
    dtype = DTYPES[dtype_name]
    rows = []
    for batch in grid["batches"]:
        x = torch.randn(batch, in_features, device=device, dtype=dtype)
        variants = {"dense": layers["dense"], "masked": layers["masked"], "block": layers["block"],
                    "block_torch": layers["block"], "parent": layers["parent"]}
        if kernels is None:
            variants = {k: v for k, v in variants.items() if k not in ("block", "parent")}
        row = {"in": in_features, "out": out_features, "alpha": alpha, "dtype": dtype_name, "batch": batch,
               "variants": {}}
        useful_flops = 2 * batch * in_features * out_features  # the parent's multiply-adds
        for name, layer in variants.items():
            width = out_features if name == "dense" else out_features * alpha
            moved = layer_bytes(name, layer) + tensor_bytes(x) + batch * width * x.element_size()
            context = torch_path(kernels) if name == "block_torch" else contextlib.nullcontext()

            def forward(layer=layer):
                with torch.no_grad():
                    layer(x)
            with context:
                ms = milliseconds(forward, device, args)
                loop_ms = loop_milliseconds(forward, device, args) if device.type == "cuda" else ms  # same off CUDA
            entry = {"ms": round(ms, 5), "loop_ms": round(loop_ms, 5), "bytes": moved,
                     "gbs": round(moved / ms / 1e6, 1), "parent_tflops": round(useful_flops / ms / 1e9, 3)}
            if peak:
                entry["pct_peak"] = round(100 * moved / ms / 1e6 / peak, 1)
            row["variants"][name] = entry
            if batch in grid["train_batches"] and name != "block_torch":
                params = [p for p in layer.parameters() if p.requires_grad]
                xg = x.detach().clone().requires_grad_(True)
                gy = torch.randn(batch, width, device=device, dtype=dtype)

                def train(layer=layer, params=params, xg=xg, gy=gy):
                    torch.autograd.grad(layer(xg), [xg, *params], gy)
                row["variants"][f"train/{name}"] = {"ms": round(milliseconds(train, device, args), 5)}
        dense, train_dense = row["variants"]["dense"], row["variants"].get("train/dense", {})
        for name, entry in row["variants"].items():
            base = train_dense if name.startswith("train/") else dense
            entry["ratio_to_dense"] = round(entry["ms"] / base["ms"], 3)
            if "loop_ms" in entry:
                entry["loop_ratio_to_dense"] = round(entry["loop_ms"] / base["loop_ms"], 3)
        rows.append(row)
        print(f"{in_features}->{out_features} a={alpha} {dtype_name} b={batch}: "
              + ", ".join(f"{k} {v['ratio_to_dense']}x" for k, v in row["variants"].items()), flush=True)
    return rows


def table(result: dict, key: str = "ratio_to_dense") -> str:
    """The forward rows as a markdown table: times as ratios to the parent's cuBLAS time (``key``:
    ``ratio_to_dense``, cold-L2 GPU time, or ``loop_ratio_to_dense``, a Python loop's), and the
    Triton layouts' bandwidth (cold L2) with its share of the peak."""
    names = ["masked", "block", "block_torch", "parent"]
    dense_column = "dense ms" if key == "ratio_to_dense" else "dense loop ms"
    lines = [f"| in→out | α | dtype | batch | {dense_column} | " + " | ".join(f"{n} ×" for n in names)
             + " | block GB/s (% peak) | parent GB/s (% peak) |",
             "|---" * (5 + len(names) + 2) + "|"]
    for row in result["rows"]:
        v = row["variants"]
        dense_ms = v["dense"]["ms" if key == "ratio_to_dense" else "loop_ms"]
        cells = [f"{row['in']}→{row['out']}", str(row["alpha"]), row["dtype"], str(row["batch"]), f"{dense_ms:.4f}"]
        cells += [f"{v[n][key]:.2f}" if n in v else "–" for n in names]
        for n in ("block", "parent"):
            cells.append(f"{v[n]['gbs']:.0f} ({v[n].get('pct_peak', '–')})" if n in v else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", help="where to measure (default cuda; a --smoke run defaults to cuda if present, "
                                         "else cpu with the kernels interpreted)")
    parser.add_argument("--budget", type=float, default=240.0,
                        help="seconds after which no further shape is started (default 240)")
    parser.add_argument("--warmup-ms", type=float, default=25.0, help="do_bench warm-up per timing (ms)")
    parser.add_argument("--rep-ms", type=float, default=100.0, help="do_bench measuring time per timing (ms)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, to check the script; needs --out")
    parser.add_argument("--out", type=Path, help="JSON result file (default bench/results/gpu.json)")
    args = parser.parse_args()
    if args.smoke and args.out is None:
        parser.error("--smoke needs --out, so that a smoke run never replaces a result in bench/results/")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() or not args.smoke else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "error: bench/gpu.py: no CUDA device (torch.cuda.is_available() is False); run it on a "
                       "CUDA machine, or use --smoke\n")
    interpret = device.type == "cpu"
    if interpret:
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernel modules are imported (triton.jit reads it)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # IEEE float32 on both sides (the default)
    grid = SMOKE if args.smoke else FULL
    started = time.perf_counter()
    kernels = kernels_module(interpret)
    peak = peak_bandwidth(device)
    result: dict = {"checks": [], "rows": [], "peak": peak}
    skipped = []
    for shape in grid["shapes"]:
        if time.perf_counter() - started > args.budget:
            skipped.append(shape)
            continue
        built = build(*shape)
        for dtype_name in grid["dtypes"]:
            layers = on(built, device, DTYPES[dtype_name])
            if kernels is not None:
                for row in check(layers, kernels, device, dtype_name, grid["check_batch"]):
                    result["checks"].append({"in": shape[0], "out": shape[1], "alpha": shape[2], **row})
            result["rows"] += time_rows(layers, kernels, device, dtype_name, shape, grid, peak["peak_gbs"], args)
            del layers
            if device.type == "cuda":
                torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    result["meta"] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
                      "triton": triton_version, "kernels": kernels is not None, "interpreted": interpret,
                      "device": str(device), "device_name": name, "python": sys.version.split()[0], "grid": grid,
                      "skipped_shapes": skipped, "smoke": args.smoke, "budget": args.budget,
                      "all_checks_ok": all(c["ok"] for c in result["checks"]),
                      "seconds": round(time.perf_counter() - started, 1)}
    if kernels is None:
        result["meta"]["note"] = "Triton not importable: only dense, masked and block_torch were timed"
    out = args.out or Path("bench/results/gpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print()
    if interpret:
        print("(the kernels ran under Triton's interpreter on the CPU: these times are not GPU times)")
    print("forward, cold L2 (GPU time per call):\n" + table(result))
    print("\nforward, a Python loop of calls (host overhead included, L2 warm):\n"
          + table(result, "loop_ratio_to_dense"))
    failed = [c for c in result["checks"] if not c["ok"]]
    print(f"\nchecks: {len(result['checks']) - len(failed)}/{len(result['checks'])} ok"
          + "".join(f"\n  NOT OK: {c}" for c in failed))
    print(f"wrote {out} ({result['meta']['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
