"""Old import paths of the harness, kept for one release (0.2) as aliases of ``torchfpe.lab``.

The harness moved from ``torchfpe.api``, ``torchfpe.experiments`` … to ``torchfpe.lab.…``. Importing an
old path warns once and returns the *same* module object as the new path (never a second copy, which
would hold its own registries), so ``from torchfpe.experiments.boolean import BooleanConfig`` keeps
working. Nothing is imported until an old name is asked for: ``import torchfpe`` still loads torch only.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: old top-level name under ``torchfpe`` -> its new home
MOVED = {
    "api": "lab.api", "cli": "lab.cli", "train": "lab.train", "batched": "lab.batched", "devices": "lab.devices",
    "_provenance": "lab.provenance", "experiments": "lab.experiments", "report": "lab.report", "sweep": "lab.sweep",
}


def new_name(fullname: str) -> str | None:
    """``torchfpe.lab.…`` for an old harness path, else None."""
    parts = fullname.split(".")
    if len(parts) < 2 or parts[0] != "torchfpe" or parts[1] not in MOVED:
        return None
    return ".".join(["torchfpe", MOVED[parts[1]], *parts[2:]])


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:  # the module is the new one, already executed
        pass


class MovedFinder(importlib.abc.MetaPathFinder):
    """Finds the old harness paths (see the module docstring)."""

    def find_spec(self, fullname, path=None, target=None):
        new = new_name(fullname)
        if new is None or importlib.util.find_spec(new) is None:
            return None
        warnings.warn(f"{fullname} moved to {new}; the old path goes in torchfpe 0.2", DeprecationWarning,
                      stacklevel=2)
        spec = importlib.util.spec_from_loader(fullname, _Alias(new), is_package=new.endswith("experiments")
                                               or new.endswith("report") or new.endswith("sweep"))
        return spec


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(finder, MovedFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedFinder())  # before PathFinder, which would load a second copy under the old name
