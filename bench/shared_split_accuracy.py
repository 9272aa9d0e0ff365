"""What sharing one random partition across all parents (split="shared", the split that packs into
dense blocks at the parent's cost) does to accuracy, against the independent "random" split.

Two tasks, the same seeds for every split, FPE protocol (dense warm-up, expand, continue):

- the Boolean headline (synthetic DNF, m = 8 clauses, h = 8 neurons, alpha = 2, the defaults of
  ``torchfpe.lab.experiments.boolean.BooleanConfig``), batched over seeds with ``torchfpe.lab.batched``;
  ``clause`` is included as the paper's upper reference;
- "groups2"/"groups4": a split callable giving 2 or 4 random partitions, parent i using partition
  i mod G (sharing by groups of parents; packs into 2 or 4 groups of blocks);
- a heads-style task: an MLP 64 -> 16 -> 10 on scikit-learn's digits (8x8 images, 1797 examples,
  a stand-in for the paper's CLIP heads; 70/30 split fixed by the seed), full-batch Adam, cross-entropy,
  alpha 2 and 4.

    .venv/bin/python bench/shared_split_accuracy.py --seeds 10 --out bench/results/shared_split_accuracy.json
    .venv/bin/python bench/shared_split_accuracy.py --smoke --out /tmp/smoke.json   # a few seconds, tiny configs
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from torchfpe import expand
from torchfpe.lab.batched import StackedMLP, fit_stacked, stacked_binary_accuracy
from torchfpe.lab.experiments.boolean import EXPERIMENT as BOOLEAN, init_model
from torchfpe.lab.experiments.protocol import batch_generator
from torchfpe.tasks import make_dnf


def grouped(groups: int):
    """A split callable: ``groups`` balanced random partitions, parent i uses partition i mod groups."""

    def split(weight: torch.Tensor, alpha: int, generator: torch.Generator) -> torch.Tensor:
        parents, inputs = weight.shape
        deals = []
        for _ in range(groups):
            order = torch.argsort(torch.rand(inputs, generator=generator))
            assignment = torch.empty(inputs, dtype=torch.long)
            assignment[order] = torch.arange(inputs) % alpha
            deals.append(assignment)
        return torch.stack([deals[i % groups] for i in range(parents)])

    split.__name__ = f"groups{groups}"
    return split


def _split(name: str):
    return grouped(int(name[len("groups"):])) if name.startswith("groups") else name


def boolean(seeds: list[int], splits: list[str], overrides: dict | None = None) -> dict[str, list[float]]:
    configs = [BOOLEAN.make_config(**(overrides or {}), seed=s) for s in seeds]
    first = configs[0]
    settings = first.settings()
    tasks = [make_dnf(c.task_config()) for c in configs]
    x_train = torch.stack([t.x_train for t in tasks]).float()
    y_train = torch.stack([t.y_train for t in tasks]).float()
    x_test = torch.stack([t.x_test for t in tasks]).float()
    y_test = torch.stack([t.y_test for t in tasks]).float()
    dense = StackedMLP([init_model(c) for c in configs])
    optimizer = fit_stacked(dense, x_train, y_train, first.warmup_epochs, settings,
                            generators=[batch_generator(c, 0) for c in configs])
    warm = dense.unstack()
    fit_stacked(dense, x_train, y_train, first.epochs_after, settings, optimizer=optimizer,
                generators=[batch_generator(c, 0) for c in configs])
    results = {"dense": stacked_binary_accuracy(dense, x_test, y_test).tolist()}
    for split in splits:
        models = [expand(m, c.alpha, _split(split), seed=c.seed, clauses=t.clauses if split == "clause" else None)
                  for m, c, t in zip(warm, configs, tasks)]
        stack = StackedMLP(models)
        fit_stacked(stack, x_train, y_train, first.epochs_after, settings,
                    generators=[batch_generator(c, 1) for c in configs])
        results[split] = stacked_binary_accuracy(stack, x_test, y_test).tolist()
    return results


def digits(seeds: list[int], splits: list[str], alphas: list[int], hidden: int = 16, epochs: int = 300,
           lr: float = 1e-2) -> dict[str, list[float]]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x_all = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y_all = torch.tensor(data.target)
    results: dict[str, list[float]] = {}
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(x_all), generator=generator)
        cut = int(0.7 * len(order))
        train, test = order[:cut], order[cut:]
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

        def fit(m, steps, optimizer=None):
            optimizer = optimizer or torch.optim.Adam(m.parameters(), lr=lr)
            for _ in range(steps):
                optimizer.zero_grad()
                F.cross_entropy(m(x_all[train]), y_all[train]).backward()
                optimizer.step()
            return optimizer

        def accuracy(m):
            with torch.no_grad():
                return float((m(x_all[test]).argmax(1) == y_all[test]).float().mean())

        optimizer = fit(model, epochs)
        warm = {k: v.clone() for k, v in model.state_dict().items()}
        fit(model, epochs, optimizer)
        results.setdefault("dense", []).append(accuracy(model))
        for alpha in alphas:
            for split in splits:
                parent = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
                parent.load_state_dict(warm)
                expanded = expand(parent, alpha, _split(split), seed=seed)
                fit(expanded, epochs)
                results.setdefault(f"{split} a={alpha}", []).append(accuracy(expanded))
    return results


def summary(results: dict[str, list[float]]) -> dict[str, dict]:
    dense = results["dense"]
    out = {}
    for name, values in results.items():
        out[name] = {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                     "values": values}
    if "random" in results or any(k.startswith("random") for k in results):
        for name in results:
            for kind in ("shared", "groups2", "groups4"):
                if not name.startswith(kind):
                    continue
                paired = [a - b for a, b in zip(results[name], results[name.replace(kind, "random")])]
                out[name]["minus_random_mean"] = statistics.mean(paired)
                out[name]["minus_random_std"] = statistics.stdev(paired) if len(paired) > 1 else 0.0
                out[name]["minus_random_pairs"] = len(paired)
    del dense
    return out


#: --smoke: 2 seeds of tiny Boolean configs and 5 digits epochs, a few seconds (checks the script, not accuracy).
SMOKE_BOOLEAN = dict(n_vars=12, clauses=3, literals=2, train_size=64, test_size=64, warmup_epochs=5, epochs_after=5)
SMOKE_DIGITS_EPOCHS = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny run of a few seconds (2 seeds, tiny configs) to check the script; needs --out")
    parser.add_argument("--out", type=Path, help="JSON result file (default bench/results/shared_split_accuracy.json)")
    args = parser.parse_args()
    if args.smoke and args.out is None:
        parser.error("--smoke needs --out, so that a smoke run never replaces a result in bench/results/")
    args.out = args.out or Path("bench/results/shared_split_accuracy.json")
    torch.set_num_threads(1)
    seeds = list(range(2 if args.smoke else args.seeds))
    result = {
        "meta": {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seeds": seeds,
                 "torch": torch.__version__, "smoke": args.smoke},
        "boolean_headline": summary(boolean(seeds, ["random", "shared", "groups2", "groups4", "clause"],
                                            SMOKE_BOOLEAN if args.smoke else None)),
        "digits_mlp_64_16_10": summary(digits(seeds, ["random", "shared", "groups4"], [2, 4],
                                              **({"epochs": SMOKE_DIGITS_EPOCHS} if args.smoke else {}))),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    for task in ("boolean_headline", "digits_mlp_64_16_10"):
        for name, row in result[task].items():
            extra = f"  minus random {row['minus_random_mean']:+.4f} ± {row['minus_random_std']:.4f}" \
                if "minus_random_mean" in row else ""
            print(f"{task:22s} {name:12s} {row['mean']:.4f} ± {row['std']:.4f}{extra}")


if __name__ == "__main__":
    main()
