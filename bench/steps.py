"""Training steps against the parent (issue 21): time ratios and the profile that explains each.

With one thread, for each goal shape of issue 21, the parent and its FPE expansion (masked, packed by
``pack(layout="auto")`` and in named layouts) are timed back to back in one process, interleaved
rounds, medians: forward alone (no autograd), forward + backward, and one training step (forward,
backward, Adam). Each row also holds a torch.profiler breakdown of a few training steps: the top ops
by self CPU time share and the share of the matrix products (``mm``/``bmm``/``addmm``/``baddbmm`` and
the compiled kernels of the ``parent`` layout). Shapes:

- ``wide``: the 4096 layer at batch 256 (``4096 -> 4096 -> 10``, alpha 4, random and grouped);
- ``deep``: three expanded 1024 layers (``1024 -> 1024 -> 1024 -> 1024 -> 10``, alpha 4, every hidden
  layer expanded), batch 256: random and grouped (global budget) and grouped/contiguous under
  ``budget="structured"``, whose middle layers pack as ``nested`` (and, "before", as ``block``);
- ``batch1``: a 1024-wide block MLP (``1024 -> 1024 -> 10``, contiguous and grouped, alpha 4) at batch 1;
- ``lm``: the byte-level GPT-2 step shapes of bench/lm_steps.py (``x2``, ``x4``; its sizes, by import).

Then, for ``random`` at batch >= 64, candidate exact products of the 4096 layer's incoming matrix
(the parent's dense product as the BLAS rate; the masked dense product; torch.sparse CSR (MKL); a
blocked gather-then-bmm; the ``parent`` layout), each as useful GFLOP/s (2 x live weights x batch).

Wall-clock ratios on a shared machine are indicative only; the profile shares are what explain them.

    .venv/bin/python bench/steps.py --out bench/results/steps.json
    .venv/bin/python bench/steps.py --smoke --out /tmp/smoke.json   # tiny shapes, one round
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import torchfpe
from torchfpe.core.layouts import LayoutError, NestedLinear, auto_layouts, expanded_layers, pack_layer
from torchfpe.core.layouts.packed import row_factor

PRODUCT_OPS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::_sparse_mm", "aten::_sparse_addmm",
               "_NativeProduct", "_TiledProduct", "_NativeProductBackward", "_TiledProductBackward")


@functools.cache
def _bench(name: str):
    """bench/<name>.py as a module (bench/ is not a package): lm_steps' LM sizes and builder, packed's MLP."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mlp(sizes: list[int], seed: int = 0) -> nn.Sequential:
    """The ReLU MLP of bench/packed.py (the same parents as its grid)."""
    return _bench("packed").mlp(sizes, seed)


def layouts_of(model: nn.Module) -> list[str]:
    return [layer.layout for _, layer in expanded_layers(model)]


def pack_as(masked: nn.Module, layout: str) -> nn.Module | None:
    """``masked`` with every expanded layer in ``layout`` where it fits (``auto`` elsewhere); None if none fits."""
    choices = {}
    for name, layer in expanded_layers(masked):
        try:
            pack_layer(layer, layout, name=name)
            choices[name] = layout
        except (torchfpe.InvalidParameterError, LayoutError):
            choices[name] = "auto"
    return torchfpe.pack(masked, choices) if layout in choices.values() else None


def pack_without(masked: nn.Module, skipped: type) -> nn.Module:
    """What ``pack(layout="auto")`` chose before ``skipped`` was registered."""
    choices = {}
    for name, layer in expanded_layers(masked):
        alpha = row_factor(layer.out_features, layer.parent_features)
        for cls in auto_layouts():
            if cls is skipped:
                continue
            try:
                cls.from_masked(layer, alpha, auto=True, max_groups=16, natural_output=True)
                choices[name] = cls.layout
                break
            except LayoutError:
                continue
    return torchfpe.pack(masked, choices)


# ----------------------------------------------------------------------------------------- timing
class Workload:
    """One model's three measured calls: forward (no autograd), forward + backward, Adam step."""

    def __init__(self, model: nn.Module, batch: Callable[[], tuple], loss: Callable) -> None:
        self.model, self.inputs, self.loss = model, batch(), loss
        self.optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def forward(self) -> None:
        with torch.no_grad():
            self.loss(self.model, *self.inputs)

    def forward_backward(self) -> None:
        self.model.zero_grad(set_to_none=True)
        self.loss(self.model, *self.inputs).backward()

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(self.model, *self.inputs).backward()
        self.optimizer.step()


MODES = ("forward", "forward_backward", "step")
#: split@budget of the deep case: the issue's random and grouped (global budget), and the structured
#: budget whose middle layers pack as ``nested``.
DEEP_RECIPES = ("random@global", "grouped@global", "grouped@structured", "contiguous@structured")


def time_models(workloads: dict[str, Workload], modes: tuple[str, ...], rounds: int, number: int) -> dict:
    """Median seconds per call of each (model, mode), rounds interleaved across models."""
    for work in workloads.values():
        for mode in modes:
            getattr(work, mode)()  # warm-up: kernels compiled, optimizer state allocated
    samples: dict[tuple[str, str], list[float]] = {(label, mode): [] for label in workloads for mode in modes}
    for _ in range(rounds):
        for mode in modes:
            for label, work in workloads.items():
                fn = getattr(work, mode)
                started = time.perf_counter()
                for _ in range(number):
                    fn()
                samples[(label, mode)].append((time.perf_counter() - started) / number)
    return {key: statistics.median(values) for key, values in samples.items()}


def profile(work: Workload, steps: int, mode: str = "step", top: int = 5) -> dict:
    """Top ops by self CPU time share over ``steps`` calls of ``mode``, and the matrix products' share."""
    call = getattr(work, mode)
    call()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            call()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    events.sort(key=lambda e: -e.self_cpu_time_total)
    products = sum(e.self_cpu_time_total for e in events if any(op in e.key for op in PRODUCT_OPS))
    return {"top": [[e.key, round(100 * e.self_cpu_time_total / total, 1)] for e in events[:top]],
            "product_share": round(100 * products / total, 1)}


def mlp_loss(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), labels)


def measure(case: str, shape: str, parent: nn.Module, models: dict[str, nn.Module], batch: Callable[[], tuple],
            loss: Callable, args, modes: tuple[str, ...] = MODES, number: int = 1, extra: dict | None = None) -> list:
    """One row per model of ``models`` (``parent`` added): ratios to the parent and a step profile."""
    workloads = {"parent": Workload(parent, batch, loss)}
    workloads.update({label: Workload(model, batch, loss) for label, model in models.items()
                      if not (args.no_masked and "masked" in label)})
    seconds = time_models(workloads, modes, args.rounds, number)
    rows = []
    for label, work in workloads.items():
        times = {mode: {"seconds": seconds[(label, mode)],
                        "ratio": round(seconds[(label, mode)] / seconds[("parent", mode)], 3)} for mode in modes}
        rows.append({"case": case, "shape": shape, "model": label, **(extra or {}),
                     "layouts": layouts_of(work.model) if label != "parent" else [],
                     "times": times, "profile": profile(work, args.profile_steps),
                     "profiles": {mode: profile(work, args.profile_steps, mode) for mode in args.profile_modes
                                  if mode in modes}})
        print(f"{case:>28} {label:>22}: " + ", ".join(f"{m} x{t['ratio']:.2f}" for m, t in times.items())
              + f"  | step: products {rows[-1]['profile']['product_share']}%: {rows[-1]['profile']['top'][:3]}"
              + "".join(f" | {mode}: products {p['product_share']}%: {p['top'][:3]}"
                        for mode, p in rows[-1]["profiles"].items()), flush=True)
    return rows


def mlp_batch(width: int, batch: int) -> Callable[[], tuple]:
    def make() -> tuple:
        generator = torch.Generator().manual_seed(0)
        return torch.randn(batch, width, generator=generator), torch.randint(0, 10, (batch,), generator=generator)
    return make


# ----------------------------------------------------------------------------------------- cases
def wide(args) -> list:
    width, batch = args.wide, args.batch
    parent = mlp([width, width, 10])
    rows = []
    for split in ("random", "grouped"):
        masked = torchfpe.expand(parent, 4, split, seed=0)
        models = {"masked": masked, "auto": torchfpe.pack(masked)}
        for layout in args.named_layouts:
            packed = pack_as(masked, layout)
            if packed is not None and layouts_of(packed) != layouts_of(models["auto"]):
                models[layout] = packed
        rows += measure(f"wide/{split}", f"{width}->{width}->10 a4 b{batch}", parent, models,
                        mlp_batch(width, batch), mlp_loss, args, extra={"split": split, "budget": "global"})
    return rows


def deep(args) -> list:
    width, batch = args.deep, args.batch
    parent = mlp([width] * 4 + [10])
    rows = []
    for recipe in args.deep_recipes:
        split, budget = recipe.split("@")
        masked = torchfpe.expand(parent, 4, split, seed=0, budget=budget)
        models = {"masked": masked, "auto": torchfpe.pack(masked)}
        if NestedLinear.layout in layouts_of(models["auto"]):
            models["auto_before_nested"] = pack_without(masked, NestedLinear)
        rows += measure(f"deep/{split}@{budget}", f"{width}x3 expanded a4 b{batch}", parent, models,
                        mlp_batch(width, batch), mlp_loss, args, extra={"split": split, "budget": budget})
    return rows


def batch_one(args) -> list:
    width = args.deep
    parent = mlp([width, width, 10])
    rows = []
    for split in ("contiguous", "grouped"):
        masked = torchfpe.expand(parent, 4, split, seed=0)
        rows += measure(f"batch1/{split}", f"{width}->{width}->10 a4 b1", parent, {"auto": torchfpe.pack(masked)},
                        mlp_batch(width, 1), mlp_loss, args, number=args.batch1_calls,
                        extra={"split": split, "budget": "global"})
    return rows


def language_models(args) -> list:
    lm_steps = _bench("lm_steps")
    lm = lm_steps.lm
    sizes = lm_steps.SMOKE if args.smoke else {name: lm_steps.SIZES[name] for name in args.lm}
    rows = []
    for name, (arch, d_model, layers, heads, d_ff, context, batch) in sizes.items():
        parent = lm.build_lm(arch, d_model, layers, heads, d_ff, context, seed=0)
        pairs = [list(entry) for entry in lm.ffn_pairs(arch, layers)]
        random_masked = torchfpe.expand(parent, 2, "random", pairs=pairs, seed=0)
        grouped = torchfpe.expand(parent, 2, "grouped", pairs=pairs, seed=0, budget="structured")
        models = {"random/masked": random_masked, "random/auto": torchfpe.pack(random_masked),
                  "grouped@structured/auto": torchfpe.pack(grouped)}

        def windows(batch: int = batch, context: int = context) -> tuple:
            return (torch.randint(0, 256, (batch, context + 1), generator=torch.Generator().manual_seed(0)),)

        rows += measure(f"lm/{name}", f"{arch} d{d_model} L{layers} ff{d_ff} T{context} B{batch} a2", parent, models,
                        windows, lm.windows_loss, args, modes=("forward", "step"))
    return rows


# ----------------------------------------------------------------------------------------- random products
#: Parents per gathered tile of blocked_gather_bmm: 8 x 4096 inputs x 256 examples is 32 MiB of tiles.
GATHER_BLOCK = 8


def blocked_gather_bmm(values: torch.Tensor, child: torch.Tensor, alpha: int, x: torch.Tensor,
                       block: int) -> torch.Tensor:
    """The per-parent layout's product by gathers: for ``block`` parents at a time, each child's inputs
    gathered into a padded dense tile (inputs sorted by child), then one bmm per block."""
    parents, inputs = values.shape
    n = x.shape[0]
    order = torch.argsort(child, dim=1, stable=True)  # inputs of child 0, then child 1, ...
    chunk = inputs // alpha  # balanced split: every child reads inputs / alpha inputs
    out = x.new_empty(n, parents * alpha)
    xt = x.t().contiguous()  # (inputs, n): a gather of rows
    for start in range(0, parents, block):
        idx = order[start: start + block].reshape(-1)  # (block * inputs)
        tiles = xt.index_select(0, idx).view(-1, alpha, chunk, n)  # (block, alpha, chunk, n)
        w = values[start: start + block].gather(1, order[start: start + block]).view(-1, alpha, 1, chunk)
        y = torch.matmul(w, tiles).view(-1, alpha, n)  # (block, alpha, n)
        out[:, start * alpha: (start + y.shape[0]) * alpha] = y.reshape(-1, n).t()
    return out


def balanced_children(mask: torch.Tensor) -> torch.Tensor:
    """(parents, inputs) child of each parent entry from (parents, alpha, inputs) child masks; entries the
    budget pruned (value 0.0) are dealt to the children short of inputs / alpha, so every child has as many."""
    parents, alpha, inputs = mask.shape
    child = torch.where(mask.any(dim=1), mask.to(torch.int8).argmax(dim=1), -1).long()
    chunk = inputs // alpha
    for p in range(parents):
        free = torch.nonzero(child[p] < 0).squeeze(1)
        if free.numel():
            deficit = chunk - torch.bincount(child[p][child[p] >= 0], minlength=alpha)
            child[p, free] = torch.repeat_interleave(torch.arange(alpha), deficit.clamp(min=0))[: free.numel()]
    return child


def random_products(args) -> dict:
    """Useful GFLOP/s of exact products of the random split's incoming layer against the BLAS rate."""
    width, batch, alpha = args.wide, args.batch, 4
    parent = mlp([width, width, 10])
    masked = torchfpe.expand(parent, alpha, "random", seed=0)
    layer = masked[0]
    dense_w = parent[0].weight.detach()
    effective = (layer.weight * layer.weight_mask).detach()
    live = int(layer.weight_mask.sum())
    csr = effective.to_sparse_csr()
    parent_layout = pack_layer(layer, "parent")
    child = balanced_children(layer.weight_mask.view(width, alpha, width))
    values = dense_w * layer.weight_mask.view(width, alpha, width).any(dim=1)
    x = torch.randn(batch, width, generator=torch.Generator().manual_seed(0))
    xt = x.t().contiguous()
    candidates = {
        "parent_dense_blas": (lambda: x @ dense_w.t(), width * width),
        "masked_dense": (lambda: x @ effective.t(), width * width * alpha),
        "csr_sparse_mm": (lambda: torch.sparse.mm(csr, xt), live),
        "blocked_gather_bmm": (lambda: blocked_gather_bmm(values, child, alpha, x, GATHER_BLOCK), live),
        "parent_layout": (lambda: parent_layout(x), live),
    }
    with torch.no_grad():
        reference = x @ effective.t()
        checks = {"csr_sparse_mm": torch.sparse.mm(csr, xt).t(),
                  "blocked_gather_bmm": blocked_gather_bmm(values, child, alpha, x, GATHER_BLOCK),
                  "parent_layout": parent_layout(x) - parent_layout.effective_bias()}
    exact = {name: float((got - reference).abs().max()) for name, got in checks.items()}
    results = {}
    with torch.no_grad():
        for name, (fn, flops_weights) in candidates.items():
            fn()
            rounds = []
            for _ in range(args.rounds):
                started = time.perf_counter()
                fn()
                rounds.append(time.perf_counter() - started)
            seconds = statistics.median(rounds)
            results[name] = {"seconds": seconds, "multiply_adds": flops_weights * batch,
                             "useful_gflops": round(2 * live * batch / seconds / 1e9, 2),
                             "done_gflops": round(2 * flops_weights * batch / seconds / 1e9, 2)}
    blas = results["parent_dense_blas"]["useful_gflops"]
    for row in results.values():
        row["fraction_of_blas"] = round(row["useful_gflops"] / blas, 3)
    print("random products:", {k: (v["useful_gflops"], v["fraction_of_blas"]) for k, v in results.items()},
          "max error", exact, flush=True)
    return {"shape": f"{width}->{alpha * width} random a{alpha} b{batch}", "live_weights": live,
            "max_abs_error": exact, "candidates": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["wide", "deep", "batch1", "lm", "products"],
                        choices=["wide", "deep", "batch1", "lm", "products"])
    parser.add_argument("--wide", type=int, default=4096, help="width of the wide layer (4096)")
    parser.add_argument("--deep", type=int, default=1024, help="width of the deep and batch-1 MLPs (1024)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--deep-recipes", nargs="+", default=list(DEEP_RECIPES), choices=DEEP_RECIPES,
                        help="split@budget of the deep case")
    parser.add_argument("--lm", nargs="+", default=["x2", "x4"], help="LM sizes of bench/lm_steps.py")
    parser.add_argument("--no-masked", action="store_true", help="skip the masked models (alpha to alpha^2 "
                        "times the parent's time: the slowest rows)")
    parser.add_argument("--named-layouts", nargs="*", default=["block", "parent", "ell"],
                        help="layouts the wide case also forces, where they differ from auto's choice")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median)")
    parser.add_argument("--profile-steps", type=int, default=2)
    parser.add_argument("--profile-modes", nargs="*", default=["forward"], choices=MODES,
                        help="modes profiled besides the training step (the row's 'profiles')")
    parser.add_argument("--batch1-calls", type=int, default=200, help="calls per round at batch 1")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, one round; needs --out")
    parser.add_argument("--out", type=Path, help="JSON result file (default bench/results/steps.json)")
    args = parser.parse_args()
    if args.smoke and args.out is None:
        parser.error("--smoke needs --out, so that a smoke run never replaces a result in bench/results/")
    if args.smoke:
        args.wide, args.deep, args.batch, args.rounds, args.profile_steps, args.batch1_calls = 64, 64, 8, 1, 1, 2
    args.out = args.out or Path("bench/results/steps.json")
    torch.set_num_threads(1)
    cases = {"wide": wide, "deep": deep, "batch1": batch_one, "lm": language_models}
    rows = [row for name in args.cases if name in cases for row in cases[name](args)]
    report = {
        "benchmark": "steps",
        "meta": {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
                 "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                 "threads": torch.get_num_threads(), "rounds": args.rounds, "smoke": args.smoke,
                 "cases": args.cases, "note": "wall-clock on a shared machine: ratios indicative, profiles explain"},
        "rows": rows,
        "random_products": random_products(args) if "products" in args.cases else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
