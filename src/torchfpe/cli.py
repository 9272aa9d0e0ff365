"""The ``torchfpe`` command line: thin wrappers that parse, call and print."""

from __future__ import annotations

import datetime as _dt
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer
import yaml

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Fixed Parameter Expansion: reproduce the paper's experiments, run sweeps, build reports.")
reproduce_app = typer.Typer(no_args_is_help=True, help="Reproduce the paper's experiments.")
app.add_typer(reproduce_app, name="reproduce")

BackendOption = typer.Option("process", "--backend", help="local (in this process), process (a pool, one "
                             "thread per process) or ray")


def parse_value(raw: str):
    """A ``--set`` value: YAML (ints, floats, null, [lists]), with two fixes for config values.

    ``01`` stays the string "01" (an encoding name, not the number 1), and ``5e-3`` becomes a float
    (YAML 1.1 reads exponents without a dot as strings).
    """
    text = raw.strip()
    if len(text) > 1 and text.isdigit() and text.startswith("0"):
        return text
    value = yaml.safe_load(text) if text else ""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_sets(values: list[str]) -> dict:
    """``key=value`` pairs, each value read by :func:`parse_value`."""
    parsed = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"--set expects key=value, got {item!r}")
        parsed[key.strip()] = parse_value(raw)
    return parsed


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def run_study_into(out: Path, meta: dict, experiment: str, config_dicts: list[dict], *, backend: str,
                   workers: Optional[int], address: Optional[str], quiet: bool) -> Path:
    """Run the jobs through the store in ``out`` and write the report; returns the report's path.

    ``meta`` names the study and its ``axes``; the command line, date and data note are added here.
    """
    from .experiments.studies import DATASET_NOTE
    from .sweep import BACKENDS, ResultStore, StoreError, execute, make_jobs

    if backend not in BACKENDS:
        _fail(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    try:
        jobs = make_jobs(experiment, config_dicts)
    except (TypeError, ValueError) as error:
        _fail(str(error))
    store = ResultStore(out)
    axes = meta.pop("axes")
    meta = {
        **meta, "axis": axes[0] if len(axes) == 1 else (axes or None),
        "command": " ".join(["torchfpe", *map(shlex.quote, sys.argv[1:])]),
        "date": _dt.date.today().isoformat(), "dataset_note": meta.get("dataset_note", DATASET_NOTE),
        "experiment": experiment, "keys": [job.key for job in jobs],
    }
    try:
        store.write_meta(meta)
        summary = execute(jobs, store, backend=backend, workers=workers, address=address, quiet=quiet,
                          description=meta["study"])
    except (StoreError, ImportError, ValueError) as error:
        _fail(str(error))
    if not quiet:
        typer.echo(f"{summary['done']} runs done, {summary['skipped']} already in {out}")
    return build_report(out)


def build_report(out: Path) -> Path:
    from .report import write_report
    from .sweep import ResultStore

    store = ResultStore(out)
    meta = store.read_meta()
    keys = set(meta.get("keys") or store.keys())
    records = [record for run in store.all_runs() if run["key"] in keys for record in run["records"]]
    return write_report(out, meta, records)


@reproduce_app.command("boolean")
def reproduce_boolean(
    study: str = typer.Option("headline", help="headline | neurons | clauses | alpha | metrics | data | theory"),
    seeds: Optional[int] = typer.Option(None, help="seeds 0..N-1 per config (default: the study's, 10 for headline)"),
    out: Optional[Path] = typer.Option(None, help="result folder (default runs/boolean-<study>); re-running "
                                       "with the same folder completes only the missing runs"),
    set_: list[str] = typer.Option([], "--set", help="override a config field, e.g. --set clauses=12 "
                                   "(a swept field takes a list: --set 'neurons=[8,16]')"),
    backend: str = BackendOption,
    workers: Optional[int] = typer.Option(None, help="processes for --backend process (default: all cores)"),
    address: Optional[str] = typer.Option(None, help="Ray cluster address for --backend ray (e.g. auto)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Reproduce the paper's Boolean DNF results (default: the headline, m = h = 8, alpha = 2)."""
    from .experiments.studies import STUDIES, study_configs

    if study not in STUDIES:
        _fail(f"unknown study {study!r}; choose from {', '.join(STUDIES)}")
    chosen = STUDIES[study]
    seeds = seeds if seeds is not None else chosen.default_seeds
    try:
        overrides = parse_sets(set_)
        config_dicts = study_configs(chosen, seeds, overrides)
        base = _base_config(chosen.experiment, config_dicts[0])
    except (ValueError, TypeError, typer.BadParameter) as error:
        _fail(str(error))
    out = out or Path("runs") / f"boolean-{study}"
    meta = {"study": study, "axes": list(chosen.axes), "seeds": seeds, "base": base, "overrides": overrides,
            "description": chosen.description, "group": chosen.group, **chosen.meta}
    report = run_study_into(out, meta, chosen.experiment, config_dicts, backend=backend, workers=workers,
                            address=address, quiet=quiet)
    typer.echo(f"report: {report}")


def _base_config(experiment: str, config: dict) -> dict:
    from .sweep.runner import experiment_module

    return experiment_module(experiment).make_config(**config).to_dict()


@app.command()
def sweep(
    sweep_file: Path = typer.Argument(..., exists=True, dir_okay=False, help="YAML: experiment, grid, base, seeds"),
    out: Optional[Path] = typer.Option(None, help="result folder (default runs/<sweep file name>)"),
    backend: str = BackendOption,
    workers: Optional[int] = typer.Option(None, help="processes for --backend process (default: all cores)"),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (e.g. auto); without it Ray starts locally"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Run a sweep file: every combination of its grid × seeds, resumably, then write its report.

    \b
    experiment: boolean        # or theory
    study: neurons             # report layout: headline|neurons|clauses|alpha|metrics|data|theory
    grid: {neurons: [8, 16]}   # fields swept (product)
    base: {clauses: 8}         # fields fixed
    seeds: 10                  # seeds 0..9, or a list [0, 3, 7]
    """
    from .experiments.studies import STUDIES, grid_configs

    try:
        spec = yaml.safe_load(sweep_file.read_text()) or {}
    except yaml.YAMLError as error:
        _fail(f"{sweep_file} is not valid YAML: {error}")
    if not isinstance(spec, dict):
        _fail(f"{sweep_file} must hold a mapping with keys experiment, grid, base, seeds")
    unknown = set(spec) - {"experiment", "study", "grid", "base", "seeds", "name"}
    if unknown:
        _fail(f"{sweep_file}: unknown key(s) {sorted(unknown)}; allowed: experiment, study, grid, base, seeds, name")
    experiment = spec.get("experiment", "boolean")
    grid = spec.get("grid") or {}
    base = spec.get("base") or {}
    seeds = spec.get("seeds", 1)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not isinstance(grid, dict) or not isinstance(base, dict) or not seed_list:
        _fail("grid and base must be mappings and seeds an int >= 1 or a non-empty list")
    names = list(grid)
    axes = {n: grid[n] if isinstance(grid[n], list) else [grid[n]] for n in names}
    config_dicts = grid_configs(axes, base, seed_list)
    if experiment == "theory":
        study = "theory"
    else:
        study = spec.get("study") or ("headline" if not names else "metrics" if len(names) > 1 else names[0])
    if study not in STUDIES:
        study = "metrics"  # any other single swept field gets the per-cell tables
    out = out or Path("runs") / sweep_file.stem
    meta = {"study": study, "axes": names, "seeds": len(seed_list), "base": base, "grid": grid,
            "name": spec.get("name", sweep_file.stem)}
    report = run_study_into(out, meta, experiment, config_dicts, backend=backend, workers=workers,
                            address=address, quiet=quiet)
    typer.echo(f"report: {report}")


@app.command()
def report(out: Path = typer.Argument(..., help="a result folder written by reproduce or sweep")) -> None:
    """Rebuild records.csv, report.md and the figures from the result store alone."""
    from .sweep import StoreError

    try:
        path = build_report(out)
    except StoreError as error:
        _fail(str(error))
    typer.echo(f"report: {path}")


if __name__ == "__main__":  # pragma: no cover
    app()
