"""Registry of experiments: one :func:`register_experiment` call per experiment module.

An experiment is:

- ``config``: a frozen dataclass whose fields all have defaults, with ``to_dict()`` and
  ``without_seed()``; building it validates every field (``make_config`` refuses unknown names);
- ``run_batch(configs) -> list[dict]``: one flat record per (variant, seed) for configs equal but
  for their seed (what every runner calls: in-process, a process pool, Ray); with ``device=True``
  at registration it also takes ``device=`` (a checked ``torch.device``, see :mod:`torchfpe.lab.devices`)
  and trains there; an experiment without it (``theory``: counting, no tensors) runs on the CPU; with
  ``layout=True`` it also takes ``layout=`` (the layout phase 2 trains in, :mod:`torchfpe.lab.train_layout`);
  both are runtime options, never part of a config or a run key;
- ``check(config)``: optional checks that need files (missing or corrupt data), run before any work;
- ``files(config)``: optional, the data files the config names by path; their content digests are
  recorded with the results, and a folder whose runs read a file that has since changed is refused;
- ``studies``: its :class:`~torchfpe.lab.experiments.studies.Study` grids, each in a command group
  (``torchfpe reproduce <group> --study <name>``).

Experiments of the protocol register through :func:`torchfpe.lab.experiments.protocol.register`. A new
experiment is one module in this package that calls it: the modules here are imported on the first
lookup, so the runners, the store, the CLI and the report find it by name without any other edit.
An experiment registered from outside the package (a ``--plugin`` module or a ``torchfpe.plugins`` entry
point, see :mod:`torchfpe.lab.plugins`) works the same, with every backend.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ...core.validation import InvalidParameterError, build_config


@dataclass(frozen=True)
class Experiment:
    """A registered experiment (see the module docstring)."""

    name: str
    config: type
    run_batch: Callable[[Sequence[Any]], list[dict]]
    run_single: Callable[[Any], list[dict]] | None = None
    check: Callable[[Any], None] | None = None
    studies: tuple = ()
    files: Callable[[Any], Sequence[str]] | None = None
    #: ``run_batch`` takes ``device=`` (the protocol's experiments); others run on the CPU.
    device: bool = False
    #: ``run_batch`` takes ``layout=`` (the protocol's experiments: the layout phase 2 trains in).
    layout: bool = False

    def run(self, configs: Sequence[Any], device=None, layout: str | None = None) -> list[dict]:
        """``run_batch(configs)``, on ``device`` and in ``layout`` where the experiment takes them (an
        experiment that trains no tensors ignores both)."""
        options = {**({"device": device} if self.device and device is not None else {}),
                   **({"layout": layout} if self.layout and layout is not None else {})}
        return self.run_batch(configs, **options)

    def make_config(self, **fields) -> Any:
        """A config from keyword overrides; unknown names raise InvalidParameterError listing the fields."""
        return build_config(self.config, fields, self.name)

    def check_config(self, config: Any) -> None:
        """The experiment's own checks that need files (before any run or write)."""
        if self.check is not None:
            self.check(config)


_EXPERIMENTS: dict[str, Experiment] = {}
_discovered = False


def register_experiment(name: str, config: type, run_batch: Callable, *, run_single: Callable | None = None,
                        check: Callable | None = None, files: Callable | None = None,
                        studies: Sequence = (), device: bool = False, layout: bool = False) -> Experiment:
    """Register an experiment (see the module docstring); returns it. Studies must name this experiment."""
    wrong = [s.name for s in studies if s.experiment != name]
    if wrong:
        raise InvalidParameterError(f"studies {wrong} of experiment {name!r} name another experiment")
    experiment = Experiment(name, config, run_batch, run_single, check, tuple(studies), files, device, layout)
    _EXPERIMENTS[name] = experiment
    return experiment


def unregister_experiment(name: str) -> Experiment | None:
    """Remove the experiment ``name`` from the registry (a test's or a notebook's own); returns it, or None
    where no such experiment was registered."""
    return _EXPERIMENTS.pop(name, None)


def _discover() -> None:
    """Import every module of this package once, so each registers itself."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module(__package__)
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{__package__}.{module.name}")
    from ..plugins import load_entry_points

    load_entry_points()  # installed plugins (the torchfpe.plugins entry points) register theirs after ours


def experiments() -> dict[str, Experiment]:
    """Every registered experiment by name, in registration order."""
    _discover()
    return dict(_EXPERIMENTS)


def experiment(name: str) -> Experiment:
    """The experiment ``name``; an unknown name is an error listing the registered ones."""
    known = experiments()
    if name not in known:
        raise InvalidParameterError(f"unknown experiment {name!r}; known: {', '.join(known)}")
    return known[name]


def groups() -> dict[str, dict[str, Any]]:
    """Studies by command group (``torchfpe reproduce <group> --study <name>``), in registration order."""
    found: dict[str, dict[str, Any]] = {}
    for registered in experiments().values():
        for study in registered.studies:
            found.setdefault(study.group, {})[study.name] = study
    return found
