"""Data for the real-model experiments: embedding files, offline data sets, stand-ins, extraction.

Contract (filled in by the data work stream of issue 7; experiments code against these names):

- ``EmbeddingSet``: dataclass with ``x_train`` (float32 tensor, N x d), ``y_train`` (int64, N),
  ``x_test``, ``y_test``, ``class_names`` (list[str]), ``name`` (str shown in every report table,
  e.g. "Fashion-MNIST autoencoder embeddings (stand-in for CLIP)"), ``standin`` (bool) and
  ``note`` (one sentence on where the data came from).
- ``load_embeddings(source, *, data_dir=None, cache_dir=None, seed=0) -> EmbeddingSet``: ``source`` is
  a path to a ``.npz``/``.parquet`` embedding file, or a built-in name (``digits``, ``mnist1d``,
  ``fashion-mnist-ae`` (frozen label-free encoder stand-in), ``synthetic-100``).
  Bad input raises ``EmbeddingFileError`` (a ValueError) naming the file and the problem.
- ``load_fashion_mnist(data_dir=None) -> ImageSet``: uint8 images (N, 28, 28) and int64 labels, train
  and test, from the Debian package ``dataset-fashion-mnist`` or ``data_dir`` holding the IDX files.
- ``torchfpe.data.extract.extract_embeddings(source, model, out, *, batch_size=64, device="cpu",
  quiet=False) -> Path``: the ``torchfpe embed`` command's library function (CLIP via transformers).
"""

from __future__ import annotations

import os
from pathlib import Path

from .builtin import BUILTIN_SETS
from .embeddings import DataError, EmbeddingFileError, EmbeddingSet, READERS, read_npz, read_parquet, write_embeddings
from .idx import DatasetNotFoundError, IdxFileError, ImageSet, load_fashion_mnist, read_idx, write_idx

STANDIN_NAME = "fashion-mnist-ae"
BUILTIN_NAMES = (*BUILTIN_SETS, STANDIN_NAME)


def load_embeddings(
    source: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
) -> EmbeddingSet:
    """An embedding set from a ``.npz``/``.parquet`` file or a built-in name (see the module docstring).

    ``data_dir`` is where ``fashion-mnist-ae`` finds the Fashion-MNIST IDX files; ``cache_dir`` where it
    keeps its encoded file; ``seed`` draws the split of ``digits``, the clusters of ``synthetic-100`` and
    the stand-in encoder's training (``mnist1d`` is the package's canonical set whatever the seed).
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise EmbeddingFileError(f"load_embeddings: seed must be an int; got {seed!r}")
    if isinstance(source, str) and source in BUILTIN_SETS:
        return BUILTIN_SETS[source](seed)
    if isinstance(source, str) and source == STANDIN_NAME:
        from .standin import fashion_mnist_ae

        return fashion_mnist_ae(seed, data_dir=data_dir, cache_dir=cache_dir)
    if not isinstance(source, (str, os.PathLike)):
        raise EmbeddingFileError(f"load_embeddings: source must be a file path or a built-in name; got {source!r}")
    path = Path(source)
    if not path.is_file():
        raise EmbeddingFileError(f"{path}: no such file, and not a built-in data set "
                                 f"(built-ins: {', '.join(BUILTIN_NAMES)})")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise EmbeddingFileError(f"{path}: unknown embedding file type {path.suffix or '(no suffix)'}; "
                                 f"use .npz or .parquet")
    return reader(path)


__all__ = [
    "BUILTIN_NAMES", "DataError", "DatasetNotFoundError", "EmbeddingFileError", "EmbeddingSet", "IdxFileError",
    "ImageSet", "load_embeddings", "load_fashion_mnist", "read_idx", "read_npz", "read_parquet", "write_embeddings",
    "write_idx",
]
