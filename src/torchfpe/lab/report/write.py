"""Entry point of the report: ``records.csv`` from the records, then ``report.md`` and figures."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .constants import CONFIG_FIELDS, EXCLUDED_CSV_KEYS, LEGACY_PAPER, RESULT_FIELDS
from .markdown import base_table, report_header, Tables
from .pages import PAGE_KEY, OLD_PAGE_KEY, page_of, with_page_key
from .stats import axis_key, data_name, study_axes, variant_rank


def records_frame(records: list[dict], meta: dict) -> pd.DataFrame:
    """The records as a sorted DataFrame without ``hidden_weight`` (columns in a fixed order)."""
    rows = [{k: v for k, v in r.items() if k not in EXCLUDED_CSV_KEYS} for r in records]
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    page = page_of(meta)
    config_fields = tuple((meta.get("base") or {}).keys()) or CONFIG_FIELDS
    preferred = page.columns or config_fields + ("dataset",) + RESULT_FIELDS
    columns = [k for k in preferred if k in keys] + [k for k in keys if k not in preferred]
    frame = pd.DataFrame(rows, columns=columns)
    if frame.empty:
        return frame
    sort_cols = list(page.sort_by) if page.sort_by is not None else study_axes(meta)
    sort_cols = [c for c in sort_cols if c in frame.columns]
    keys_fn = []
    for c in sort_cols:
        keys_fn.append(frame[c].map(axis_key))
    if "variant" in frame.columns:
        keys_fn.append(frame["variant"].map(variant_rank))
    if "seed" in frame.columns:
        keys_fn.append(frame["seed"].map(axis_key))
    order = sorted(range(len(frame)), key=lambda i: tuple(k.iloc[i] for k in keys_fn))
    return frame.iloc[order].reset_index(drop=True)


def resolve_meta(meta: dict, records: list[dict]) -> dict:
    """``meta`` with its registered ``page`` (:func:`~.pages.page_of`: an old ``layout`` key or a stored
    Boolean study name is read) and ``data_name`` filled in."""
    page = page_of(meta)
    described = PAGE_KEY in meta or OLD_PAGE_KEY in meta
    meta = with_page_key(meta)
    if not described:  # a meta.json from before studies carried their own description
        if page.name == "headline":
            meta.setdefault("paper", LEGACY_PAPER)
        if meta.get("study") == "data":
            meta.setdefault("show_train", True)
    meta[PAGE_KEY] = page.name
    meta["data_name"] = data_name(records, meta)
    return meta


def write_report(out_dir: str | Path, meta: dict, records: list[dict]) -> Path:
    """Write ``records.csv``, ``report.md`` and the study's figures into ``out_dir``.

    Args:
        out_dir: output folder (created if needed).
        meta: ``study`` (its name), ``page`` (a registered report page, :data:`~.pages.PAGES`; the
            old key ``layout`` and a stored Boolean study name are read too), ``axis`` (swept field, a list for grids, None for headline/theory),
            ``seeds``, ``command``, ``base`` (base config dict), ``date``, ``dataset_note``, and
            optionally ``dataset`` (the data's name where records carry none), ``paper`` (the
            paper's numbers with the ``dataset`` they belong to; shown only where it matches),
            ``show_train`` (sweep: plot train accuracy and the train − test gap), ``metric`` (what the
            ``cells``, ``match`` and ``sweep`` pages report; default test accuracy, see
            :mod:`~.metric`).
        records: flat training records (one per config, variant, seed; ``hidden_weight`` is
            used for figures only; ``dataset`` names the data) or theory records.

    Returns:
        The path of ``report.md``.

    Raises:
        ValueError: for an unknown page, or a page that needs an axis without one.
    """
    records = list(records)
    meta = resolve_meta(meta, records)
    page = page_of(meta)
    if page.needs_axis and not study_axes(meta):
        raise ValueError(f"study {meta.get('study')!r} needs meta['axis'] (its report page {page.name!r} reads it)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = records_frame(list(records), meta)
    frame.to_csv(out / "records.csv", index=False)

    tables = Tables(meta["data_name"])
    lines = report_header(meta)
    lines += [base_table(meta, tables), ""]
    if frame.empty:
        lines += ["No records were given; nothing to report.", ""]
    elif page.needs_variant and "variant" not in frame.columns:
        lines += ["Records have no `variant` field; nothing to report.", ""]
    else:
        lines += page.section(frame, meta, records, out, tables)
    lines += ["", "Raw per-run results: [records.csv](records.csv).", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
