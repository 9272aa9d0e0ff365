"""Paired test-accuracy differences between two result folders of one study (e.g. two budgets).

Each record of folder B is matched with the record of folder A for the same variant, seed and swept
cell; the JSON gives, per variant and cell, both means ± std, the mean ± std of the seed-by-seed
differences (B − A, percentage points) and a paired t-test (scipy.stats.ttest_rel):

    torchfpe reproduce boolean --seeds 20 --out runs/headline-global
    torchfpe reproduce boolean --seeds 20 --set budget=structured --out runs/headline-structured
    .venv/bin/python bench/paired_records.py runs/headline-global runs/headline-structured \\
        --out bench/results/structured_accuracy_boolean.json
    .venv/bin/python bench/paired_records.py --smoke --out /tmp/paired.json   # two tiny studies, seconds
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import tempfile
from datetime import datetime, timezone
from pathlib import Path

#: Record fields that name a cell of a swept study (whichever the records carry).
CELL_FIELDS = ("neurons", "alpha", "clauses", "classes", "train_size")


def read(folder: Path) -> list[dict]:
    with open(folder / "records.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def compare(a_records: list[dict], b_records: list[dict]) -> list[dict]:
    cells = [f for f in CELL_FIELDS if f in a_records[0] and len({r[f] for r in a_records}) > 1]

    def key(record):
        return (record["variant"], *(record[f] for f in cells), record["seed"])

    a = {key(r): float(r["test_accuracy"]) for r in a_records}
    groups: dict[tuple, list[tuple[float, float]]] = {}
    for record in b_records:
        if key(record) in a:
            groups.setdefault(key(record)[:-1], []).append((a[key(record)], float(record["test_accuracy"])))
    rows = []
    for group, pairs in groups.items():
        first = [100 * x for x, _ in pairs]
        second = [100 * y for _, y in pairs]
        differences = [y - x for x, y in zip(first, second)]
        row = {"variant": group[0], **dict(zip(cells, group[1:])), "n": len(pairs),
               "a_mean": round(statistics.mean(first), 2), "b_mean": round(statistics.mean(second), 2),
               "difference_mean": round(statistics.mean(differences), 2)}
        if len(pairs) > 1:
            row.update(a_std=round(statistics.stdev(first), 2), b_std=round(statistics.stdev(second), 2),
                       difference_std=round(statistics.stdev(differences), 2))
            if row["difference_std"] > 0:
                from scipy import stats

                row["p"] = float(f"{stats.ttest_rel(second, first).pvalue:.2g}")
        rows.append(row)
    return rows


def smoke_folders(root: Path) -> tuple[Path, Path]:
    from torchfpe.lab import api

    tiny = {"n_vars": 12, "clauses": 3, "literals": 2, "train_size": 64, "test_size": 64, "warmup_epochs": 3,
            "epochs_after": 3}
    folders = []
    for budget in ("global", "structured"):
        folder = root / budget
        api.run_study("boolean", "headline", seeds=2, overrides={**tiny, "budget": budget}, out=folder,
                      backend="local", quiet=True)
        folders.append(folder)
    return folders[0], folders[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, nargs="?", help="result folder A (e.g. budget=global)")
    parser.add_argument("b", type=Path, nargs="?", help="result folder B (e.g. budget=structured)")
    parser.add_argument("--smoke", action="store_true", help="compare two tiny studies run here; needs --out")
    parser.add_argument("--out", type=Path, help="JSON result file")
    args = parser.parse_args()
    if args.smoke and args.out is None:
        parser.error("--smoke needs --out, so that a smoke run never replaces a result in bench/results/")
    if not args.smoke and (args.a is None or args.b is None or args.out is None):
        parser.error("give two result folders and --out")
    with tempfile.TemporaryDirectory() as scratch:
        a, b = smoke_folders(Path(scratch)) if args.smoke else (args.a, args.b)
        rows = compare(read(a), read(b))
        metas = [json.loads((folder / "meta.json").read_text()) for folder in (a, b)]
    result = {"meta": {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "smoke": args.smoke,
                       "a": {"folder": str(args.a), "command": metas[0].get("command")},
                       "b": {"folder": str(args.b), "command": metas[1].get("command")}},
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=lambda v: None if isinstance(v, float) and
                                   not math.isfinite(v) else v))
    for row in rows:
        print(row)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
