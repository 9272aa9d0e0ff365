"""The door for outside code: a user's module that registers splits, layouts, optimizers or experiments.

A *plugin* is an ordinary Python module whose import registers things (``register_split``,
``register_layout``, ``register_experiment`` / ``protocol.register`` …). It comes in two ways:

- ``torchfpe --plugin MODULE`` (repeatable; a module name, or the path of a ``.py`` file), or
  ``plugins=[...]`` of :func:`torchfpe.lab.api.run_study` / ``run_sweep_file``;
- an installed package's entry point in the group :data:`ENTRY_POINT_GROUP` (``torchfpe.plugins``),
  loaded by every process of the harness (its value names a module; if it names a callable, the
  callable is called once after the import).

The contract of the door:

- :func:`load` imports each plugin once per process (loading twice is a no-op) and returns it as a
  :class:`Plugin`, which is what a worker needs to import it again (a module name and the folder it
  was found in, or a file's path);
- every runner sends :func:`for_workers`'s list with each unit (a runtime option, no part of a run
  key): the process pool's workers, Ray tasks and the Ray guard's cluster import it before the unit
  runs (:func:`torchfpe.lab.sweep.unit.run_unit`); a registered thing whose function or class lives in
  another importable module (a module the user's script imported) travels the same way;
- :func:`check_reachable` refuses, before anything is trained or written, a run for the process pool
  or Ray that uses something no worker can import (defined inside a function, or in a notebook's
  ``__main__``), with one line saying to put it in a module and pass ``--plugin``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ..core.validation import InvalidParameterError

#: The entry-point group an installed package declares its plugin module in (see docs/extending.md).
ENTRY_POINT_GROUP = "torchfpe.plugins"


class PluginError(RuntimeError):
    """A plugin module was found but failed while importing (its own error, named with the plugin)."""


@dataclass(frozen=True)
class Plugin:
    """A loaded plugin as another process imports it again: ``module`` by name, after appending ``root``
    to ``sys.path`` where given; or, for a file plugin, ``file`` (an absolute path) as module ``module``."""

    module: str
    root: str | None = None
    file: str | None = None

    def __str__(self) -> str:
        return self.file or self.module


#: Plugins loaded in this process, in order, with the modules their import brought in.
_LOADED: dict[Plugin, frozenset[str]] = {}
_ENTRY_POINTS_LOADED = False
_ENTRY_POINT_MODULES: set[str] = set()


# ---------------------------------------------------------------------------------------- loading
def load(specs: Iterable[str | Plugin] = (), *, owner: str = "torchfpe") -> tuple[Plugin, ...]:
    """Import the installed entry points (once) and each of ``specs``: a module name, a ``.py`` file's path,
    or a :class:`Plugin`. Returns the plugins of ``specs``; a spec that cannot be found is an
    :class:`InvalidParameterError` naming it, a plugin that fails while importing a :class:`PluginError`."""
    load_entry_points()
    if isinstance(specs, (str, Plugin)):
        specs = [specs]
    return tuple(_load_one(spec, owner) for spec in specs)


def loaded() -> tuple[Plugin, ...]:
    """The plugins this process loaded through :func:`load`, in order."""
    return tuple(_LOADED)


def _load_one(spec: str | Plugin, owner: str) -> Plugin:
    if isinstance(spec, Plugin):
        plugin = spec
    elif isinstance(spec, (str, os.PathLike)) and str(spec).strip():
        plugin = _resolve(str(spec).strip(), owner)
    else:
        raise InvalidParameterError(f"the 'plugin' parameter of {owner} must be a module name or the path of a .py "
                                    f"file; got {spec!r}")
    if plugin in _LOADED:
        return plugin
    before = set(sys.modules)
    try:
        if plugin.file is not None:
            _import_file(plugin)
        else:
            if plugin.root is not None and plugin.root not in sys.path:
                sys.path.append(plugin.root)
            importlib.import_module(plugin.module)
    except Exception as error:  # noqa: BLE001 - the plugin's own failure, named with the plugin
        if plugin.file is not None:
            sys.modules.pop(plugin.module, None)
        raise PluginError(f"plugin {str(plugin)!r} failed while importing: {type(error).__name__}: {error}") from error
    _LOADED[plugin] = frozenset(set(sys.modules) - before | {plugin.module})
    return plugin


def _resolve(spec: str, owner: str) -> Plugin:
    """A spec as a :class:`Plugin`, found (not yet imported); the current folder is searched for a name
    as ``python -m`` would."""
    expected = f"the 'plugin' parameter of {owner} must be an importable module name or the path of a .py file"
    if spec.endswith(".py") or os.sep in spec or (os.altsep and os.altsep in spec):
        path = Path(spec).expanduser().resolve()
        if path.suffix != ".py" or not path.is_file():
            raise InvalidParameterError(f"{expected}; got {spec!r} ({'no such file' if not path.exists() else 'not a .py file'})")
        if not path.stem.isidentifier():
            raise InvalidParameterError(f"{expected}; got {spec!r} (the file name {path.stem!r} is no module name)")
        held = sys.modules.get(path.stem)
        if held is not None and Path(getattr(held, "__file__", "") or "").resolve() != path:
            raise InvalidParameterError(f"{expected}; got {spec!r}: a module named {path.stem!r} is already imported "
                                        f"from {getattr(held, '__file__', None) or 'elsewhere'}; rename the file")
        return Plugin(path.stem, file=str(path))
    if not all(part.isidentifier() for part in spec.split(".")):
        raise InvalidParameterError(f"{expected}; got {spec!r}")
    found = _find_spec(spec)
    if found is None and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
        found = _find_spec(spec)
    if found is None:
        raise InvalidParameterError(f"{expected}; got {spec!r} (no module named {spec!r} on the import path or in the "
                                    "current folder)")
    return Plugin(spec, root=_root_of(spec, found.origin, found.submodule_search_locations is not None))


def _find_spec(name: str):
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):  # a parent package that is missing, or a module without a spec
        return None


def _root_of(name: str, origin: str | None, package: bool) -> str | None:
    """The ``sys.path`` folder a module was found in (so a worker with another path finds it too)."""
    if not origin or not os.path.isabs(origin):
        return None
    levels = name.count(".") + 1 + (1 if package else 0)
    return str(Path(origin).parents[levels - 1])


def _import_file(plugin: Plugin) -> ModuleType:
    held = sys.modules.get(plugin.module)
    if held is not None and Path(getattr(held, "__file__", "") or "").resolve() == Path(plugin.file):
        return held
    spec = importlib.util.spec_from_file_location(plugin.module, plugin.file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[plugin.module] = module  # before running it: pickling and dataclasses look it up by name
    spec.loader.exec_module(module)
    return module


def load_entry_points() -> None:
    """Import every installed ``torchfpe.plugins`` entry point, once per process."""
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINT_GROUP):
        before = set(sys.modules)
        try:
            target = point.load()
            if callable(target) and not isinstance(target, ModuleType):
                target()
        except Exception as error:  # noqa: BLE001 - an installed plugin's failure, named with its entry point
            raise PluginError(f"the {ENTRY_POINT_GROUP} entry point {point.name!r} ({point.value}) failed: "
                              f"{type(error).__name__}: {error}") from error
        _ENTRY_POINT_MODULES.update(set(sys.modules) - before | {point.value.split(":")[0]})


def _door_modules() -> set[str]:
    """Modules every worker imports through the door: the plugins, what they imported, the entry points."""
    return set().union(*_LOADED.values(), _ENTRY_POINT_MODULES)


# ------------------------------------------------------------------------------------ the workers
def _registered() -> Iterator[tuple[str, str, tuple[object, ...]]]:
    """(kind, name, the objects that define it) of everything registered that a config may name."""
    from ..core.layouts import LAYOUTS
    from ..core.optim import OPTIMIZERS
    from ..core.splits import SPLITS
    from .experiments.registry import experiments

    for name, split in SPLITS.items():
        yield "split", name, (split.fn, type(split))
    for name, cls in LAYOUTS.items():
        yield "layout", name, (cls,)
    for name, spec in OPTIMIZERS.items():
        yield "optimizer", name, (spec.cls, spec.build)
    for name, registered in experiments().items():
        yield "experiment", name, (registered.config, registered.run_batch)


def _definer(obj: object) -> object:
    """The function or class that defines ``obj`` (a ``functools.partial``'s function; an instance's class)."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    return obj if hasattr(obj, "__qualname__") else type(obj)


def _used(experiment: str, config_dicts: Sequence[Mapping]) -> set[str]:
    """Every name the configs spell (their string values split into words, e.g. ``dense+mine@carry``)."""
    words = {experiment}
    for config in config_dicts:
        for value in config.values():
            if isinstance(value, str):
                words.update(re.findall(r"[A-Za-z_]\w*", value))
    return words


def _own(module: str) -> bool:
    return module == "torchfpe" or module.startswith("torchfpe.")


def _why_unreachable(obj: object, backend: str) -> str | None:
    """Why a worker cannot import ``obj`` (None when it can)."""
    obj = _definer(obj)
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
    if not module or _own(module):
        return None
    if "<locals>" in qualname:
        return f"defined inside a function ({qualname.split('.<locals>')[0]})"
    if module in ("__main__", "__mp_main__"):
        script = getattr(sys.modules.get("__main__"), "__file__", None)
        if backend == "process" and script:  # a spawned worker runs the script again (as __mp_main__)
            return None
        return "defined in __main__ (a notebook or the script itself)"
    return None


def check_reachable(experiment: str, config_dicts: Sequence[Mapping], backend: str) -> None:
    """Refuse, before any work, a run on ``process`` or ``ray`` that uses something only this process has."""
    if backend == "local":
        return
    used = _used(experiment, config_dicts)
    for kind, name, objects in _registered():
        if name not in used:
            continue
        for obj in objects:
            why = _why_unreachable(obj, backend)
            if why is not None:
                raise InvalidParameterError(
                    f"{kind} {name!r} is registered in this process only ({why}), so --backend {backend}'s workers "
                    f"cannot see it: put it in a module and pass --plugin MODULE (plugins=[...] from Python), or use "
                    "--backend local")


def for_workers(experiment: str, config_dicts: Sequence[Mapping]) -> tuple[Plugin, ...]:
    """What every worker imports before a unit: this process's plugins, then the importable modules (not
    torchfpe's, not already a plugin's) that define what the configs use."""
    door = _door_modules()
    extra: dict[str, Plugin] = {}
    used = _used(experiment, config_dicts)
    for _kind, name, objects in _registered():
        if name not in used:
            continue
        for obj in map(_definer, objects):
            module = getattr(obj, "__module__", None)
            if not module or _own(module) or module in door or module in ("__main__", "__mp_main__") \
                    or "<locals>" in getattr(obj, "__qualname__", ""):
                continue
            imported = sys.modules.get(module)
            origin = getattr(imported, "__file__", None)
            extra.setdefault(module, Plugin(module, root=_root_of(module, origin, hasattr(imported, "__path__"))))
    return (*loaded(), *extra.values())
