"""Registry of experiments: name -> module path.

Each module provides ``make_config(**fields)`` (a frozen dataclass with ``to_dict`` and
``without_seed``) and ``run_batch(configs) -> list[dict]`` (records; configs equal but for the seed).
A new experiment registers here; the runners, the store and the CLI find it by name.
"""

from __future__ import annotations

import importlib

EXPERIMENTS: dict[str, str] = {
    "boolean": "torchfpe.experiments.boolean",
    "theory": "torchfpe.experiments.collisions",
    "heads": "torchfpe.experiments.heads",
    "deep": "torchfpe.experiments.deep",
    "cnn": "torchfpe.experiments.cnn",
}


def experiment_module(name: str):
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name])
