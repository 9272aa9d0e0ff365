"""Run a list of jobs through the result store: in-process, in a local process pool, or on Ray.

The same ``run_batch(configs)`` of an experiment is what every backend calls; backends differ only
in where the call happens. Jobs that differ only in their seed are grouped into one *unit* and
trained as one stack (:mod:`torchfpe.lab.batched`). Only the parent process writes to the store, one
file per finished run, so a killed sweep loses only the units in flight.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .store import ResultStore, config_key
from .unit import gpus_per_unit, run_unit

BACKENDS = ("local", "process", "ray")

from ..experiments.registry import experiment as registered_experiment


@dataclass(frozen=True)
class Job:
    """One run: an experiment name and its config (a dataclass with ``to_dict`` and ``without_seed``)."""

    experiment: str
    config: Any

    @property
    def key(self) -> str:
        return config_key(self.experiment, self.config.to_dict())


def make_jobs(experiment: str, config_dicts: Iterable[dict]) -> list[Job]:
    registered = registered_experiment(experiment)
    return [Job(registered.name, registered.make_config(**d)) for d in config_dicts]


def plan_units(jobs: Sequence[Job], workers: int, max_batch: int = 64) -> list[list[Job]]:
    """Group jobs that differ only in their seed; split groups so that every worker gets work."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault((job.experiment, job.config.without_seed()), []).append(job)
    pieces_per_group = max(1, math.ceil(workers / max(1, len(groups))))
    units = []
    for members in groups.values():
        size = min(max_batch, max(1, math.ceil(len(members) / pieces_per_group)))
        units.extend(members[i:i + size] for i in range(0, len(members), size))
    return units


def _unit_args(unit: Sequence[Job], threads: int | None, device: str | None, layout: str | None = None) -> tuple:
    """What a worker needs to run a unit (picklable): :func:`run_unit`'s arguments, the experiment name,
    plain config dicts, threads, device, the layout phase 2 trains in (:mod:`torchfpe.lab.train_layout`)
    and the plugins to import first (:mod:`torchfpe.lab.plugins`)."""
    from ..plugins import for_workers

    configs = [job.config.to_dict() for job in unit]
    return unit[0].experiment, configs, threads, device, layout, for_workers(unit[0].experiment, configs)


def _init_worker(threads: int, parent: int | None = None) -> None:
    import torch

    torch.set_num_threads(threads)
    if parent is not None:
        _exit_with_parent(parent)


def _exit_with_parent(parent: int) -> None:
    """Make this worker exit when the process that started it dies (even by SIGKILL).

    On Linux the kernel sends SIGKILL on the parent's death (``prctl(PR_SET_PDEATHSIG)``); everywhere
    a daemon thread also polls the parent pid, so no worker outlives its sweep (and none keeps the
    sweep's output pipe open).
    """
    import signal
    import sys
    import threading

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no libc symbol: the watchdog still runs
            pass
    if os.getppid() != parent:  # the parent died before the line above ran
        os._exit(1)

    def watchdog() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watchdog, name="torchfpe-parent-watchdog", daemon=True).start()


def execute(
    jobs: Sequence[Job],
    store: ResultStore,
    *,
    backend: str = "local",
    workers: int | None = None,
    threads: int | None = None,
    address: str | None = None,
    quiet: bool = False,
    description: str = "runs",
    device: str | None = None,
    layout: str | None = None,
) -> dict:
    """Run the jobs not yet in ``store`` (training on ``device``, e.g. ``"cuda"``, phase 2 in ``layout``, e.g.
    ``"packed"``; both checked by the caller, neither part of a run key); returns counts of what was done
    and skipped."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    with store.lock():  # one writer per store: a concurrent run on the same folder is refused
        return _execute(jobs, store, backend=backend, workers=workers, threads=threads, address=address,
                        quiet=quiet, description=description, device=device, layout=layout)


def _execute(jobs, store, *, backend, workers, threads, address, quiet, description, device=None,
             layout=None) -> dict:
    store.clean_temporaries()
    store.all_runs()  # fails loudly on corrupt or foreign files before any work starts
    unique = list({job.key: job for job in jobs}.values())
    pending = [job for job in unique if not store.has(job.key)]
    # one accelerator: one worker unless asked (processes would share it; the CPU pool is for CPUs)
    on_cpu = device is None or str(device) == "cpu"
    workers = workers or ((os.cpu_count() or 1) if backend != "local" and on_cpu else 1)
    threads = threads or (1 if backend != "local" else None)
    units = plan_units(pending, workers if backend != "local" else 1)
    summary = {"total": len(unique), "skipped": len(unique) - len(pending), "done": 0, "backend": backend}
    with _progress(quiet, description, len(unique), summary["skipped"]) as advance:
        def save(results):
            for key, config, records, seconds in results:
                store.put(key, config, records, seconds=seconds)
                summary["done"] += 1
                advance(1)

        if backend == "local":
            for unit in units:
                save(run_unit(*_unit_args(unit, threads, device, layout)))
        elif backend == "process":
            _run_process_pool(units, workers, threads, save, device, layout)
        else:
            _run_ray(units, threads, address, save, device, layout)
    return summary


def _run_process_pool(units, workers: int, threads: int, save: Callable, device: str | None = None,
                      layout: str | None = None) -> None:
    """Run units in a spawn pool; SIGTERM (or any error) stops the workers at once instead of waiting."""
    import multiprocessing
    import signal
    import threading
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                               initargs=(threads, os.getpid()))
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if in_main_thread else None
    try:
        futures = [pool.submit(run_unit, *_unit_args(unit, threads, device, layout)) for unit in units]
        for future in as_completed(futures):
            save(future.result())
    except BaseException:
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    else:
        pool.shutdown(wait=True)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


class Terminated(SystemExit):
    """The sweep received SIGTERM: the pool was stopped and finished runs are in the store."""


def _terminated(signum, frame) -> None:
    raise Terminated(128 + signum)


def _run_ray(units, threads: int, address: str | None, save: Callable, device: str | None = None,
             layout: str | None = None) -> None:
    """Run units on Ray: an existing cluster (``address``, or one this process already joined), else a
    local cluster started for this call in a guard process that stops it when this process ends in any
    way, SIGKILL included (see :mod:`torchfpe.lab.sweep.ray_guard`)."""
    try:
        import ray
    except ImportError:
        raise ImportError("the ray backend needs Ray: pip install 'torchfpe[ray]'") from None
    from . import ray_guard

    if address is None and not ray.is_initialized() and ray_guard.available():
        with _RayGuard() as guard:
            for results in guard.run([_unit_args(unit, threads, device, layout) for unit in units]):
                save(results)
        return
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        remote = ray.remote(num_cpus=1, num_gpus=gpus_per_unit(device))(run_unit)
        pending = [remote.remote(*_unit_args(unit, threads, device, layout)) for unit in units]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            save(ray.get(ready[0]))
    finally:
        if started_here:
            ray.shutdown()


class _RayGuard:
    """This process's end of :mod:`torchfpe.lab.sweep.ray_guard`: start the guard, run units, stop it."""

    def __enter__(self) -> "_RayGuard":
        import subprocess
        import sys
        import tempfile

        self.log = tempfile.TemporaryFile()  # the guard's stderr (Ray's own messages), shown if it fails
        # a session of its own: a terminal's Ctrl-C reaches only this process, which then stops the guard
        self.process = subprocess.Popen([sys.executable, "-m", "torchfpe.lab.sweep.ray_guard"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self.log, text=True, start_new_session=True)
        if self._receive()[0] != "ready":
            raise self._failure("the guard did not start")
        return self

    def run(self, units: Sequence[tuple]):
        """Send every unit, then yield each unit's results as the guard reports them."""
        from .ray_guard import encode

        for unit in units:
            self.process.stdin.write(encode(("unit", *unit)))
        self.process.stdin.write(encode(("go",)))
        self.process.stdin.flush()
        while True:
            message = self._receive()
            if message[0] == "done":
                return
            if message[0] == "error":
                raise self._failure(message[2])
            yield message[2]

    def _receive(self) -> tuple:
        from .ray_guard import decode

        line = self.process.stdout.readline()
        if not line:
            raise self._failure("the guard exited")
        return decode(line)

    def _failure(self, what: str) -> RuntimeError:
        self.log.seek(0)
        tail = [line for line in self.log.read().decode(errors="replace").splitlines() if line.strip()][-3:]
        return RuntimeError(f"the local Ray cluster failed: {what}" + (f" ({' | '.join(tail)})" if tail else ""))

    def __exit__(self, *exc) -> bool:
        """Ask the guard to stop the cluster and wait for it; a guard that hangs is killed (its tree goes
        with it: closing its stdin is what it waits for)."""
        from .ray_guard import encode

        try:
            self.process.stdin.write(encode(("stop",)))
            self.process.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass
        try:
            self.process.wait(60)
        except Exception:  # noqa: BLE001
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
        self.log.close()
        return False


class _progress:
    """A rich progress bar (counts, rate, ETA) or nothing when quiet."""

    def __init__(self, quiet: bool, description: str, total: int, completed: int) -> None:
        self.quiet, self.description, self.total, self.completed = quiet, description, total, completed

    def __enter__(self):
        if self.quiet:
            return lambda n: None
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.bar = Progress(
            SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        )
        self.bar.__enter__()
        self.task = self.bar.add_task(self.description, total=self.total, completed=self.completed, rate="")
        self.started = time.perf_counter()
        self.fresh = 0

        def advance(n: int) -> None:
            self.fresh += n
            per_minute = 60 * self.fresh / max(1e-9, time.perf_counter() - self.started)
            self.bar.update(self.task, advance=n, rate=f"{per_minute:.1f} runs/min")

        return advance

    def __exit__(self, *exc):
        if not self.quiet:
            self.bar.__exit__(*exc)
        return False
