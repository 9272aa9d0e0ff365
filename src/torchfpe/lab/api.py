"""Library orchestration of studies and sweeps: what the command line calls, callable from Python.

Every function validates all of its input (study, seeds, overrides, every config of the grid, the
output folder) before it trains or writes anything, and raises exceptions instead of printing:

- :class:`~torchfpe.core.validation.InvalidParameterError` for a caller's mistake (a bad name,
  value, sweep file or output folder); the CLI shows it as one line and exits 2;
- :class:`~torchfpe.lab.sweep.StoreError` for a result folder that cannot be used (corrupt or foreign
  files, another run writing to it, an incomplete report in strict mode); the CLI exits 1.

``run_study("boolean", "headline", seeds=2, overrides={"clauses": 12}, out="runs/m12")`` runs a
study's grid through the resumable store and returns the path of its ``report.md``; ``device="cuda"``
trains there (a runtime option: the stored runs, their keys and records are those of any device, see
:mod:`torchfpe.lab.devices`); ``layout="packed"`` trains phase 2's expanded models packed where they train
one at a time (a runtime option too, default ``"auto"``: see :mod:`torchfpe.lab.train_layout`).
"""

from __future__ import annotations

import datetime as _dt
import math
import numbers
import os
import shlex
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core.validation import Interval, InvalidParameterError, Options, check_param, invalid, plain_number
from .devices import device_name
from .train_layout import check_train_layout

__all__ = [
    "build_report", "config_fields", "fidelity", "parse_override", "parse_overrides", "run_study", "run_sweep_file",
    "IncompleteResultsError",
]

SWEEP_KEYS = ("experiment", "study", "grid", "base", "seeds", "name")
#: More seeds per config than any study needs; a bound keeps a typo (--seeds 10000000000) from filling memory.
MAX_SEEDS = 100_000


# ------------------------------------------------------------------------------- config field types
def config_class(experiment: str) -> type:
    """The config dataclass of a registered experiment."""
    from .experiments.registry import experiment as registered

    return registered(experiment).config


def config_fields(experiment: str) -> dict[str, Any]:
    """Field name -> resolved type hint of an experiment's config (``int | None``, ``float``, ...)."""
    import dataclasses

    cls = config_class(experiment)
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    args = typing.get_args(hint)
    if _is_union(hint):
        return " or ".join(_type_name(a) for a in args)
    origin = typing.get_origin(hint)
    if origin in (tuple, list):
        return "a list such as a+b"
    return {int: "an int", float: "a float", str: "a string", bool: "true or false"}.get(
        hint, getattr(hint, "__name__", str(hint)))


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _parse_scalar(hint: Any, text: str) -> Any:
    """``text`` read as ``hint``; raises ValueError when it is not one."""
    lowered = text.strip().lower()
    if _is_union(hint):
        args = typing.get_args(hint)
        if type(None) in args and lowered in ("null", "none", "~"):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _parse_scalar(arg, text)
            except ValueError:
                continue
        raise ValueError(text)
    if hint is type(None):
        if lowered in ("null", "none", "~"):
            return None
        raise ValueError(text)
    if hint is bool:
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
        raise ValueError(text)
    if hint is int:
        cleaned = text.strip().replace("_", "")
        if not cleaned.lstrip("+-").isdigit():
            raise ValueError(text)
        return int(cleaned)
    if hint is float:
        value = float(text.strip())
        return value
    return text.strip()  # strings, paths, and "a+b" lists (the config splits them itself)


def parse_override(experiment: str, name: str, text: str) -> Any:
    """A ``--set name=text`` value read by the config field's type; ``[a, b]`` gives a list (a swept axis).

    ``01`` stays the string "01" for a string field; ``5e-3`` is a float for a float field; ``null``
    is None where the field allows it; ``2.5`` for an int field is an error.
    """
    fields = config_fields(experiment)
    if name not in fields:
        raise InvalidParameterError(f"unknown {experiment} config field {name!r}; fields: {', '.join(sorted(fields))}")
    hint = fields[name]
    stripped = text.strip()
    if stripped.startswith("[") and stripped.endswith("]"):
        inner = stripped[1:-1].strip()
        items = [item.strip() for item in inner.split(",")] if inner else []
        if not items:
            raise InvalidParameterError(f"--set {name}=[] gives no value; a swept field takes one or more values, "
                                        f"e.g. --set '{name}=[a,b]'")
        return [_parse_one(experiment, name, hint, item) for item in items]
    return _parse_one(experiment, name, hint, stripped)


def _parse_one(experiment: str, name: str, hint: Any, text: str) -> Any:
    try:
        return _parse_scalar(hint, text)
    except ValueError:
        raise InvalidParameterError(f"--set {name}={text}: the {experiment} config field {name!r} must be "
                                    f"{_type_name(hint)}; got {text!r}") from None


def parse_overrides(experiment: str, items: Sequence[str]) -> dict:
    """``["name=value", ...]`` (the CLI's ``--set``) parsed by the config fields' types."""
    parsed = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise InvalidParameterError(f"--set expects key=value, got {item!r}")
        parsed[name.strip()] = parse_override(experiment, name.strip(), text)
    return parsed


# ------------------------------------------------------------------------------------ the out folder
def resolve_out(out: str | os.PathLike) -> Path:
    """The result folder: refused unless it is (or can be made) a writable folder; then created."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise InvalidParameterError(f"the 'out' folder {str(path)!r} is a file, not a folder; choose another --out")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise InvalidParameterError(f"the 'out' folder {str(path)!r} cannot be created: {str(probe)!r} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InvalidParameterError(f"the 'out' folder {str(path)!r} is not writable (no write permission on "
                                    f"{str(probe)!r}); choose another --out")
    try:  # called after every other check: the folder is the first thing written
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InvalidParameterError(f"the 'out' folder {str(path)!r} cannot be created ({error.strerror}); "
                                    "choose another --out") from None
    return path


# ------------------------------------------------------------------------------------ orchestration
def run_study(
    group: str,
    study: str,
    *,
    seeds: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    out: str | os.PathLike | None = None,
    backend: str = "process",
    workers: int | None = None,
    address: str | None = None,
    quiet: bool = False,
    command: str | None = None,
    device: str | None = "cpu",
    plugins: Sequence[str] = (),
    layout: str = "auto",
) -> Path:
    """Run one study of a group (``torchfpe reproduce <group> --study <study>``); returns report.md's path.

    ``overrides`` replace config fields; a list replaces a swept axis (``{"neurons": [8, 16]}``).
    The default ``out`` is ``runs/<group>-<study>``; re-running with the same folder completes only
    the missing runs. ``command`` is recorded in the report (default: this Python call). ``plugins``:
    modules (names or .py paths) imported here and in every worker first (:mod:`torchfpe.lab.plugins`).
    ``layout``: ``"auto"``, ``"masked"`` or ``"packed"``, the layout phase 2 trains in
    (:mod:`torchfpe.lab.train_layout`; not part of a run key, like ``device``).
    """
    from .experiments.studies import groups, study_configs

    _load_plugins(plugins, "run_study")
    known = groups()
    check_param("group", group, [Options(tuple(known))], "run_study")
    studies = known[group]
    check_param("study", study, [Options(tuple(studies))], f"run_study (group {group!r})")
    chosen = studies[study]
    check_param("seeds", seeds, [Interval(int, 1, MAX_SEEDS), None], "run_study")
    check_param("out", out, [str, os.PathLike, None], "run_study")
    seeds = plain_number(seeds)
    _check_runner(backend, workers, address, quiet, "run_study")
    device = device_name(device, "run_study")  # checked against this machine before any work or write
    layout = check_train_layout(layout, "run_study")
    if overrides is not None and not isinstance(overrides, Mapping):
        raise invalid("overrides", "run_study", "a mapping of config field -> value, or None", overrides)
    overrides = {name: [plain_number(v) for v in value] if isinstance(value, list) else plain_number(value)
                 for name, value in (overrides or {}).items()}  # NumPy numbers as Python ones (meta.json is JSON)
    experiment = chosen.experiment
    fields = config_fields(experiment)
    for name, value in overrides.items():
        if name == "seed":
            raise InvalidParameterError("seed is set by --seeds (seeds 0..N-1), not by --set")
        if name not in fields:
            raise InvalidParameterError(f"the {experiment} experiment's config has no field {name!r}"
                                        f"{_option_hint(name)}; fields: {', '.join(sorted(fields))}")
        if isinstance(value, list):
            if not value:
                raise InvalidParameterError(f"{name}=[] gives no value; a swept field takes one or more values")
            if name not in chosen.axes:
                swept = ", ".join(chosen.axes) or "nothing"
                raise InvalidParameterError(
                    f"{name}={value!r}: a list sweeps a field, but study {study!r} sweeps {swept}; give {name} one "
                    "value, or run a sweep file (torchfpe sweep) to sweep it")
    seeds = seeds if seeds is not None else chosen.default_seeds
    config_dicts = study_configs(chosen, seeds, overrides)
    jobs = _make_jobs(experiment, config_dicts, quiet, device)
    _check_workers(experiment, jobs, backend)
    base = jobs[0].config.to_dict()
    out_path = Path(out if out is not None else Path("runs") / f"{group}-{study}")
    made = not out_path.exists()
    out_path = resolve_out(out_path)
    meta = {"study": study, "group": group, "axes": list(chosen.axes), "seeds": seeds, "base": base,
            "overrides": overrides, "description": chosen.description, **chosen.meta}
    command = command or _python_call("run_study", group, study, seeds=seeds, overrides=overrides or None, out=out,
                                      device=None if device == "cpu" else device,
                                      layout=None if layout == "auto" else layout)
    return _run_into(out_path, meta, experiment, jobs, backend=backend, workers=workers, address=address,
                     quiet=quiet, command=command, device=device, made=made, layout=layout)


def run_sweep_file(
    path: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    backend: str = "process",
    workers: int | None = None,
    address: str | None = None,
    quiet: bool = False,
    command: str | None = None,
    device: str | None = "cpu",
    plugins: Sequence[str] = (),
    layout: str = "auto",
) -> Path:
    """Run a sweep file (YAML: ``experiment``, ``study``, ``grid``, ``base``, ``seeds``, ``name``); returns report.md's
    path. ``plugins`` and ``layout`` as for :func:`run_study`."""
    from .experiments.registry import experiments
    from .experiments.studies import grid_configs

    _load_plugins(plugins, "run_sweep_file")
    _check_runner(backend, workers, address, quiet, "run_sweep_file")
    device = device_name(device, "run_sweep_file")
    layout = check_train_layout(layout, "run_sweep_file")
    check_param("path", path, [str, os.PathLike], "run_sweep_file")
    check_param("out", out, [str, os.PathLike, None], "run_sweep_file")
    path = Path(path)
    spec = _read_sweep_file(path)
    unknown = sorted(set(spec) - set(SWEEP_KEYS))
    if unknown:
        raise InvalidParameterError(f"{path}: unknown key(s) {unknown}; allowed: {', '.join(SWEEP_KEYS)}")
    experiment = spec.get("experiment", "boolean")
    known = experiments()
    if experiment not in known:
        raise InvalidParameterError(f"{path}: unknown experiment {experiment!r}; known: {', '.join(known)}")
    grid, base = spec.get("grid") or {}, spec.get("base") or {}
    if not isinstance(grid, Mapping):
        raise InvalidParameterError(f"{path}: 'grid' must be a mapping of field -> list of values; got {grid!r}")
    if not isinstance(base, Mapping):
        raise InvalidParameterError(f"{path}: 'base' must be a mapping of field -> value; got {base!r}")
    seeds = spec.get("seeds", 1)
    if isinstance(seeds, list):
        if not seeds:
            raise InvalidParameterError(f"{path}: 'seeds' is an empty list; give an int >= 1 or a list of seeds")
        for seed in seeds:
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                raise InvalidParameterError(f"{path}: every entry of 'seeds' must be an int >= 0; got {seed!r}")
        seed_list = list(seeds)
    elif isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= MAX_SEEDS:
        raise InvalidParameterError(f"{path}: 'seeds' must be an int >= 1 (seeds 0..N-1, at most {MAX_SEEDS}) or a "
                                    f"non-empty list of ints; got {seeds!r}")
    else:
        seed_list = list(range(seeds))
    fields = config_fields(experiment)
    for name in [*grid, *base]:
        if name not in fields:
            raise InvalidParameterError(f"{path}: the {experiment} experiment's config has no field {name!r}; "
                                        f"fields: {', '.join(sorted(fields))}")
        if name == "seed":
            raise InvalidParameterError(f"{path}: set seeds with the 'seeds' key, not as a config field")
    axes = {}
    for name, values in grid.items():
        values = values if isinstance(values, list) else [values]
        if not values:
            raise InvalidParameterError(f"{path}: grid axis {name!r} has no values; give one or more, e.g. "
                                        f"{name}: [a, b]")
        axes[name] = values
    names = list(axes)
    studies = {s.name: s for s in known[experiment].studies}
    study = _sweep_study(path, spec, experiment, studies, names)
    jobs = _make_jobs(experiment, grid_configs(axes, base, seed_list), quiet, device, "run_sweep_file")
    _check_workers(experiment, jobs, backend)
    out_path = Path(out if out is not None else Path("runs") / path.stem)
    made = not out_path.exists()
    out_path = resolve_out(out_path)
    meta = {"study": study, "group": studies[study].group, "axes": names, "seeds": len(seed_list),
            "base": dict(base), "grid": dict(grid), "name": spec.get("name", path.stem), **studies[study].meta}
    command = command or _python_call("run_sweep_file", str(path), out=out, device=None if device == "cpu" else device,
                                      layout=None if layout == "auto" else layout)
    return _run_into(out_path, meta, experiment, jobs, backend=backend, workers=workers, address=address,
                     quiet=quiet, command=command, device=device, made=made, layout=layout)


def _sweep_study(path: Path, spec: Mapping, experiment: str, studies: Mapping[str, Any], names: list[str]) -> str:
    """The study whose report page a sweep file's results get: the one its ``study:`` names; else (files
    written without it) the old rule (``headline`` for no swept field, the study named after the one swept
    field, ``metrics`` for several), then the experiment's study sweeping exactly these fields, then its only
    study."""
    if "study" in spec:
        study = spec["study"]
        if study not in studies:
            raise InvalidParameterError(f"{path}: unknown study {study!r} for experiment {experiment!r}; the study "
                                        f"names the report page, one of: {', '.join(studies)}")
        return study
    guesses = ["headline" if not names else "metrics" if len(names) > 1 else names[0], "metrics",
               *(name for name, s in studies.items() if set(s.axes) == set(names)),
               *(studies if len(studies) == 1 else ())]
    for guess in guesses:
        if guess in studies:
            return guess
    raise InvalidParameterError(f"{path}: no report page for this sweep; add 'study:' (one of {', '.join(studies)})")


def _read_sweep_file(path: Path) -> dict:
    import yaml

    if not path.is_file():
        raise InvalidParameterError(f"sweep file {str(path)!r} does not exist or is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise InvalidParameterError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}); save it as "
                                    "UTF-8 YAML") from None
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise InvalidParameterError(f"{path} is not valid YAML: {error}") from None
    if spec is None:
        raise InvalidParameterError(f"{path} is empty; a sweep file holds a mapping with keys "
                                    f"{', '.join(SWEEP_KEYS)} (see torchfpe sweep --help)")
    if not isinstance(spec, dict):
        raise InvalidParameterError(f"{path} must hold a mapping with keys {', '.join(SWEEP_KEYS)}; got "
                                    f"{type(spec).__name__}")
    return spec


def _check_runner(backend, workers, address, quiet, owner: str) -> None:
    from .sweep import BACKENDS

    check_param("backend", backend, [Options(BACKENDS)], owner)
    check_param("workers", workers, [Interval(int, 1), None], owner)
    check_param("address", address, [str, None], owner)
    check_param("quiet", quiet, [bool], owner)


def _load_plugins(plugins, owner: str) -> None:
    """Import the plugin modules (and the installed entry points) before any name is looked up."""
    from . import plugins as door

    if isinstance(plugins, (str, os.PathLike)):
        plugins = [plugins]
    if not isinstance(plugins, Sequence):
        raise invalid("plugins", owner, "a list of module names or .py files", plugins)
    door.load(plugins, owner=owner)


def _check_workers(experiment: str, jobs, backend: str) -> None:
    """Refuse a pool or Ray run that uses something only this process knows (before anything is written)."""
    from .plugins import check_reachable

    check_reachable(experiment, [job.config.to_dict() for job in jobs], backend)


def _option_hint(name: str) -> str:
    option = {"embeddings": "--embeddings", "data_dir": "--data"}.get(name)
    return f" ({option} applies only to experiments that read such files)" if option else ""


def _make_jobs(experiment: str, config_dicts: list[dict], quiet: bool = True, device: str = "cpu",
               owner: str = "run_study"):
    """Every config of the grid built (and so validated) before any work or write.

    An experiment may also declare ``check(config)`` for checks that need the file system (a data
    folder or an embedding file exists and reads); it runs here, once per config without the seed,
    so a wrong path fails before ``meta.json`` is written. Loading the data can take a while (a
    built-in stand-in is built the first time it is asked for), so a spinner says so unless ``quiet``.
    """
    from .._status import step

    from .experiments.registry import experiment as registered
    from .sweep import make_jobs

    try:
        jobs = make_jobs(experiment, config_dicts)
    except InvalidParameterError:
        raise
    except (TypeError, ValueError) as error:  # an experiment's own check that is not yet on the validator
        raise InvalidParameterError(str(error)) from None
    if device == "mps":  # MPS has no float64
        from .devices import check_dtype_on
        import torch

        for job in jobs:
            check_dtype_on(torch.device("mps"), getattr(job.config, "dtype", "float32"), owner)
    check = registered(experiment).check
    if check is not None:
        # Missing or corrupt data (torchfpe.data.DataError) is a runtime error, not a usage error: it
        # propagates as it is (exit 1 on the command line), still before anything is written.
        from ..data.embeddings import DataError

        distinct = list({job.config.without_seed(): job.config for job in jobs}.values())
        with step(f"preparing the {experiment} data", quiet) as say:
            for index, config in enumerate(distinct, 1):
                say(f"preparing the {experiment} data (config {index}/{len(distinct)}{_data_fields(config)})")
                try:
                    check(config)
                except (InvalidParameterError, DataError):
                    raise
                except (TypeError, ValueError) as error:  # a check's own word on a config value: a usage error
                    raise InvalidParameterError(str(error)) from None
    return jobs


def _data_fields(config) -> str:
    """``", embeddings=fashion-mnist-ae"``: the config fields that name its data, for the spinner."""
    named = [(name, getattr(config, name, None)) for name in ("embeddings", "data_dir", "dataset", "corpus")]
    return "".join(f": {name}={value}" if i == 0 else f", {name}={value}"
                   for i, (name, value) in enumerate((n, v) for n, v in named if v is not None))


def _python_call(function: str, *args, **kwargs) -> str:
    shown = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items() if v is not None]
    return f"python -c 'torchfpe.lab.api.{function}({', '.join(shown)})'"


def cli_command() -> str:
    """The command line of this process as the user typed it (for the report)."""
    return " ".join(["torchfpe", *map(shlex.quote, sys.argv[1:])])


def _run_into(out: Path, meta: dict, experiment: str, jobs, *, backend: str, workers: int | None,
              address: str | None, quiet: bool, command: str, device: str = "cpu", made: bool = True,
              layout: str = "auto") -> Path:
    """Run the jobs into the folder ``out`` and write its report; ``made``: ``out`` was created by this call."""
    from .experiments.studies import DATASET_NOTE
    from .sweep import ResultStore, execute

    axes = meta.pop("axes")
    varying = [*axes, "seed"]
    meta = {
        **meta, "axis": axes[0] if len(axes) == 1 else (axes or None),
        "command": command, "date": _dt.date.today().isoformat(), "device": device, "layout": layout,
        "dataset_note": meta.get("dataset_note", DATASET_NOTE), "experiment": experiment,
        "keys": [job.key for job in jobs],
        # what each run is, for naming missing runs in the report
        "planned": {job.key: {name: job.config.to_dict().get(name) for name in varying} for job in jobs},
    }
    store = ResultStore(out)
    fresh = not any(out.iterdir())  # made or found empty: a failure before the first run leaves it as it was
    with store.lock():
        try:
            meta["data_files"] = _checked_data_files(store, experiment, jobs)
            meta.update(_provenance_fields(store, backend, address))
            store.write_meta(meta)
            summary = execute(jobs, store, backend=backend, workers=workers, address=address, quiet=quiet,
                              description=meta["study"], device=device, layout=layout)
        except BaseException:
            if fresh:
                store.discard_if_empty(keep_folder=not made)
            raise
        if not quiet:
            print(f"{summary['done']} runs done, {summary['skipped']} already in {out}")
        return build_report(out, quiet=quiet)


def _provenance_fields(store, backend: str, address: str | None) -> dict:
    """``provenance`` (what this run is made with) and ``provenance_earlier`` (what earlier runs into the
    same folder were made with, where that differs: a resumed folder may hold runs of several versions)."""
    from .provenance import provenance

    now = provenance(backend, address)
    old = store.read_meta() if (store.root / "meta.json").exists() else {}
    earlier = [p for p in [*(old.get("provenance_earlier") or []), old.get("provenance")] if p and p != now]
    unique = [p for i, p in enumerate(earlier) if p not in earlier[:i]]
    return {"provenance": now, **({"provenance_earlier": unique} if unique else {})}


def _checked_data_files(store, experiment: str, jobs) -> dict[str, str]:
    """``{path: digest}`` of the data files the jobs name, merged with those the folder recorded before.

    Run keys hold a file's path, not its content: a file replaced at the same path would have its
    old runs reused as if they were its own. So each file's digest is recorded in meta.json, and a
    folder holding runs is refused once a file it recorded has changed (before anything is written).
    A folder from before digests were recorded has none to compare: the current files are recorded.
    """
    from ..data.digest import file_digest
    from .experiments.registry import experiment as registered
    from .sweep import StoreError

    files = registered(experiment).files
    named = sorted({path for job in jobs for path in (files(job.config) if files else ())})
    current = {path: file_digest(path) for path in named}
    recorded = (store.read_meta().get("data_files") or {}) if (store.root / "meta.json").exists() else {}
    changed = [path for path in current if path in recorded and recorded[path] != current[path]]
    if changed and store.keys():
        path = changed[0]
        raise StoreError(f"{path} has changed since the runs in {store.root} were made from it ({recorded[path][:19]} "
                         f"then, {current[path][:19]} now), so they would be reused as stale results; use a new "
                         f"--out, or move {store.runs} away to redo them")
    return {**recorded, **current}


# ------------------------------------------------------------------------------------------ report
class IncompleteResultsError(RuntimeError):
    """The report was written, but runs the study planned are missing from the store."""

    def __init__(self, message: str, report: Path, missing: list[str]) -> None:
        super().__init__(message)
        self.report, self.missing = report, missing


def build_report(out: str | os.PathLike, *, strict: bool = False, quiet: bool = True) -> Path:
    """Rebuild ``records.csv``, ``report.md`` and the figures of a result folder from its store alone.

    Runs the folder's ``meta.json`` planned but the store lacks are listed in the report's header,
    which marks it incomplete; with ``strict=True`` that also raises :class:`IncompleteResultsError`
    (after writing). A record whose accuracy is not a number is a :class:`~torchfpe.lab.sweep.StoreError`
    naming its file. ``quiet=False`` shows a spinner while the figures are drawn.
    """
    from .report import write_report
    from .sweep import ResultStore, StoreError

    out = Path(out)
    if not out.is_dir():
        raise InvalidParameterError(f"{str(out)!r} is not a result folder (no such directory)")
    store = ResultStore(out)
    meta = store.read_meta()
    planned_keys = list(meta.get("keys") or store.keys())
    metric = meta.get("metric")
    metric_key = metric.get("key", "test_accuracy") if isinstance(metric, Mapping) else "test_accuracy"
    present = set(store.keys())
    records = []
    for run in store.all_runs():
        if run["key"] not in planned_keys:
            continue
        for record in run["records"]:
            _check_record(record, store.path(run["key"]), metric_key)
            records.append(record)
    missing_keys = [key for key in planned_keys if key not in present]
    missing = [_describe_run(meta, key) for key in missing_keys]
    if missing:
        meta = {**meta, "incomplete": f"{len(missing)} of {len(planned_keys)} planned runs are missing: "
                                      f"{'; '.join(missing[:20])}{' …' if len(missing) > 20 else ''}"}
    from .._status import step

    try:
        with step(f"writing {out / 'report.md'} and its figures", quiet):
            report = write_report(out, meta, records)
    except ValueError as error:  # e.g. a meta.json naming a study no report page knows
        raise StoreError(f"{out / 'meta.json'}: {error}") from None
    if missing and strict:
        raise IncompleteResultsError(f"report written but incomplete ({report}): {meta['incomplete']}; re-run the "
                                     "same command to complete the missing runs", report, missing)
    return report


def _describe_run(meta: dict, key: str) -> str:
    planned = (meta.get("planned") or {}).get(key)
    if not planned:
        return f"run {key}"
    return ", ".join(f"{name}={value}" for name, value in planned.items())


def _check_record(record: Any, path: Path, metric_key: str = "test_accuracy") -> None:
    from .kinds import fraction_fields
    from .sweep import StoreError

    value = record.get(metric_key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
        raise StoreError(f"{path}: record field {metric_key!r} must be a number, got {value!r}; the file is corrupt: "
                         "move it away and re-run")
    fractions = fraction_fields()  # declared by the registered task kinds
    for name, value in record.items():
        if name in fractions and value is not None and (
                isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise StoreError(f"{path}: record field {name!r} must be a number, got {value!r}; the file is corrupt: "
                             "move it away and re-run")
        if name in fractions and isinstance(value, numbers.Real) and math.isfinite(value) \
                and not 0.0 <= value <= 1.0:
            raise StoreError(f"{path}: record field {name!r} must be a fraction in [0, 1], got {value!r}; the file "
                             "is corrupt: move it away and re-run")


# ---------------------------------------------------------------------------------------- fidelity
def fidelity(
    stores: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    out: str | os.PathLike | None = None,
    csv: str | os.PathLike | None = None,
    sections: str | Sequence[str] | None = None,
) -> str:
    """The Boolean fidelity analysis of result folders (``torchfpe fidelity``); returns its markdown.

    ``stores``: folders written by ``torchfpe reproduce boolean`` (pooled in the regression section);
    ``sections``: a subset of :data:`torchfpe.lab.report.fidelity.SECTIONS` (a list or a comma-separated
    string; default all); ``out`` also writes the markdown to that file, ``csv`` the per-record
    readings. Every argument is checked before anything is read or written; a folder that cannot be
    read raises :class:`~torchfpe.lab.report.fidelity.FidelityError` (a StoreError).
    """
    from .report.fidelity import SECTIONS, analyse, write_csv

    owner = "fidelity"
    stores = [stores] if isinstance(stores, (str, os.PathLike)) else stores
    if not isinstance(stores, Sequence) or not stores:
        raise invalid("stores", owner, "one or more result folders", stores)
    for store in stores:
        check_param("stores", store, [str, os.PathLike], owner)
        if not Path(store).is_dir():
            raise InvalidParameterError(f"{str(store)!r} is not a result folder (no such directory)")
    chosen = SECTIONS if sections is None else (
        [s.strip() for s in sections.split(",") if s.strip()] if isinstance(sections, str) else sections)
    if not isinstance(chosen, Sequence) or not chosen or not all(s in SECTIONS for s in chosen):
        raise invalid("sections", owner, f"a non-empty comma-separated subset of {','.join(SECTIONS)}", sections)
    targets = {name: Path(check_param(name, value, [str, os.PathLike], owner))
               for name, value in (("out", out), ("csv", csv)) if value is not None}
    for name, target in targets.items():
        if target.is_dir():
            raise InvalidParameterError(f"the {name!r} file {str(target)!r} of {owner} is a folder; name a file")
        if not target.parent.is_dir():
            raise InvalidParameterError(f"the {name!r} file {str(target)!r} of {owner} cannot be written: folder "
                                        f"{str(target.parent)!r} does not exist")
    if len(targets) == 2 and targets["out"].resolve() == targets["csv"].resolve():
        raise InvalidParameterError(f"the 'out' and 'csv' files of {owner} are the same file {str(targets['out'])!r}")
    text, records = analyse(list(stores), tuple(chosen))
    if "out" in targets:
        targets["out"].write_text(text, encoding="utf-8")
    if "csv" in targets:
        write_csv(records, targets["csv"])
    return text


# ---------------------------------------------------------------------------------------------- map
def fpe_map(stores: str | os.PathLike | Sequence[str | os.PathLike], *, out: str | os.PathLike = "docs",
            command: str | None = None) -> Path:
    """The map of every measured gain (``torchfpe map``): ``when-fpe-pays.md`` and ``.png`` written into ``out``
    from the result folders ``stores`` (see :mod:`torchfpe.lab.report.map`); returns the page's path."""
    from .report.map import build_map

    stores = [stores] if isinstance(stores, (str, os.PathLike)) else stores
    if not isinstance(stores, Sequence) or not stores:
        raise invalid("stores", "fpe_map", "one or more result folders", stores)
    for store in stores:
        check_param("stores", store, [str, os.PathLike], "fpe_map")
        if not Path(store).is_dir():
            raise InvalidParameterError(f"{str(store)!r} is not a result folder (no such directory)")
    page, _ = build_map(list(stores), resolve_out(out),
                        command or _python_call("fpe_map", [str(s) for s in stores], out=str(out)))
    return page
