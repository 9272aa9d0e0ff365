"""Data for the real-model experiments: embedding files, offline data sets, stand-ins, extraction.

Contract (filled in by the data work stream of issue 7; experiments code against these names):

- ``EmbeddingSet``: dataclass with ``x_train`` (float32 tensor, N x d), ``y_train`` (int64, N),
  ``x_test``, ``y_test``, ``class_names`` (list[str]), ``name`` (str shown in every report table,
  e.g. "Fashion-MNIST autoencoder embeddings (stand-in for CLIP)"), ``standin`` (bool) and
  ``note`` (one sentence on where the data came from).
- ``load_embeddings(source, *, data_dir=None, cache_dir=None, seed=0, quiet=False) -> EmbeddingSet``:
  ``source`` is a path to a ``.npz``/``.parquet`` embedding file, or a built-in name (``digits``,
  ``mnist1d``, ``fashion-mnist-ae`` (frozen label-free encoder stand-in), ``synthetic-100``,
  ``fortunes-minilm`` (Debian fortunes through a frozen all-MiniLM-L6-v2 text encoder,
  :mod:`torchfpe.data.textembed`), and the
  real-feature sets ``fashion-mnist-efficientnet`` and ``font-chars-efficientnet`` (images through a
  frozen ImageNet EfficientNet-Lite0, not CLIP), whose subsets are named ``NAME:TRAIN`` or
  ``NAME:TRAIN/TEST``; see :mod:`torchfpe.data.features`).
  Bad input raises ``EmbeddingFileError`` (a ValueError) naming the file and the problem.
- ``load_fashion_mnist(data_dir=None) -> ImageSet``: uint8 images (N, 28, 28) and int64 labels, train
  and test, from the Debian package ``dataset-fashion-mnist`` or ``data_dir`` holding the IDX files.
- ``torchfpe.data.extract.extract_embeddings(source, model, out, *, batch_size=64, device="cpu",
  quiet=False, image_size=None) -> Path``: the ``torchfpe embed`` command's library function (CLIP via
  transformers, or a frozen ImageNet EfficientNet-Lite from :mod:`torchfpe.data.efficientnet`); ``source``
  is an image folder or a built-in image set (:data:`torchfpe.data.imagesets.IMAGE_SETS`).

- ``torchfpe.data.textembed.extract_text_embeddings(source, out, *, model="all-minilm-l6-v2",
  batch_size=64, max_length=128, device="cpu", seed=0, test_fraction=0.25, data_dir=None, name=None,
  quiet=False) -> Path``: the same for text (``source``: ``fortunes``, a folder of ``.txt`` files per
  class, or a ``.csv``; :mod:`torchfpe.data.textsets`), through :mod:`torchfpe.data.minilm`.

Also here: ``EmbeddingSet.select_classes``; ``write_embeddings`` (validated, atomic .npz);
``read_idx``/``write_idx``; ``torchfpe.data.encode`` (the one images -> vectors -> .npz path that CLIP
extraction and the autoencoder stand-in share); ``torchfpe.data.folders`` (image sets to the
image-folder layout, CIFAR-100's archive). Every error here is a ``DataError`` (a ValueError) whose
message names the file or argument. docs/embeddings.md describes the formats and the data sets.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable
from pathlib import Path

from .builtin import digits, mnist1d, synthetic
from .features import FEATURE_SET_NAMES, FEATURE_SETS, load_feature_set, parse_name
from .embeddings import DataError, EmbeddingFileError, EmbeddingSet, READERS, read_npz, read_parquet, write_embeddings
from .idx import DatasetNotFoundError, IdxFileError, ImageSet, load_fashion_mnist, read_idx, write_idx
from .standin import fashion_mnist_ae
from .textembed import FORTUNES_MINILM, fortunes_minilm

#: Built-in sets by name: (seed, data_dir, cache_dir, quiet=...) -> EmbeddingSet.
BUILTINS: dict[str, Callable[..., EmbeddingSet]] = {
    "fashion-mnist-ae": lambda seed, data_dir, cache_dir, quiet=True: fashion_mnist_ae(seed, data_dir=data_dir,
                                                                                       cache_dir=cache_dir),
    "synthetic-100": lambda seed, data_dir, cache_dir, quiet=True: synthetic(seed),
    "digits": lambda seed, data_dir, cache_dir, quiet=True: digits(seed),
    "mnist1d": lambda seed, data_dir, cache_dir, quiet=True: mnist1d(seed, cache_dir=cache_dir),
    # the Debian fortunes (data_dir: their folder) through all-MiniLM-L6-v2; a few minutes once, then cached
    FORTUNES_MINILM: lambda seed, data_dir, cache_dir, quiet=True: fortunes_minilm(seed, data_dir=data_dir,
                                                                                   cache_dir=cache_dir, quiet=quiet),
}
BUILTIN_NAMES = (*BUILTINS, *FEATURE_SET_NAMES)


def load_embeddings(
    source: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    quiet: bool = False,
) -> EmbeddingSet:
    """An embedding set from a ``.npz``/``.parquet`` file or a built-in name (see the module docstring).

    ``data_dir``: where ``fashion-mnist-ae`` and ``fashion-mnist-efficientnet`` find the Fashion-MNIST
    IDX files (for ``font-chars-efficientnet``: the fonts folder). ``cache_dir``: where the built-ins
    keep what they compute once. ``seed``: the split of ``digits``, the clusters of ``synthetic-100``,
    the stand-in encoder's training (``mnist1d`` and the real-feature sets are the same whatever the
    seed). ``quiet``: no progress display while a real-feature set or ``fortunes-minilm`` is computed.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise EmbeddingFileError(f"load_embeddings: seed must be an int; got {seed!r}")
    seed = int(seed)
    for label, value in (("data_dir", data_dir), ("cache_dir", cache_dir)):
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise EmbeddingFileError(f"load_embeddings: {label} must be a folder path or None; got {value!r}")
    if isinstance(source, str) and source in BUILTINS:
        return BUILTINS[source](seed, data_dir, cache_dir, quiet=quiet)
    feature_set = parse_name(source) if isinstance(source, str) else None
    if feature_set is not None:
        name, train_size, test_size = feature_set
        return load_feature_set(name, train_size=train_size, test_size=test_size, data_dir=data_dir,
                                cache_dir=cache_dir, quiet=quiet)
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
    "BUILTINS", "BUILTIN_NAMES", "FEATURE_SETS", "FEATURE_SET_NAMES", "DataError", "DatasetNotFoundError", "EmbeddingFileError", "EmbeddingSet",
    "IdxFileError", "ImageSet", "load_embeddings", "load_fashion_mnist", "load_feature_set", "read_idx", "read_npz", "read_parquet",
    "write_embeddings", "write_idx",
]
