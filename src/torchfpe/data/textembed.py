"""Text embeddings by a frozen pretrained text encoder (all-MiniLM-L6-v2, :mod:`torchfpe.data.minilm`),
in the embedding file the heads read (:mod:`torchfpe.data.embeddings`), and the built-in set
``fortunes-minilm``.

- :func:`extract_text_embeddings` is ``torchfpe embed`` for text: a text source (the name ``fortunes``,
  a folder of ``.txt`` files, a ``.csv``; :mod:`torchfpe.data.textsets`) to an ``.npz``, written
  atomically, recording the encoder, its package version and ``max_length``.
- ``fortunes-minilm`` (:func:`fortunes_minilm`): the Debian fortunes, 40 categories, through the
  same encoder, 384-d. The vectors of every text are computed once and cached (``cache_dir``, default
  as for the other built-ins) under a hash of the recipe (the fortune files' bytes, the encoder
  package's version, ``max_length``); the train/test split of a seed is drawn from the cached vectors,
  so another seed costs nothing. A file lock makes concurrent processes wait for the one computing.
  Computing the 15031 vectors took 168 s on one thread (2 s of it loading the model; a 2-core machine
  shared with other work, 2026-12-07), measured with ``OMP_NUM_THREADS=1 python -c "from torchfpe.data
  import load_embeddings; load_embeddings('fortunes-minilm', cache_dir='/tmp/c')"``; a ridge-regression
  probe on them (penalty 0.1) gets 51 % of the 3757 test fortunes right over 40 categories (the largest
  category is 8 %).

Both are marked ``standin=True``: real data through a real pretrained encoder, but not the paper's
CLIP image embeddings, so reports never put the paper's CLIP numbers beside them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from ..core.validation import SEED, Interval, check_param
from .embeddings import (EmbeddingFileError, EmbeddingSet, check_output_file, to_embedding_set, validate_arrays,
                         write_embeddings)
from .minilm import (DEFAULT_MAX_LENGTH, MAX_POSITIONS, MINILM_DIM, MINILM_NAME, MINILM_PACKAGE, MINILM_TITLE,
                     MiniLMError, check_available, encode_texts, is_minilm_name, minilm_encoder)
from .textsets import (DEFAULT_MIN_PER_CLASS, DEFAULT_TEST_FRACTION, TextSetError, fortunes_fingerprint,
                       load_text_set, read_fortunes, test_mask)

#: Text encoders by the name ``--model`` takes.
TEXT_ENCODER_NAMES = (MINILM_NAME,)
FORTUNES_MINILM = "fortunes-minilm"
RECIPE_VERSION = 1  # bump when the computation changes so that old caches are not reused
BATCH_SIZE = 64


def is_text_encoder_name(model: object) -> bool:
    """Whether ``model`` names a text encoder (the CLI sends these to :func:`extract_text_embeddings`)."""
    return is_minilm_name(model)


def text_embedding_name(data_name: str) -> str:
    """"fortunes (40 categories) through a frozen all-MiniLM-L6-v2 (text; not CLIP)": what the vectors are."""
    return f"{data_name} through a frozen {MINILM_TITLE} (text; not CLIP)"


def _check_common(owner: str, batch_size: int, max_length: int, seed: int) -> None:
    check_param("seed", seed, [SEED], owner)
    check_param("batch_size", batch_size, [Interval(int, 1, None)], owner)
    check_param("max_length", max_length, [Interval(int, 1, MAX_POSITIONS)], owner)


def extract_text_embeddings(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model: str = MINILM_NAME,
    batch_size: int = BATCH_SIZE,
    max_length: int = DEFAULT_MAX_LENGTH,
    device: str = "cpu",
    seed: int = 0,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    data_dir: str | os.PathLike | None = None,
    name: str | None = None,
    quiet: bool = False,
) -> Path:
    """Embeddings of ``source``'s train and test texts written to ``out`` (.npz); returns ``out``.

    ``source``: a folder (``train/``, ``test/``, a subfolder of ``.txt`` files per class), a ``.csv``
    (``text``, ``label``[, ``split``]) or ``fortunes`` (from ``data_dir``, default the Debian folder).
    ``seed``/``test_fraction``: the split where the source has none (fortunes, a CSV without ``split``).
    ``max_length``: WordPiece tokens kept per text. Everything is checked before the model is loaded.
    """
    from .._status import step
    from .encode import _progress
    from .extract import _check_device

    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise TextSetError(f"name must be a non-empty string; got {name!r}")
    _check_common("extract_text_embeddings", batch_size, max_length, seed)
    out = check_output_file(out, "out")
    if not is_text_encoder_name(model):
        raise MiniLMError(f"unknown text encoder {model!r}; text encoders: {', '.join(TEXT_ENCODER_NAMES)}")
    resolved = _check_device(device)
    check_available()
    data = load_text_set(source, seed=seed, test_fraction=test_fraction, data_dir=data_dir)
    with step(f"loading the text model {MINILM_NAME}", quiet):
        encoder = minilm_encoder(resolved, max_length=max_length)
    vectors = {}
    with _progress(quiet) as progress:
        for split, texts in (("train", data.train_texts), ("test", data.test_texts)):
            task = progress.add_task(f"encoding {split} texts", total=len(texts)) if progress else None
            vectors[split] = encode_texts(texts, batch_size, encoder=encoder, progress=progress, task=task)
    return write_embeddings(out, vectors["train"], data.y_train, vectors["test"], data.y_test, data.class_names,
                            name=name or text_embedding_name(data.name),
                            note=f"{encoder.description} of {data.note}", standin=True,
                            extra={**encoder.record, "texts": str(source)})


# ---------------------------------------------------------------- the built-in fortunes-minilm

def fortunes_minilm(
    seed: int = 0,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    device: str | torch.device = "cpu",
    quiet: bool = True,
) -> EmbeddingSet:
    """The fortunes through all-MiniLM-L6-v2: the cached vectors (computed first if missing), split by ``seed``."""
    from .features import _locked
    from .minilm import _package_version, model_zip
    from .standin import default_cache_dir

    _check_common(FORTUNES_MINILM, BATCH_SIZE, max_length, seed)
    data = read_fortunes(data_dir)  # says how to get the package if it is missing
    test = test_mask(data.labels, data.class_names, seed=seed, test_fraction=test_fraction, where=FORTUNES_MINILM)
    check_available()
    recipe = {"version": RECIPE_VERSION, "fortunes": fortunes_fingerprint(data_dir), "min_per_class": DEFAULT_MIN_PER_CLASS,
              "encoder": MINILM_NAME, "package": _package_version(), "zip_bytes": model_zip().stat().st_size,
              "max_length": max_length}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / "text" / f"{FORTUNES_MINILM}-{key}.npz"
    if not path.is_file():
        with _locked(path.with_suffix(".lock"), FORTUNES_MINILM, quiet):
            if not path.is_file():  # another process may have computed it while this one waited
                _compute(data, path, recipe, max_length, device, quiet)
    vectors = _read_vectors(path, len(data.texts))
    checked = validate_arrays(str(path), vectors[~test], data.labels[~test], vectors[test], data.labels[test],
                              data.class_names)
    meta = {"encoder": MINILM_NAME, "encoder_weights": f"{MINILM_PACKAGE} {recipe['package']}", "max_length": str(max_length),
            "cache": str(path), "texts": str(len(data.texts))}
    note = (f"frozen {MINILM_TITLE} sentence embeddings (mean-pooled, L2-normalised, {MINILM_DIM}-d, at most "
            f"{max_length} tokens) of {data.note}; stratified {1 - test_fraction:g}/{test_fraction:g} split with "
            f"seed {seed}; a stand-in for the paper's CLIP features (a real pretrained encoder, not CLIP)")
    return to_embedding_set(checked, name=text_embedding_name(data.name), standin=True, note=note, meta=meta)


def _compute(data, path: Path, recipe: dict, max_length: int, device, quiet: bool) -> None:
    from .._status import step
    from .encode import _progress
    from .features import _atomic_write

    with step(f"{FORTUNES_MINILM}: loading the text model {MINILM_NAME}", quiet):
        encoder = minilm_encoder(device, max_length=max_length)
    with _progress(quiet) as progress:
        task = (progress.add_task(f"{FORTUNES_MINILM}: encoding {len(data.texts)} fortunes once (cache {path})",
                                  total=len(data.texts)) if progress else None)
        vectors = encode_texts(data.texts, BATCH_SIZE, encoder=encoder, progress=progress, task=task)
    _atomic_write(path, lambda stream: np.savez(stream, X=vectors, y=data.labels,
                                                recipe=np.asarray(json.dumps(recipe, sort_keys=True))))


def _read_vectors(path: Path, count: int) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as cached:
            vectors = cached["X"]
    except Exception as error:  # a damaged cache file: say which, and how to recover
        raise EmbeddingFileError(f"{path}: damaged cache file ({error}); delete it and load again to recompute "
                                 f"it") from None
    if vectors.shape != (count, MINILM_DIM):
        raise EmbeddingFileError(f"{path}: cache holds {vectors.shape} vectors, expected ({count}, {MINILM_DIM}); "
                                 f"delete it and load again to recompute it")
    return vectors


__all__ = ["FORTUNES_MINILM", "TEXT_ENCODER_NAMES", "extract_text_embeddings", "fortunes_minilm",
           "is_text_encoder_name", "text_embedding_name"]
