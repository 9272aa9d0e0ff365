"""The result store: one JSON file per finished run, keyed by a hash of the run's full config.

Why one file per run: a file appears whole or not at all (written to a temporary name, flushed,
fsynced, then renamed over), so a sweep killed at any instant leaves only whole runs behind, and a
re-run does exactly the missing ones. Nothing is ever overwritten: a file that does not parse, or
that belongs to another schema or another key, is reported with its path, and the sweep stops.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

SCHEMA = "torchfpe.run/1"
SUFFIX = ".run.json"
LOCK_NAME = ".lock"


class StoreError(RuntimeError):
    """A file in the store is corrupt or foreign; the message names it and what to do."""


def config_key(study: str, config: Mapping) -> str:
    """Stable hash of a run: the study's runner name and every config field, canonically encoded."""
    text = json.dumps({"study": study, "config": dict(config)}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a run record")


class ResultStore:
    """A folder of ``<key>.run.json`` files, plus ``meta.json`` describing what the folder is for."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.runs = self.root / "runs"
        self._lock_depth = 0
        self._lock_handle = None

    # ------------------------------------------------------------------------------------- lock
    @contextlib.contextmanager
    def lock(self):
        """Hold the store's writer lock (``<root>/.lock``); a second writer is refused with a clear message.

        Re-entrant within one ``ResultStore`` object. Uses ``fcntl.flock``, which the kernel releases
        when the holder dies, so a killed run never leaves a stale lock. (No lock where fcntl is absent.)
        """
        if self._lock_depth == 0:
            self._acquire()
        self._lock_depth += 1
        try:
            yield self
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0:
                self._release()

    def _acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / LOCK_NAME
        handle = open(path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise StoreError(f"another torchfpe run (pid {holder}) is writing to {self.root}; wait for it to finish "
                             "or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_handle = handle

    def _release(self) -> None:
        if self._lock_handle is not None:
            self._lock_handle.close()  # closing the descriptor releases the flock
            self._lock_handle = None

    def discard_if_empty(self, keep_folder: bool = False) -> bool:
        """Remove what this folder holds, and the folder unless ``keep_folder``, if it holds no finished run (a
        study that failed before its first run finished); returns whether it did. Under the lock; the lock
        file and the folder go last."""
        with self.lock():
            if self.keys():
                return False
            for entry in self.root.iterdir():
                if entry.name == LOCK_NAME:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            with contextlib.suppress(OSError):
                (self.root / LOCK_NAME).unlink()
                if not keep_folder:
                    self.root.rmdir()
        return True

    # ------------------------------------------------------------------------------------- meta
    def write_meta(self, meta: Mapping) -> None:
        """Record the study and its settings; refuses to reuse a folder made for another study."""
        self.runs.mkdir(parents=True, exist_ok=True)
        path = self.root / "meta.json"
        if path.exists():
            old = self.read_meta()
            if old.get("study") != meta.get("study"):
                raise StoreError(f"{self.root} holds results of study {old.get('study')!r}, not {meta.get('study')!r}; "
                                 "choose another --out folder")
        self._atomic_write(path, json.dumps(dict(meta), indent=2, sort_keys=True, default=str))

    def read_meta(self) -> dict:
        path = self.root / "meta.json"
        if not path.exists():
            raise StoreError(f"{self.root} is not a torchfpe result folder (no meta.json)")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise StoreError(f"{path} is not valid JSON ({error}); move it away and re-run") from None

    # ------------------------------------------------------------------------------------- runs
    def path(self, key: str) -> Path:
        return self.runs / f"{key}{SUFFIX}"

    def has(self, key: str) -> bool:
        return self.path(key).exists()

    def put(self, key: str, config: Mapping, records: Iterable[Mapping], *, seconds: float | None = None) -> Path:
        """Write one finished run atomically. An existing file for the key is left alone (never rewritten)."""
        path = self.path(key)
        if path.exists():
            return path
        self.runs.mkdir(parents=True, exist_ok=True)
        payload = {"schema": SCHEMA, "key": key, "config": dict(config), "seconds": seconds,
                   "records": [dict(r) for r in records]}
        self._atomic_write(path, json.dumps(payload, default=_json_default))
        return path

    def load(self, key: str) -> dict:
        return self._read(self.path(key))

    def keys(self) -> list[str]:
        if not self.runs.exists():
            return []
        return sorted(p.name[: -len(SUFFIX)] for p in self.runs.glob(f"*{SUFFIX}"))

    def all_runs(self) -> list[dict]:
        """Every run in the store; raises StoreError naming the first corrupt or foreign file."""
        if not self.runs.exists():
            return []
        foreign = [p for p in self.runs.iterdir() if not p.name.endswith(SUFFIX) and not p.name.startswith(".tmp-")]
        if foreign:
            raise StoreError(f"unexpected file(s) in the store: {', '.join(map(str, foreign))}; "
                             "the store holds only *.run.json files written by torchfpe: move them away")
        return [self._read(path) for path in sorted(self.runs.glob(f"*{SUFFIX}"))]

    def records(self) -> list[dict]:
        """All records of all runs (one per variant and seed), in key order."""
        return [record for run in self.all_runs() for record in run["records"]]

    def clean_temporaries(self) -> int:
        """Remove half-written temporary files left by a killed writer; returns how many."""
        removed = 0
        if self.runs.exists():
            for path in self.runs.glob(".tmp-*"):
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    # ---------------------------------------------------------------------------------- helpers
    def _read(self, path: Path) -> dict:
        if path.is_dir():
            raise StoreError(f"{path} is a directory, not a run file; the store holds only *.run.json files written "
                             "by torchfpe: move it away")
        try:
            payload = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise StoreError(f"{path} is corrupt ({error}); it was not written by a finished run. "
                             "Move it away (the run will be redone) and re-run") from None
        expected_key = path.name[: -len(SUFFIX)]
        if not isinstance(payload, dict) or payload.get("schema") != SCHEMA or payload.get("key") != expected_key:
            raise StoreError(f"{path} is not a {SCHEMA} record for key {expected_key}; move it away and re-run")
        records = payload.get("records")
        if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
            raise StoreError(f"{path} holds no records (a finished run has at least one); move it away (the run "
                             "will be redone) and re-run")
        return payload

    @staticmethod
    def _atomic_write(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
