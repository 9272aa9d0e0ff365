"""The language-model tables of docs/reproduction.md, from result folders of `torchfpe reproduce lm` (or heads).

    python tools/lm_tables.py runs/lm-width [--metric bits_per_byte] [--axes d_ff] [--lower-is-better]

Per cell of the swept fields and variant: the metric (mean ± std, two-sided 95 % t-interval over seeds),
the relative gain over the dense run of the same seed (signed so that positive is better), a paired
t-test of the metric against dense over seeds, and the FFN non-zero counts (incoming / outgoing
layers) where the records carry them. Reads only ``records.csv``; statistics are the report's
(:mod:`torchfpe.lab.report.stats`). Until the report's layouts read a study's metric, this prints the
LM tables the docs show.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from torchfpe.lab.report.markdown import md_table
from torchfpe.lab.report.stats import ordered_variants, paired_test, summarize


def _num(value: float, digits: int) -> str:
    return "—" if value != value else f"{value:.{digits}f}"


def table(folder: Path, metric: str, axes: list[str], lower: bool, percent: bool) -> str:
    frame = pd.read_csv(folder / "records.csv")
    scale, digits = (100.0, 1) if percent else (1.0, 3)
    rows = []
    cells = frame.groupby(axes, sort=True) if axes else [((), frame)]
    for cell, sub_cell in cells:
        cell = cell if isinstance(cell, tuple) else (cell,)
        dense = sub_cell[sub_cell["variant"] == "dense"].set_index("seed")[metric]
        for variant in ordered_variants(sub_cell["variant"]):
            sub = sub_cell[sub_cell["variant"] == variant].set_index("seed")
            value = summarize(sub[metric] * scale)
            gain = summarize(sub["relative_gain"] * 100.0)
            seeds = sorted(set(sub.index) & set(dense.index))
            test = paired_test(sub.loc[seeds, metric].tolist(), dense.loc[seeds].tolist()) if variant != "dense" else None
            ffn = (f"{int(sub['ffn_in_nonzero'].iloc[0])} / {int(sub['ffn_out_nonzero'].iloc[0])}"
                   if "ffn_in_nonzero" in sub else "")
            rows.append([*map(str, cell), variant, str(value.n),
                         f"{_num(value.mean, digits)} ± {_num(value.std, digits)}",
                         f"[{_num(value.ci_low, digits)}, {_num(value.ci_high, digits)}]",
                         "—" if variant == "dense" else f"{gain.mean:+.2f} ± {gain.std:.2f}",
                         "—" if variant == "dense" else f"[{gain.ci_low:+.2f}, {gain.ci_high:+.2f}]",
                         "—" if test is None else f"{test.p:.1e}",
                         str(int(sub["nonzero_parameters"].iloc[0])), *([ffn] if ffn else []),
                         str(int(sub["hidden_units"].iloc[0]))])
    name = metric.replace("_", " ")
    header = [*axes, "variant", "n seeds", f"{name} (mean ± std)", "95 % CI", "rel. gain % (mean ± std)",
              "rel. gain 95 % CI", "paired t-test p", "non-zero params",
              *(["FFN non-zeros in / out"] if "ffn_in_nonzero" in frame else []), "hidden units"]
    better = "lower" if lower else "higher"
    caption = (f"{name} ({better} is better) per cell and variant on {frame['dataset'].iloc[0]}; relative gain "
               f"over the dense run of the same seed, positive = better; p: paired t-test of {name} against dense "
               "over seeds.")
    dataset = str(frame["dataset"].iloc[0])
    return md_table(header, rows, caption, data=dataset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--metric", default=None, help="record field (default: meta.json's metric, else bits_per_byte)")
    parser.add_argument("--axes", default=None, help="comma-separated swept fields (default: meta.json's)")
    args = parser.parse_args()
    for folder in args.folders:
        meta = json.loads((folder / "meta.json").read_text())
        spec = meta.get("metric") or {}
        metric = args.metric or spec.get("key") or ("bits_per_byte" if meta.get("group") == "lm" else "test_accuracy")
        lower = not spec.get("higher_is_better", metric != "bits_per_byte")
        axis = meta.get("axis")
        axes = args.axes.split(",") if args.axes else ([axis] if isinstance(axis, str) else list(axis or []))
        print(f"### {folder}\n\n{table(folder, metric, axes, lower, percent=metric.endswith('accuracy'))}\n")


if __name__ == "__main__":
    main()
