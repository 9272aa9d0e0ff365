"""Sweeps: a grid of configs run through a resumable result store, in-process, in a pool or on Ray."""

from .runner import BACKENDS, Job, execute, make_jobs
from .store import ResultStore, StoreError, config_key

__all__ = ["BACKENDS", "Job", "ResultStore", "StoreError", "config_key", "execute", "make_jobs"]
