"""Byte-level text for the language-model experiment: a fixed offline corpus, or the user's own UTF-8 text.

- The default corpus is the King James Bible from the Debian package ``bible-kjv`` (public domain):
  ``bible -f "Gen1:1-Rev22:21"`` prints every verse, one per line with its reference (4,404,412
  bytes of ASCII). The text is written once to the cache folder (``$TORCHFPE_CACHE_DIR``, else
  ``$XDG_CACHE_HOME/torchfpe``, else ``~/.cache/torchfpe``), atomically, and read from there after.
- ``source`` a file: its bytes, which must be UTF-8 text; a folder: every ``*.txt`` file below it in
  path order, joined by newlines.

The bytes are the tokens (256 symbols). :func:`split_text` cuts the text into three contiguous parts:
the first 90 % for training, the next 5 % for validation and the last 5 % for test, so the held-out
text is text the model never saw, not a shuffle of it. Every problem is a :class:`TextError` (a
:class:`~torchfpe.data.DataError`) whose message names the file and what to do.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .embeddings import DataError
from .standin import default_cache_dir

KJV_COMMAND = ("bible", "-f", "Gen1:1-Rev22:21")
KJV_FILE = "bible-kjv.txt"
KJV_NAME = "King James Bible (Debian package bible-kjv)"
KJV_BYTES = 4_404_412  # what bible-kjv 4.x prints
HOW_TO_GET = ("install the Debian package bible-kjv (sudo apt-get install bible-kjv), or pass --data FILE|DIR "
              "with your own UTF-8 text")
#: Fractions of the text for training and validation; the rest is the test part.
TRAIN_FRACTION, VAL_FRACTION = 0.90, 0.05


class TextError(DataError):
    """A corpus that is missing or cannot be used; the message names the file and what to do."""


@dataclass(frozen=True)
class TextSplits:
    """A text's bytes (uint8 tensors) cut into contiguous train, validation and test parts."""

    name: str  # shown in every report table
    source: str  # the file or folder read
    train: Tensor
    val: Tensor
    test: Tensor

    @property
    def total(self) -> int:
        return len(self.train) + len(self.val) + len(self.test)

    def shortest(self) -> int:
        return min(len(self.train), len(self.val), len(self.test))


def kjv_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached King James Bible, written once from ``bible -f "Gen1:1-Rev22:21"`` (atomically)."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / KJV_FILE
    if path.is_file():  # written atomically: a file there is a whole one
        return path
    if shutil.which(KJV_COMMAND[0]) is None:
        raise TextError(f"the default corpus, the {KJV_NAME}, is not available: no {KJV_COMMAND[0]!r} command and "
                        f"no cached {path}; {HOW_TO_GET}")
    try:
        done = subprocess.run(KJV_COMMAND, capture_output=True, timeout=120, check=False)
    except (OSError, subprocess.SubprocessError) as error:
        raise TextError(f"{' '.join(KJV_COMMAND)} failed ({error}); {HOW_TO_GET}") from None
    if done.returncode != 0 or len(done.stdout) < KJV_BYTES // 2:
        raise TextError(f"{' '.join(KJV_COMMAND)} printed {len(done.stdout)} bytes (exit {done.returncode}), not the "
                        f"whole Bible; {HOW_TO_GET}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{KJV_FILE}.", suffix=".tmp", dir=folder)
        with os.fdopen(handle, "wb") as stream:
            stream.write(done.stdout)
        os.replace(temporary, path)
    except OSError as error:
        raise TextError(f"cannot write the corpus cache {path} ({error.strerror}); set TORCHFPE_CACHE_DIR to a "
                        "writable folder") from None
    return path


def read_text(source: str | os.PathLike) -> bytes:
    """The UTF-8 bytes of a text file, or of every ``*.txt`` file below a folder (path order, newline-joined)."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise TextError(f"{path}: no *.txt file in this folder; pass a UTF-8 text file or a folder of *.txt files")
        return b"\n".join(_read_one(p) for p in files)
    if path.exists() and not path.is_file():  # a device, pipe or socket (/dev/null) is there, but no text file
        raise TextError(f"{path}: not a regular file or a folder; pass a UTF-8 text file or a folder of *.txt files")
    if not path.is_file():
        raise TextError(f"{path}: no such file or folder; pass a UTF-8 text file or a folder of *.txt files")
    return _read_one(path)


def _read_one(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise TextError(f"{path}: cannot be read ({error.strerror})") from None
    if not data.strip():
        raise TextError(f"{path}: the file is empty; a language model needs text to train on")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise TextError(f"{path}: not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start} is "
                        f"{error.reason}); save it as UTF-8") from None
    return data


def split_text(data: bytes, name: str, source: str) -> TextSplits:
    """Contiguous parts: the first 90 % for training, the next 5 % for validation, the last 5 % for test."""
    tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    first, second = int(len(data) * TRAIN_FRACTION), int(len(data) * (TRAIN_FRACTION + VAL_FRACTION))
    return TextSplits(name, source, tensor[:first], tensor[first:second], tensor[second:])


@functools.lru_cache(maxsize=4)
def load_text(source: str | None = None, cache_dir: str | None = None) -> TextSplits:
    """The corpus of an LM config: ``source`` a file or folder of UTF-8 text, or None for the King James Bible."""
    if source is None:
        path = kjv_path(cache_dir)
        return split_text(_read_one(path), KJV_NAME, str(path))
    data = read_text(source)
    return split_text(data, f"{Path(source).name} (UTF-8 text, {len(data)} bytes)", str(source))
