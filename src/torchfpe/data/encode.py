"""One path from images to an embedding file: a frozen encoder turns batches of images into vectors,
and the vectors of the train and test images become a validated ``.npz`` written atomically.

The CLIP extraction (``torchfpe embed``) and the Fashion-MNIST autoencoder stand-in both go through
:func:`encode_to_file`; only the encoder and the image source differ.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from .embeddings import write_embeddings


@runtime_checkable
class ImageEncoder(Protocol):
    """A frozen image encoder: ``encode(batch)`` maps a batch of images (whatever the source's slices
    hold: a uint8 tensor, a list of PIL images) to a float array of shape (batch, dim)."""

    description: str

    def encode(self, images: Any) -> np.ndarray: ...


@dataclass(frozen=True)
class LabelledImages:
    """Images that can be sliced (``images[i:j]`` gives one batch) and their integer labels."""

    images: Sequence[Any]
    labels: np.ndarray

    def __post_init__(self):
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")


def encode_images(encoder: ImageEncoder, images: Sequence[Any], *, batch_size: int, progress=None, task=None) -> np.ndarray:
    """All images through the encoder in batches; one float32 row per image."""
    rows = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            rows.append(np.asarray(encoder.encode(batch), dtype=np.float32))
            if progress is not None:
                progress.advance(task, len(batch))
    return np.concatenate(rows, axis=0)


def encode_to_file(
    encoder: ImageEncoder,
    train: LabelledImages,
    test: LabelledImages,
    class_names: Sequence[str],
    out: str | os.PathLike,
    *,
    name: str,
    note: str,
    standin: bool,
    batch_size: int = 64,
    quiet: bool = False,
    extra: dict[str, str] | None = None,
) -> Path:
    """Encode the train and test images and write the embedding ``.npz`` (validated, atomic); ``extra``:
    strings kept beside the vectors (the encoder, its preprocessing), read back into ``EmbeddingSet.meta``."""
    with progress_bar(quiet) as progress:
        vectors = {}
        for split, source in (("train", train), ("test", test)):
            task = progress.add_task(f"encoding {split}", total=len(source.images)) if progress else None
            vectors[split] = encode_images(encoder, source.images, batch_size=batch_size, progress=progress, task=task)
    return write_embeddings(out, vectors["train"], train.labels, vectors["test"], test.labels, class_names,
                            name=name, note=note, standin=standin, extra=extra)


class _NoProgress:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


class LineProgress:
    """Progress as plain lines on stderr where no terminal shows a live bar (a log file, a pipe): a line
    when a task starts, then at most one every ``every`` seconds, and one when it is done."""

    def __init__(self, stream=None, every: float = 10.0):
        self.stream, self.every, self.tasks = stream, every, {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, description: str, total: int) -> int:
        import time

        task = len(self.tasks)
        self.tasks[task] = {"description": description, "total": total, "done": 0, "start": time.monotonic(),
                            "shown": time.monotonic()}
        self._line(task)
        return task

    def advance(self, task: int, amount: int = 1) -> None:
        import time

        state = self.tasks[task]
        state["done"] += amount
        now = time.monotonic()
        if state["done"] >= state["total"] or now - state["shown"] >= self.every:
            state["shown"] = now
            self._line(task)

    def _line(self, task: int) -> None:
        import sys
        import time

        state = self.tasks[task]
        elapsed = time.monotonic() - state["start"]
        rest = ""
        if 0 < state["done"] < state["total"]:
            rest = f", about {elapsed / state['done'] * (state['total'] - state['done']):.0f} s left"
        print(f"{state['description']}: {state['done']}/{state['total']} ({elapsed:.0f} s{rest})",
              file=self.stream or sys.stderr, flush=True)


def progress_bar(quiet: bool):
    """A progress display on stderr (stdout stays for results): rich's live bar on a terminal, plain
    lines elsewhere; nothing when ``quiet``."""
    if quiet:
        return _NoProgress()
    import sys

    if not sys.stderr.isatty():
        return LineProgress()
    try:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    except ImportError:  # rich comes with the experiments extra; lines do without it
        return LineProgress()

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=False)
