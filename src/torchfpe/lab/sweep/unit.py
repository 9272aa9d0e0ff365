"""One unit of work (configs equal but for the seed), as every backend runs it: in this process, in a
pool worker, in a Ray task, or in the Ray guard's cluster (:mod:`torchfpe.lab.sweep.ray_guard`)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from ...core.validation import InvalidParameterError
from ..experiments.registry import experiment as registered_experiment
from ..plugins import Plugin, load as load_plugins
from .store import config_key


def run_unit(experiment: str, config_dicts: list[dict], threads: int | None = None,
             device: str | None = None, layout: str | None = None,
             plugins: Sequence[Plugin] = ()) -> list[tuple[str, dict, list[dict], float]]:
    """Run one unit (configs equal but for the seed) on ``device``, phase 2 in ``layout``
    (:mod:`torchfpe.lab.train_layout`); returns (key, config, records, seconds) per run. ``plugins``
    (:mod:`torchfpe.lab.plugins`) are imported first, so a worker knows what the main process registered
    through the door. Neither the device, the layout nor the plugins are part of a key: a run done on a
    GPU, or packed, is the same run as on a CPU, masked."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    load_plugins(plugins)
    registered = registered_experiment(experiment)
    try:
        configs = [registered.make_config(**d) for d in config_dicts]
    except InvalidParameterError as error:  # valid in the main process: it knows a name this worker does not
        raise InvalidParameterError(f"{error} (in a worker process: something registered in the main process only "
                                    "is unknown here; put it in a module and pass --plugin MODULE)") from None
    started = time.perf_counter()
    records = registered.run(configs, device, layout)
    seconds = (time.perf_counter() - started) / max(1, len(configs))
    results = []
    for config in configs:
        mine = [_plain(r) for r in records if r.get("seed") == config.seed]
        results.append((config_key(experiment, config.to_dict()), config.to_dict(), mine, seconds))
    return results


def _plain(record: dict) -> dict:
    """JSON-ready record: tensors (the hidden weights) become lists."""
    return {key: value.tolist() if hasattr(value, "tolist") else value for key, value in record.items()}


def gpus_per_unit(device: str | None) -> int:
    """GPUs a Ray task asks for: Ray hides GPUs from a task that asks for none."""
    return 1 if device is not None and str(device).startswith("cuda") else 0
