"""Boolean fidelity analysis: stored Boolean runs read again, at the levels the paper leaves open.

Reads one or more result stores written by ``torchfpe reproduce boolean`` (each run keeps its config
and every variant's first-layer ``hidden_weight``), regenerates each run's formula from its config
with :func:`torchfpe.tasks.make_formula` and builds numbered tables (:class:`.markdown.Tables`):

1. **accuracy**: per config and variant, test accuracy (mean ± std, 95 % CI) and paired t-tests of
   every FPE variant against dense and of ``clause_shared`` against ``clause``;
2. **coverage**: per config and variant, how many hidden units still hold a whole clause
   (:func:`torchfpe.metrics.whole_clause_cover`) next to the balanced-partition theory of the random
   split (:func:`torchfpe.lab.experiments.collisions.balanced_same_child_probability`);
3. **levels**: per config and variant, each reading's mean ± std over seeds;
4. **regression**: each metric's fold change (variant / dense, same config and seed) against the
   relative accuracy gain, for six readings (input-level, clause-relevant inputs, clauses; capacity
   and |cosine|), per run and per config mean, for each store and for all stores pooled;
5. **records**: the per-record readings (``--csv``).

The command is ``torchfpe fidelity STORE [STORE ...] [--out FILE.md] [--csv FILE.csv]
[--sections accuracy,coverage,levels,regression]``;
from Python, :func:`torchfpe.lab.api.fidelity`. A store that cannot be read (no ``meta.json``, a corrupt
run file, runs that are not Boolean) raises :class:`FidelityError`, a
:class:`~torchfpe.lab.sweep.StoreError` naming the file.
"""

from __future__ import annotations

import json
import math
import numbers
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch

from ... import metrics
from ..experiments.boolean import EXPERIMENT as BOOLEAN
from ..experiments.collisions import balanced_same_child_probability
from ..sweep.store import ResultStore, StoreError
from ...tasks import make_formula
from .markdown import Tables
from .stats import fmt_ci, fmt_fixed, fmt_num, fmt_p, fmt_pct, fmt_pm, ordered_variants, paired_test, summarize

#: (column, label) of the metric readings regressed against the gain.
READINGS = (
    ("capacity_mean", "input capacity"),
    ("cosine_abs_mean", "input |cosine|"),
    ("relevant_capacity_mean", "relevant-input capacity"),
    ("relevant_cosine_abs_mean", "relevant-input |cosine|"),
    ("clause_capacity_mean", "clause capacity"),
    ("clause_cosine_abs_mean", "clause |cosine|"),
)
SECTIONS = ("accuracy", "coverage", "levels", "regression")
#: Config fields that do not define a config cell (they vary within one cell or label the run).
_NOT_CELL = ("seed", "variants")
#: Record fields every Boolean record must carry for the analysis.
_NEEDED = ("variant", "seed", "test_accuracy", "hidden_weight")


class FidelityError(StoreError):
    """A store that cannot be analysed; the message names it (a runtime error: exit 1 on the command line)."""


# ------------------------------------------------------------------------------------------ loading
def load_records(stores: Sequence[str | Path]) -> list[dict]:
    """Every record of the Boolean runs in ``stores``, with the clause-level readings added.

    Each record gains ``store`` (the folder name), ``cell`` (its config without seed, as JSON) and
    the keys of :func:`metrics.clause_interference` and :func:`metrics.whole_clause_cover`, and
    ``*_fold`` for every reading of :data:`READINGS` against the dense record of the same run.
    Runs whose config appears in an earlier store are skipped (pooling counts each run once).
    """
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
        if not isinstance(meta, dict) or meta.get("experiment", "boolean") != "boolean":
            shown = meta.get("experiment") if isinstance(meta, dict) else meta
            raise FidelityError(f"{path} holds {shown!r} runs; fidelity reads Boolean runs only")
        for run in runs:
            try:
                config = dict(run["config"])
                identity = json.dumps(config, sort_keys=True, default=str)
                if identity in seen:
                    continue
                seen.add(identity)
                records.extend(_readings(path.name, config, run["records"]))
            except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as error:
                # a config BOOLEAN.make_config refuses is a corrupt file here, not the caller's usage error
                cause = f"missing field {error.args[0]}" if isinstance(error, KeyError) else str(error)
                raise FidelityError(f"{store.path(run['key'])}: not a readable Boolean run ({cause}); move it away "
                                    "and re-run `torchfpe reproduce boolean` with the same --out") from error
    if not records:
        raise FidelityError(f"no runs found in {', '.join(map(str, paths))}")
    return records


def _readings(store: str, config: Mapping, run_records: Iterable[Mapping]) -> list[dict]:
    boolean = BOOLEAN.make_config(**config)
    formula = make_formula(boolean.task_config())
    cell = json.dumps({k: v for k, v in sorted(config.items()) if k not in _NOT_CELL}, default=str)
    out = []
    for record in run_records:
        missing = [k for k in _NEEDED if k not in record]
        if missing:
            raise KeyError(", ".join(map(repr, missing)))
        accuracy = record["test_accuracy"]
        if isinstance(accuracy, bool) or not isinstance(accuracy, numbers.Real):
            raise ValueError(f"record field 'test_accuracy' must be a number, got {accuracy!r}")
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
        return tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))
                     for v in (values.get(k) for k in varying))

    return sorted(dict.fromkeys(r["cell"] for r in records), key=key)


def _variants(records: Sequence[Mapping]) -> list[str]:
    return ordered_variants({r["variant"] for r in records})


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def accuracy_table(records: Sequence[Mapping], tables: Tables | None = None) -> str:
    """Per cell and variant: test accuracy and paired tests (variant − dense, clause_shared − clause)."""
    tables = tables or Tables()
    varying = _varying_fields(records)
    rows = []
    for cell in _cells(records):
        mine = [r for r in records if r["cell"] == cell]
        by_variant = {v: {r["seed"]: r["test_accuracy"] for r in mine if r["variant"] == v} for v in _variants(mine)}
        for variant, values in by_variant.items():
            s = summarize(list(values.values()))
            other = "clause" if variant == "clause_shared" and "clause" in by_variant else "dense"
            test_cells = ["", "", ""]
            if variant != "dense" and other in by_variant:
                seeds = sorted(set(values) & set(by_variant[other]))
                t = paired_test([values[k] for k in seeds], [by_variant[other][k] for k in seeds])
                test_cells = [other, f"{fmt_pct(t.mean_diff, True)} {fmt_ci(t.ci_low, t.ci_high, True)}", fmt_p(t.p)]
            rows.append([_cell_label(cell, varying), variant, s.n, fmt_pm(s), fmt_ci(s.ci_low, s.ci_high), *test_cells])
    header = ["config", "variant", "seeds", "test acc % (mean ± std)", "95 % CI", "vs", "diff (points) [95 % CI]", "p"]
    return tables(header, rows, "Test accuracy per config and variant (mean ± sample std over seeds, 95 % t-interval) "
                  "and the paired difference over matched seeds to the variant named under \"vs\" (paired t-test).")


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


def coverage_table(records: Sequence[Mapping], tables: Tables | None = None) -> str:
    """Per cell and variant: gain, whole-clause cover measured on the trained weights, and theory.

    Measured cells read ``measured (theory)``; the theory is that of the random split.
    """
    tables = tables or Tables()
    varying = _varying_fields(records)
    rows = []
    for cell in _cells(records):
        mine = [r for r in records if r["cell"] == cell]
        config = json.loads(cell)
        theory = random_split_clause_theory(config["n_vars"], config["alpha"], config["literals"], config["neurons"],
                                            config["clauses"])
        for variant in _variants(mine):
            chosen = [r for r in mine if r["variant"] == variant]
            gain = summarize([r.get("relative_gain", math.nan) for r in chosen])
            cover = [fmt_fixed(_mean([r[k] for r in chosen]))
                     + (f" ({fmt_fixed(theory[t])})" if variant == "random" else "")
                     for k, t in (("units_whole", "units"), ("clauses_held", "held"), ("pairs_held", "pairs"))]
            gain_cell = "" if variant == "dense" else (
                f"{fmt_pct(gain.mean, True)} {fmt_ci(gain.ci_low, gain.ci_high, True)}")
            rows.append([_cell_label(cell, varying), variant, gain_cell, *cover])
    header = ["config", "variant", "rel. gain % [95 % CI]", "children holding a whole clause",
              "clauses held by some child", "(child, clause) pairs held"]
    return tables(header, rows, "Clauses kept whole by the trained first layer, mean over seeds: a child holds a "
                  "clause when its weights on all the clause's inputs are non-zero; for `random`, the balanced "
                  "random partition's theory (before the budget prunes) in brackets.")


def levels_table(records: Sequence[Mapping], tables: Tables | None = None) -> str:
    """Per cell and variant: mean ± std over seeds of each reading of :data:`READINGS`."""
    tables = tables or Tables()
    varying = _varying_fields(records)
    rows = []
    for cell in _cells(records):
        mine = [r for r in records if r["cell"] == cell]
        for variant in _variants(mine):
            chosen = [r for r in mine if r["variant"] == variant]
            values = [summarize([r[key] for r in chosen]) for key, _ in READINGS]
            rows.append([_cell_label(cell, varying), variant,
                         *(f"{fmt_fixed(v.mean)} ± {fmt_fixed(v.std)}" for v in values)])
    header = ["config", "variant", *(label for _, label in READINGS)]
    return tables(header, rows, "Interference readings of the first hidden layer per config and variant, mean ± "
                  "sample std over seeds (inputs, clause-relevant inputs, clauses as the features).")


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


def regression_table(rows: Sequence[Mapping], caption: str, tables: Tables | None = None) -> str:
    """The fits of :func:`regression_rows` or :func:`dense_level_rows` as one table."""
    tables = tables or Tables()
    body = [[r["scope"], r["split"], r["metric"], r["aggregation"], r["n"], fmt_num(r["slope"], 3),
             fmt_fixed(r["r2"], 3), fmt_fixed(r["pearson"], 2, signed=True), fmt_fixed(r["spearman"], 2, signed=True)]
            for r in rows]
    header = ["data", "split", "metric", "aggregation", "n", "slope", "R²", "Pearson r", "Spearman ρ"]
    return tables(header, body, caption)


def analyse(stores: Sequence[str | Path], sections: Sequence[str] = SECTIONS) -> tuple[str, list[dict]]:
    """The markdown report of ``sections`` over ``stores`` and the per-record readings."""
    records = load_records(stores)
    tables = Tables()
    names = list(dict.fromkeys(r["store"] for r in records))
    parts = [f"# Boolean fidelity analysis of {', '.join(names)}",
             "Data: synthetic Boolean DNF formulas generated by torchfpe.tasks.dnf (no external data). Accuracies "
             "and gains in %; CIs are two-sided 95 % t-intervals; \"—\" marks a value that cannot be computed."]
    for name in names:
        mine = [r for r in records if r["store"] == name]
        if "accuracy" in sections:
            parts += [f"## Accuracy: {name}", accuracy_table(mine, tables)]
        if "coverage" in sections:
            parts += [f"## Whole-clause cover: {name}", coverage_table(mine, tables)]
        if "levels" in sections:
            parts += [f"## Metric levels (first hidden layer): {name}", levels_table(mine, tables)]
    if "regression" in sections:
        scopes = [(name, [r for r in records if r["store"] == name]) for name in names]
        if len(names) > 1:
            scopes.append(("pooled: " + " + ".join(names), records))
        rows = [row for scope, chosen in scopes for row in regression_rows(chosen, scope)]
        parts += ["## Metric fold change against relative gain", regression_table(
            rows, "Least-squares fit of each reading's fold change (variant / dense, same config and seed) against "
            "the relative accuracy gain, per run and per config mean.", tables)]
        levels = [row for scope, chosen in scopes for row in dense_level_rows(chosen, scope)]
        parts += ["## Dense runs: metric level against test accuracy", regression_table(
            levels, "The dense runs alone: each reading's level against test accuracy.", tables)]
    return "\n\n".join(part.rstrip("\n") for part in parts) + "\n", records


def write_csv(records: Sequence[Mapping], path: str | Path) -> None:
    """The per-record readings, one row per record, columns in the order they first appear."""
    pd.DataFrame.from_records(list(records)).to_csv(path, index=False)
