"""Boolean fidelity analysis: stored Boolean runs read again, at the levels the paper leaves open.

Reads one or more result stores written by ``torchfpe reproduce boolean`` (each run keeps its config
and every variant's first-layer ``hidden_weight``), regenerates each run's formula from its config
with :func:`torchfpe.tasks.make_formula` and prints (or writes) four kinds of tables:

1. **accuracy**: per config and variant, test accuracy (mean ± std, 95 % CI) and paired t-tests of
   every FPE variant against dense and of ``clause_shared`` against ``clause``;
2. **coverage**: per config and variant, how many hidden units still hold a whole clause
   (:func:`torchfpe.metrics.whole_clause_cover`) next to the balanced-partition theory of the random
   split (:func:`torchfpe.experiments.collisions.balanced_same_child_probability`);
3. **levels**: per config and variant, each reading's mean ± std over seeds;
4. **regression**: each metric's fold change (variant / dense, same config and seed) against the
   relative accuracy gain, for six readings (input-level, clause-relevant inputs, clauses; capacity
   and |cosine|), per run and per config mean, for each store and for all stores pooled;
5. **records**: the per-record readings (``--csv``).

Usage::

    python -m torchfpe.experiments.fidelity STORE [STORE ...] [--out FILE.md] [--csv FILE.csv]
        [--sections accuracy,coverage,levels,regression]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

from .. import metrics
from ..tasks import make_formula
from .boolean import EXPERIMENT as BOOLEAN
from .collisions import balanced_same_child_probability

#: (column, label) of the metric readings regressed against the gain.
READINGS = (
    ("capacity_mean", "input capacity"),
    ("cosine_abs_mean", "input \\|cosine\\|"),
    ("relevant_capacity_mean", "relevant-input capacity"),
    ("relevant_cosine_abs_mean", "relevant-input \\|cosine\\|"),
    ("clause_capacity_mean", "clause capacity"),
    ("clause_cosine_abs_mean", "clause \\|cosine\\|"),
)
SECTIONS = ("accuracy", "coverage", "levels", "regression")
#: Config fields that do not define a config cell (they vary within one cell or label the run).
_NOT_CELL = ("seed", "variants")


class FidelityError(ValueError):
    """A store that cannot be analysed; the message names it."""


# ------------------------------------------------------------------------------------------ loading
def load_records(stores: Sequence[str | Path]) -> list[dict]:
    """Every record of the Boolean runs in ``stores``, with the clause-level readings added.

    Each record gains ``store`` (the folder name), ``cell`` (its config without seed, as JSON) and
    the keys of :func:`metrics.clause_interference` and :func:`metrics.whole_clause_cover`, and
    ``*_fold`` for every reading of :data:`READINGS` against the dense record of the same run.
    Runs whose config appears in an earlier store are skipped (pooling counts each run once).
    """
    from ..sweep.store import ResultStore, StoreError

    paths = [Path(s) for s in stores]
    for path in paths:
        if not (path / "meta.json").is_file():
            raise FidelityError(f"{path} is not a torchfpe result folder (no meta.json)")
    seen: set[str] = set()
    records: list[dict] = []
    for path in paths:
        store = ResultStore(path)
        try:
            meta, runs = store.read_meta(), store.all_runs()
        except StoreError as error:
            raise FidelityError(str(error)) from None
        if meta.get("experiment", "boolean") != "boolean":
            raise FidelityError(f"{path} holds {meta.get('experiment')!r} runs; fidelity reads Boolean runs only")
        for run in runs:
            config = dict(run["config"])
            identity = json.dumps(config, sort_keys=True, default=str)
            if identity in seen:
                continue
            seen.add(identity)
            records.extend(_readings(path.name, config, run["records"]))
    if not records:
        raise FidelityError(f"no runs found in {', '.join(map(str, paths))}")
    return records


def _readings(store: str, config: Mapping, run_records: Iterable[Mapping]) -> list[dict]:
    boolean = BOOLEAN.make_config(**config)
    formula = make_formula(boolean.task_config())
    cell = json.dumps({k: v for k, v in sorted(config.items()) if k not in _NOT_CELL}, default=str)
    out = []
    for record in run_records:
        weight = torch.tensor(record["hidden_weight"], dtype=torch.float64)
        row = {k: v for k, v in record.items() if k not in ("hidden_weight", "input_order")}
        row.update(store=store, cell=cell)
        row.update(metrics.clause_interference(weight, formula.clauses, formula.signs))
        row.update(metrics.whole_clause_cover(weight, formula.clauses))
        out.append(row)
    dense = next((r for r in out if r["variant"] == "dense"), None)
    for row in out:
        for key, _ in READINGS:
            try:
                row[f"{key}_fold"] = metrics.fold_change(row[key], dense[key]) if dense else math.nan
            except (ValueError, TypeError):
                row[f"{key}_fold"] = math.nan
    return out


# ------------------------------------------------------------------------------------------- tables
def _cell_label(cell: str, varying: Sequence[str]) -> str:
    values = json.loads(cell)
    return ", ".join(f"{k}={values[k]}" for k in varying) or "base"


def _varying_fields(records: Sequence[Mapping]) -> list[str]:
    cells = [json.loads(c) for c in dict.fromkeys(r["cell"] for r in records)]
    keys = sorted({k for c in cells for k in c})
    return [k for k in keys if len({json.dumps(c.get(k), default=str) for c in cells}) > 1]


def _cells(records: Sequence[Mapping]) -> list[str]:
    """The distinct config cells, ordered by the values of the fields that vary between them."""
    varying = _varying_fields(records)

    def key(cell: str) -> tuple:
        values = json.loads(cell)
        return tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for v in (values.get(k) for k in varying))

    return sorted(dict.fromkeys(r["cell"] for r in records), key=key)


def _variants(records: Sequence[Mapping]) -> list[str]:
    from ..report.stats import ordered_variants

    return ordered_variants({r["variant"] for r in records})


def _pct(value: float, signed: bool = False) -> str:
    return "—" if not math.isfinite(value) else (f"{value:+.1f}" if signed else f"{value:.1f}")


def accuracy_table(records: Sequence[Mapping]) -> str:
    """Per cell and variant: test accuracy and paired tests (variant − dense, clause_shared − clause)."""
    from ..report.stats import paired_test, summarize

    varying = _varying_fields(records)
    lines = ["| config | variant | seeds | test acc % (mean ± std) | 95 % CI | vs | diff (points) [95 % CI] | p |",
             "|---|---|---|---|---|---|---|---|"]
    for cell in _cells(records):
        rows = [r for r in records if r["cell"] == cell]
        by_variant = {v: {r["seed"]: 100 * r["test_accuracy"] for r in rows if r["variant"] == v}
                      for v in _variants(rows)}
        for variant, values in by_variant.items():
            s = summarize(list(values.values()))
            other = "clause" if variant == "clause_shared" and "clause" in by_variant else "dense"
            test_cells = ["", "", ""]
            if variant != "dense" and other in by_variant:
                seeds = sorted(set(values) & set(by_variant[other]))
                t = paired_test([values[k] for k in seeds], [by_variant[other][k] for k in seeds])
                test_cells = [other, f"{_pct(t.mean_diff, True)} [{_pct(t.ci_low, True)}, {_pct(t.ci_high, True)}]",
                              "—" if not math.isfinite(t.p) else f"{t.p:.2g}"]
            lines.append(f"| {_cell_label(cell, varying)} | {variant} | {s.n} | {_pct(s.mean)} ± {_pct(s.std)} | "
                         f"[{_pct(s.ci_low)}, {_pct(s.ci_high)}] | " + " | ".join(test_cells) + " |")
    return "\n".join(lines)


def random_split_clause_theory(n_vars: int, alpha: int, literals: int, neurons: int, clauses: int) -> dict[str, float]:
    """What a balanced random split (before the budget prunes) leaves whole, for disjoint clauses.

    ``per_parent``: P(a given clause lies wholly in one child of a parent), the exact balanced
    probability; ``pairs``: P(a given child holds a given clause) = per_parent / alpha; ``units``:
    P(a child holds at least one of the clauses) ≈ 1 − (1 − pairs)^clauses; ``held``: P(at least one
    of the ``neurons`` parents keeps a given clause whole) = 1 − (1 − per_parent)^neurons.
    """
    per_parent = balanced_same_child_probability(n_vars, alpha, literals)
    pairs = per_parent / alpha
    return {"per_parent": per_parent, "pairs": pairs, "units": 1.0 - (1.0 - pairs) ** clauses,
            "held": 1.0 - (1.0 - per_parent) ** neurons}


def coverage_table(records: Sequence[Mapping]) -> str:
    """Per cell and variant: gain, whole-clause cover measured on the trained weights, and theory.

    Measured cells read ``measured (theory)``; the theory is that of the random split.
    """
    from ..report.stats import summarize

    varying = _varying_fields(records)
    lines = ["| config | variant | rel. gain % [95 % CI] | children holding a whole clause | clauses held by some "
             "child | (child, clause) pairs held |",
             "|---|---|---|---|---|---|"]
    for cell in _cells(records):
        rows = [r for r in records if r["cell"] == cell]
        config = json.loads(cell)
        theory = random_split_clause_theory(config["n_vars"], config["alpha"], config["literals"], config["neurons"],
                                            config["clauses"])
        for variant in _variants(rows):
            chosen = [r for r in rows if r["variant"] == variant]
            gain = summarize([100 * r.get("relative_gain", math.nan) for r in chosen])
            mean = {k: sum(r[k] for r in chosen) / len(chosen) for k in ("units_whole", "clauses_held", "pairs_held")}
            cells = [f"{mean[k]:.3f}" + (f" ({theory[t]:.3f})" if variant == "random" else "")
                     for k, t in (("units_whole", "units"), ("clauses_held", "held"), ("pairs_held", "pairs"))]
            gain_cell = "" if variant == "dense" else (f"{_pct(gain.mean, True)} [{_pct(gain.ci_low, True)}, "
                                                       f"{_pct(gain.ci_high, True)}]")
            lines.append(f"| {_cell_label(cell, varying)} | {variant} | {gain_cell} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def levels_table(records: Sequence[Mapping]) -> str:
    """Per cell and variant: mean ± std over seeds of each reading of :data:`READINGS`."""
    from ..report.stats import summarize

    varying = _varying_fields(records)
    lines = ["| config | variant | " + " | ".join(label for _, label in READINGS) + " |",
             "|---|---|" + "---|" * len(READINGS)]
    for cell in _cells(records):
        rows = [r for r in records if r["cell"] == cell]
        for variant in _variants(rows):
            chosen = [r for r in rows if r["variant"] == variant]
            values = [summarize([r[key] for r in chosen]) for key, _ in READINGS]
            lines.append(f"| {_cell_label(cell, varying)} | {variant} | "
                         + " | ".join(f"{v.mean:.3f} ± {v.std:.3f}" for v in values) + " |")
    return "\n".join(lines)


def regression_rows(records: Sequence[Mapping], scope: str) -> list[dict]:
    """Fits of each reading's fold change against the relative gain, per run and per cell mean."""
    rows = []
    for variant in [v for v in _variants(records) if v != "dense"]:
        chosen = [r for r in records if r["variant"] == variant and math.isfinite(r.get("relative_gain", math.nan))]
        for key, label in READINGS:
            points = [(r["cell"], r[f"{key}_fold"], r["relative_gain"]) for r in chosen
                      if math.isfinite(r[f"{key}_fold"])]
            cells: dict[str, list[tuple[float, float]]] = defaultdict(list)
            for cell, fold, gain in points:
                cells[cell].append((fold, gain))
            means = [(sum(f for f, _ in v) / len(v), sum(g for _, g in v) / len(v)) for v in cells.values()]
            rows.append(_fit_row(scope, variant, label, "per run", [(f, g) for _, f, g in points]))
            if len(means) >= 3:
                rows.append(_fit_row(scope, variant, label, "per config mean", means))
    return rows


def dense_level_rows(records: Sequence[Mapping], scope: str) -> list[dict]:
    """The dense runs alone: each reading's level against test accuracy (no FPE, no shared denominator)."""
    chosen = [r for r in records if r["variant"] == "dense"]
    rows = []
    for key, label in READINGS:
        xy = [(r[key], r["test_accuracy"]) for r in chosen if math.isfinite(r[key])]
        rows.append(_fit_row(scope, "dense: level vs accuracy", label, "per run", xy))
    return rows


def _fit_row(scope: str, variant: str, label: str, aggregation: str, xy: Sequence[tuple[float, float]]) -> dict:
    row = {"scope": scope, "split": variant, "metric": label, "aggregation": aggregation, "n": len(xy),
           "slope": math.nan, "r2": math.nan, "pearson": math.nan, "spearman": math.nan}
    if len(xy) >= 3 and len({x for x, _ in xy}) > 1:
        x, y = [p[0] for p in xy], [p[1] for p in xy]
        fit = metrics.linear_fit(y, x)  # fold change against the gain, as in the metrics study
        row.update(slope=fit["slope"], r2=fit["r2"], pearson=metrics.pearson_r(y, x), spearman=metrics.spearman_r(y, x))
    return row


def regression_table(rows: Sequence[Mapping]) -> str:
    def num(value: float, spec: str) -> str:
        return "—" if not math.isfinite(value) else format(value, spec)

    lines = ["| data | split | metric | aggregation | n | slope | R² | Pearson r | Spearman ρ |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['scope']} | {r['split']} | {r['metric']} | {r['aggregation']} | {r['n']} | "
                     f"{num(r['slope'], '.3g')} | {num(r['r2'], '.3f')} | {num(r['pearson'], '+.2f')} | "
                     f"{num(r['spearman'], '+.2f')} |")
    return "\n".join(lines)


def analyse(stores: Sequence[str | Path], sections: Sequence[str] = SECTIONS) -> tuple[str, list[dict]]:
    """The markdown report of ``sections`` over ``stores`` and the per-record readings."""
    records = load_records(stores)
    names = list(dict.fromkeys(r["store"] for r in records))
    parts = [f"# Boolean fidelity analysis of {', '.join(names)}",
             "Data: synthetic Boolean DNF formulas generated by torchfpe.tasks.dnf (no external data)."]
    for name in names:
        mine = [r for r in records if r["store"] == name]
        if "accuracy" in sections:
            parts += [f"## Accuracy: {name}", accuracy_table(mine)]
        if "coverage" in sections:
            parts += [f"## Whole-clause cover: {name}", coverage_table(mine)]
        if "levels" in sections:
            parts += [f"## Metric levels (first hidden layer): {name}", levels_table(mine)]
    if "regression" in sections:
        scopes = [(name, [r for r in records if r["store"] == name]) for name in names]
        if len(names) > 1:
            scopes.append(("pooled: " + " + ".join(names), records))
        rows = [row for scope, chosen in scopes for row in regression_rows(chosen, scope)]
        parts += ["## Metric fold change against relative gain", regression_table(rows)]
        levels = [row for scope, chosen in scopes for row in dense_level_rows(chosen, scope)]
        parts += ["## Dense runs: metric level against test accuracy", regression_table(levels)]
    return "\n\n".join(parts) + "\n", records


def write_csv(records: Sequence[Mapping], path: Path) -> None:
    import csv

    keys = list(dict.fromkeys(k for r in records for k in r))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(records)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m torchfpe.experiments.fidelity", description=__doc__.split("\n")[0])
    parser.add_argument("stores", nargs="+", help="result folders written by `torchfpe reproduce boolean`")
    parser.add_argument("--out", type=Path, help="write the markdown tables to this file too")
    parser.add_argument("--csv", type=Path, help="write the per-record readings to this CSV file")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        print(f"error: --sections must be a comma-separated subset of {','.join(SECTIONS)}, got {args.sections!r}",
              file=sys.stderr)
        return 2
    for target in (args.out, args.csv):
        if target is not None and not target.parent.is_dir():
            print(f"error: folder {target.parent} for {target} does not exist", file=sys.stderr)
            return 2
    try:
        text, records = analyse(args.stores, sections)
    except FidelityError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    if args.csv is not None:
        write_csv(records, args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
