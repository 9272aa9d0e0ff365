"""Markdown building blocks of ``report.md``: numbered tables, figure links, header, base config."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .constants import DASH, DATA_NAME
from .stats import fmt_value, study_axes


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], caption: str, data: str = DATA_NAME) -> str:
    """A Markdown table preceded by a caption line that names the data."""
    if data not in caption:
        caption = f"{caption} Data: {data}."
    lines = [caption, "", _md_row(header), "|" + "---|" * len(header)]
    lines += [_md_row(row) for row in rows]
    return "\n".join(lines) + "\n"


def _md_row(cells: Sequence[Any]) -> str:
    """One Markdown table row; literal pipes in cells are escaped."""
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


class Tables:
    """Numbers the tables of one report."""

    def __init__(self, data: str = DATA_NAME) -> None:
        self.count = 0
        self.data = data  # every caption names it

    def __call__(self, header: Sequence[str], rows: Sequence[Sequence[Any]], text: str) -> str:
        self.count += 1
        return md_table(header, rows, f"**Table {self.count}.** {text}", self.data)


def report_header(meta: dict) -> list[str]:
    """Title, command, date, data note and base config."""
    study = meta.get("study", "?")
    data = meta.get("data_name") or DATA_NAME
    out = [f"# torchfpe report: {study} study ({data})", ""]
    if meta.get("incomplete"):
        out += [f"**INCOMPLETE REPORT:** {meta['incomplete']}. The tables below cover only the runs present; "
                "re-run the command to complete the missing ones.", ""]
    out += ["Command:", "", "```bash", str(meta.get("command", "")), "```", ""]
    out += [f"- Date: {meta.get('date', DASH)}"]
    if meta.get("provenance"):  # meta.json files written before it was recorded have none
        from ..provenance import describe

        out.append(f"- Made with: {describe(meta['provenance'])}")
        for earlier in meta.get("provenance_earlier") or []:
            out.append(f"- Earlier runs in this folder made with: {describe(earlier)}")
    out += [f"- Data: {meta.get('dataset_note') or data}",
            f"- Seeds: {meta.get('seeds', DASH)}"]
    axes = study_axes(meta)
    if axes:
        out.append(f"- Swept: {', '.join(f'`{a}`' for a in axes)}")
    from .metric import metric_of

    metric = metric_of(meta)
    values = "Accuracies in %" if metric.is_accuracy else (
        f"Metric: {metric.label} ({metric.direction}{'; in %' if metric.percent else ''}); relative gains in %, "
        "signed so that positive is better than dense")
    out.append(f"- {values}; ± is the sample standard deviation over seeds; CIs are two-sided "
               "95 % t-intervals; \"—\" marks a value that cannot be computed (e.g. one seed).")
    return out + [""]


def base_table(meta: dict, tables: Tables) -> str:
    """The base config as a compact table of (field, value) pairs, four pairs a row."""
    base = meta.get("base") or {}
    items = [(f"`{k}`", fmt_value(v)) for k, v in base.items()]
    per_row = 4
    rows = []
    for i in range(0, len(items), per_row):
        chunk = items[i:i + per_row] + [("", "")] * (per_row - len(items[i:i + per_row]))
        rows.append([c for pair in chunk for c in pair])
    header = ["field", "value"] * per_row
    return tables(header, rows, "Base configuration of the study.")


def figure_md(name: str, caption: str) -> str:
    return f"![{caption}]({name})\n\n*{name}: {caption}*\n"
