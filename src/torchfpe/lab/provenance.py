"""What made a result folder: versions, the machine, the git commit of the torchfpe source when it has one.

Recorded in ``meta.json`` by every run (``meta["provenance"]``) and shown in the report's header, so a
reader knows which code and which machine produced the numbers.

Why the CPU model and ATen's CPU capability (``torch.backends.cpu.get_cpu_capability()``, e.g.
``AVX2`` or ``AVX512``): the same code and seeds give byte-identical records on one machine, but
another x86 CPU may pick other vector kernels, whose float32 sums round differently; over 2000
epochs that moves single runs and 20-seed means by up to about a point (docs/reproduction.md).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path


def provenance(backend: str | None = None, address: str | None = None) -> dict:
    """Versions of torchfpe, torch, NumPy and Python, the platform, the device runs train on, and the git
    commit of the torchfpe source (``None`` when it is not a git checkout, e.g. an installed wheel)."""
    import numpy
    import torch

    from .. import __version__

    commit, dirty = _git_commit()
    return {
        "torchfpe": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
        "python": platform.python_version(), "platform": platform.platform(terse=True),
        "device": _device(backend, address), "cpu": _cpu_name(), "cpu_capability": cpu_capability(),
        "git_commit": commit, "git_dirty": dirty,
    }


def cpu_capability() -> str:
    """ATen's CPU capability, the vector kernels torch dispatches to here (``"AVX2"``, ``"AVX512"``, …)."""
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):  # a torch without it
        return "unknown"


def _device(backend: str | None, address: str | None) -> str:
    """Runs train on the CPU (the experiments place no tensor on an accelerator)."""
    where = f"CPU: {_cpu_name()}, {os.cpu_count() or '?'} logical CPUs"
    if backend == "ray" and address:
        return f"the CPUs of the Ray cluster at {address} (started from a machine with {where})"
    return where + (f"; backend {backend}" if backend else "")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _git_commit() -> tuple[str | None, bool | None]:
    """(commit, uncommitted changes) of the git checkout holding this package's source, else (None, None).

    Only a checkout of torchfpe itself counts (its top level has a pyproject.toml naming torchfpe): a
    virtual environment inside some other repository must not report that repository's commit.
    """
    source = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if not top:
        return None, None
    try:
        named = 'name = "torchfpe"' in (Path(top) / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        named = False
    commit = git("rev-parse", "HEAD") if named else None
    if not commit:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit, (bool(status) if status is not None else None)


def describe(record: dict) -> str:
    """One line for the report's header."""
    parts = [f"torchfpe {record.get('torchfpe', '?')}", f"torch {record.get('torch', '?')}",
             f"NumPy {record.get('numpy', '?')}", f"Python {record.get('python', '?')}"]
    text = ", ".join(parts) + f" on {record.get('platform', '?')}; device: {record.get('device', '?')}"
    if record.get("cpu_capability"):  # folders from before it was recorded lack it
        text += f"; ATen CPU capability {record['cpu_capability']}"
    commit = record.get("git_commit")
    if commit:
        text += f"; git commit {commit[:12]}" + (" with uncommitted changes" if record.get("git_dirty") else "")
    else:
        text += "; no git commit (not run from a git checkout of torchfpe)"
    return text


if __name__ == "__main__":  # pragma: no cover - a quick look
    print(describe(provenance()), file=sys.stdout)
