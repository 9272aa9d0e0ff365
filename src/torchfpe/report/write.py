"""Entry point of the report: ``records.csv`` from the records, then ``report.md`` and figures."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .constants import CONFIG_FIELDS, EXCLUDED_CSV_KEYS, RESULT_FIELDS, STUDIES, SWEEP_STUDIES, THEORY_FIELDS
from .markdown import _base_table, _header, _Tables
from .sections import headline_section, metrics_section, sweep_section, theory_section
from .stats import _axis_key, study_axes, variant_rank


def records_frame(records: list[dict], meta: dict) -> pd.DataFrame:
    """The records as a sorted DataFrame without ``hidden_weight`` (columns in a fixed order)."""
    rows = [{k: v for k, v in r.items() if k not in EXCLUDED_CSV_KEYS} for r in records]
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    preferred = THEORY_FIELDS if meta.get("study") == "theory" else CONFIG_FIELDS + RESULT_FIELDS
    columns = [k for k in preferred if k in keys] + [k for k in keys if k not in preferred]
    frame = pd.DataFrame(rows, columns=columns)
    if frame.empty:
        return frame
    sort_cols = ["k", "alpha"] if meta.get("study") == "theory" else study_axes(meta)
    sort_cols = [c for c in sort_cols if c in frame.columns]
    keys_fn = []
    for c in sort_cols:
        keys_fn.append(frame[c].map(_axis_key))
    if "variant" in frame.columns:
        keys_fn.append(frame["variant"].map(variant_rank))
    if "seed" in frame.columns:
        keys_fn.append(frame["seed"].map(_axis_key))
    order = sorted(range(len(frame)), key=lambda i: tuple(k.iloc[i] for k in keys_fn))
    return frame.iloc[order].reset_index(drop=True)


def write_report(out_dir: str | Path, meta: dict, records: list[dict]) -> Path:
    """Write ``records.csv``, ``report.md`` and the study's figures into ``out_dir``.

    Args:
        out_dir: output folder (created if needed).
        meta: ``study`` (headline / neurons / clauses / alpha / metrics / data / theory),
            ``axis`` (swept field, a list for metrics, None for headline/theory), ``seeds``,
            ``command``, ``base`` (base config dict), ``date``, ``dataset_note``.
        records: flat training records (one per config, variant, seed; ``hidden_weight`` is
            used for figures only) or theory records for ``study == "theory"``.

    Returns:
        The path of ``report.md``.

    Raises:
        ValueError: for an unknown study, or a sweep study without an axis.
    """
    study = meta.get("study")
    if study not in STUDIES:
        raise ValueError(f"unknown study {study!r}; expected one of {sorted(STUDIES)}")
    if (study in SWEEP_STUDIES or study == "metrics") and not study_axes(meta):
        raise ValueError(f"study {study!r} needs meta['axis']")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = records_frame(list(records), meta)
    frame.to_csv(out / "records.csv", index=False)

    tables = _Tables()
    lines = _header(meta)
    lines += [_base_table(meta, tables), ""]
    if frame.empty:
        lines += ["No records were given; nothing to report.", ""]
    elif study == "theory":
        lines += theory_section(frame, meta, out, tables)
    elif "variant" not in frame.columns:
        lines += ["Records have no `variant` field; nothing to report.", ""]
    elif study == "headline":
        lines += headline_section(frame, meta, list(records), out, tables)
    elif study == "metrics":
        lines += metrics_section(frame, meta, out, tables)
    else:
        lines += sweep_section(frame, meta, out, tables)
    lines += ["", "Raw per-run results: [records.csv](records.csv).", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
