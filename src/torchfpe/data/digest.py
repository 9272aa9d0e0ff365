"""Content digests of the data files a run reads, so a file replaced at the same path is noticed.

Run keys hold a data file's *path* (the config names it), not its content; the result store records
each named file's digest beside the runs and refuses to reuse them once the content changed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .idx import FASHION_MNIST_FILES

_CHUNK = 1 << 20


def file_digest(path: str | os.PathLike) -> str:
    """``"sha256:<hex>"`` of a file's bytes (read in chunks: embedding files can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def fashion_mnist_paths(data_dir: str | os.PathLike) -> list[Path]:
    """The IDX files :func:`~torchfpe.data.load_fashion_mnist` reads from ``data_dir`` (those present)."""
    folder = Path(data_dir)
    found = []
    for stem in FASHION_MNIST_FILES.values():
        for name in (f"{stem}.gz", stem):  # the order load_fashion_mnist looks in
            if (folder / name).is_file():
                found.append(folder / name)
                break
    return found
