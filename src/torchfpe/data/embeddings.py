"""Embedding sets: the in-memory form, the two file formats a user brings, and one validator for both.

File formats (docs/embeddings.md has examples):

- ``.npz`` with ``X_train`` (N x d), ``y_train`` (N), ``X_test`` (M x d), ``y_test`` (M); optional
  ``class_names`` (a string array indexed by label) and optional string scalars ``name``, ``note`` and
  ``standin`` ("true"/"false") that torchfpe's own writers add, and any further string scalars (e.g.
  ``encoder``, ``preprocessing``), which the reader puts into ``EmbeddingSet.meta``. Loaded with
  ``allow_pickle=False``.
- ``.parquet``: one table, columns ``embedding`` (list of floats, the same length in every row),
  ``label`` (integer) and ``split`` ("train" or "test"); optional ``class_name`` (string, one name per
  label). Read with pyarrow (the ``parquet`` extra).

Labels are remapped to ``0..C-1`` in the order of the sorted train labels, so a file that holds only
some classes (or labels 3, 7, 9) gives a compact classifier; ``class_names`` follow the remap.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

NPZ_KEYS = ("X_train", "y_train", "X_test", "y_test")
PARQUET_COLUMNS = ("embedding", "label", "split")
MIN_TRAIN_PER_CLASS = 2


class DataError(ValueError):
    """Bad or missing data; the message names the file or argument and the problem."""


class EmbeddingFileError(DataError):
    """An embedding file (or built-in name) that cannot be used; nothing was written."""


@dataclass(frozen=True)
class EmbeddingSet:
    """Train/test embeddings with integer labels ``0..C-1``, and the words a report needs to name them."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_names: list[str]
    name: str
    standin: bool = False
    note: str = ""
    meta: Mapping[str, str] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def select_classes(self, classes: Sequence[int]) -> "EmbeddingSet":
        """The examples of the given classes only, relabelled ``0..len(classes)-1`` in the given order."""
        chosen = [int(c) for c in classes]
        if len(set(chosen)) != len(chosen) or len(chosen) < 2:
            raise EmbeddingFileError(f"select_classes needs at least 2 distinct classes; got {chosen}")
        bad = [c for c in chosen if not 0 <= c < self.num_classes]
        if bad:
            raise EmbeddingFileError(f"select_classes: classes {bad} outside 0..{self.num_classes - 1} of {self.name}")
        lookup = torch.full((self.num_classes,), -1, dtype=torch.int64)
        lookup[torch.tensor(chosen)] = torch.arange(len(chosen))
        keep_train, keep_test = lookup[self.y_train] >= 0, lookup[self.y_test] >= 0
        return replace(
            self,
            x_train=self.x_train[keep_train], y_train=lookup[self.y_train[keep_train]],
            x_test=self.x_test[keep_test], y_test=lookup[self.y_test[keep_test]],
            class_names=[self.class_names[c] for c in chosen],
        )


# ---------------------------------------------------------------- validation (one place, both formats)

def validate_arrays(
    where: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    class_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Check everything the experiments rely on; return float32 features, int64 labels remapped to
    ``0..C-1``, and the class names. ``where`` names the file in every message."""

    def fail(problem: str) -> EmbeddingFileError:
        return EmbeddingFileError(f"{where}: {problem}")

    xs = {}
    for key, x in (("X_train", x_train), ("X_test", x_test)):
        x = np.asarray(x)
        if x.dtype.kind not in "fiu":
            raise fail(f"{key} must hold real numbers; got dtype {x.dtype}")
        if x.ndim != 2:
            raise fail(f"{key} must be 2-D (examples x features); got shape {x.shape}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise fail(f"{key} is empty (shape {x.shape})")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            rows = np.flatnonzero(~np.isfinite(x).all(axis=1))
            raise fail(f"{key} has NaN or infinite values in {len(rows)} rows, first row {int(rows[0])}")
        with np.errstate(over="ignore"):
            x32 = x.astype(np.float32)
        if not np.isfinite(x32).all():
            rows = np.flatnonzero(~np.isfinite(x32).all(axis=1))
            raise fail(f"{key} has values too large for float32 in {len(rows)} rows, first row {int(rows[0])}")
        xs[key] = x32
    if xs["X_train"].shape[1] != xs["X_test"].shape[1]:
        raise fail(f"X_train has {xs['X_train'].shape[1]} features but X_test has {xs['X_test'].shape[1]}")

    ys = {}
    for key, y, xkey in (("y_train", y_train, "X_train"), ("y_test", y_test, "X_test")):
        y = np.asarray(y)
        if y.dtype.kind not in "iu":
            raise fail(f"{key} must hold integer labels; got dtype {y.dtype}")
        if y.ndim != 1:
            raise fail(f"{key} must be 1-D; got shape {y.shape}")
        if len(y) != len(xs[xkey]):
            raise fail(f"{key} has {len(y)} labels but {xkey} has {len(xs[xkey])} rows")
        if (y < 0).any():
            raise fail(f"{key} has negative labels (smallest {int(y.min())})")
        ys[key] = y.astype(np.int64)

    labels, counts = np.unique(ys["y_train"], return_counts=True)
    if len(labels) < 2:
        raise fail(f"needs at least 2 classes in y_train; found {len(labels)}")
    few = labels[counts < MIN_TRAIN_PER_CLASS]
    if len(few):
        raise fail(f"every class needs at least {MIN_TRAIN_PER_CLASS} training examples; "
                   f"{len(few)} of {len(labels)} classes have fewer (first: label {int(few[0])})")
    unseen = np.setdiff1d(np.unique(ys["y_test"]), labels)
    if len(unseen):
        raise fail(f"y_test has labels never seen in y_train: {unseen[:5].tolist()}"
                   + (" ..." if len(unseen) > 5 else ""))

    if class_names is not None:
        names = [str(n) for n in class_names]
        if len(names) <= int(labels[-1]):
            raise fail(f"class_names has {len(names)} entries but labels go up to {int(labels[-1])}")
        names = [names[int(label)] for label in labels]
    else:
        names = [str(int(label)) for label in labels]

    remap = np.full(int(labels[-1]) + 1, -1, dtype=np.int64)
    remap[labels] = np.arange(len(labels))
    return xs["X_train"], remap[ys["y_train"]], xs["X_test"], remap[ys["y_test"]], names


def to_embedding_set(arrays, *, name: str, standin: bool, note: str,
                     meta: Mapping[str, str] | None = None) -> EmbeddingSet:
    """An :class:`EmbeddingSet` from checked arrays (``validate_arrays``'s five: x and y of train and test,
    class names), as every reader and writer of embedding sets builds one."""
    x_train, y_train, x_test, y_test, names = arrays
    return EmbeddingSet(
        x_train=torch.from_numpy(x_train), y_train=torch.from_numpy(y_train),
        x_test=torch.from_numpy(x_test), y_test=torch.from_numpy(y_test),
        class_names=names, name=name, standin=standin, note=note, meta=dict(meta or {}),
    )


# ---------------------------------------------------------------- readers

def _string_scalar(value: np.ndarray) -> str | None:
    value = np.asarray(value)
    return str(value.item()) if value.ndim == 0 and value.dtype.kind == "U" else None


#: How a zip archive (what numpy.savez writes) starts: a file's local header, or an empty archive's end record.
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def open_npz(path: Path, where: str):
    """``np.load(path, allow_pickle=False)`` of an .npz archive; anything else is an :class:`EmbeddingFileError`
    saying it is not a valid .npz file (never numpy's advice to load pickled data)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as error:
        raise EmbeddingFileError(f"{where}: cannot be read ({error.strerror})") from None
    if head not in ZIP_MAGIC:
        raise EmbeddingFileError(f"{where}: not a valid .npz file (an .npz is a zip archive of arrays, as numpy.savez "
                                 "writes it; this file is not a zip archive)")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as error:  # a damaged archive (zipfile's, OS errors)
        raise EmbeddingFileError(f"{where}: not a valid .npz file (a damaged zip archive: {error})") from None


def read_npz(path: Path) -> EmbeddingSet:
    where = str(path)
    archive = open_npz(path, where)
    with archive:
        missing = [k for k in NPZ_KEYS if k not in archive.files]
        if missing:
            raise EmbeddingFileError(f"{where}: missing arrays {missing}; an embedding .npz needs {list(NPZ_KEYS)} "
                                     f"(found {archive.files})")
        try:
            arrays = {k: archive[k] for k in NPZ_KEYS}
            extras = {k: archive[k] for k in ("class_names", "name", "note", "standin") if k in archive.files}
        except ValueError as error:  # object arrays refuse to load without pickle
            raise EmbeddingFileError(f"{where}: holds an object array, which is not loaded for safety "
                                     f"(save class_names as a string array) ({error})") from None
        for key in set(archive.files) - set(NPZ_KEYS) - set(extras):
            try:  # further string scalars (encoder, preprocessing, ...) go into meta; anything else is ignored
                extras[key] = archive[key]
            except ValueError:
                continue
    class_names = extras.get("class_names")
    if class_names is not None:
        class_names = np.asarray(class_names)
        if class_names.ndim != 1 or class_names.dtype.kind not in "US":
            raise EmbeddingFileError(f"{where}: class_names must be a 1-D string array; got dtype "
                                     f"{class_names.dtype}, shape {class_names.shape}")
        class_names = [c.decode() if isinstance(c, bytes) else str(c) for c in class_names.tolist()]
    checked = validate_arrays(where, arrays["X_train"], arrays["y_train"], arrays["X_test"], arrays["y_test"],
                              class_names)
    name = _string_scalar(extras["name"]) if "name" in extras else None
    note = _string_scalar(extras["note"]) if "note" in extras else None
    standin = _string_scalar(extras["standin"]) if "standin" in extras else None
    meta = {key: text for key, value in extras.items()
            if key not in ("class_names", "name", "note", "standin") and (text := _string_scalar(value)) is not None}
    return to_embedding_set(checked, name=name or path.name, standin=standin == "true",
                   note=note or f"embeddings loaded from {path}", meta={**meta, "file": str(path)})


def read_parquet(path: Path) -> EmbeddingSet:
    where = str(path)
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("reading .parquet embedding files needs pyarrow: pip install 'torchfpe[parquet]'") from None
    try:
        table = pq.read_table(path)
    except Exception as error:
        raise EmbeddingFileError(f"{where}: not a readable Parquet file ({error})") from None
    missing = [c for c in PARQUET_COLUMNS if c not in table.column_names]
    if missing:
        raise EmbeddingFileError(f"{where}: missing columns {missing}; an embedding Parquet file needs "
                                 f"{list(PARQUET_COLUMNS)} (found {table.column_names})")
    for column in (*PARQUET_COLUMNS, "class_name"):
        if column in table.column_names and table.column(column).null_count:
            raise EmbeddingFileError(f"{where}: column {column!r} has {table.column(column).null_count} empty values")

    vectors = _vector_matrix(where, table.column("embedding"))
    labels = table.column("label").to_numpy()
    splits = np.asarray(table.column("split").to_pylist(), dtype=object)
    unknown = sorted({str(s) for s in splits} - {"train", "test"})
    if unknown:
        raise EmbeddingFileError(f"{where}: column 'split' must hold 'train' or 'test'; found {unknown[:5]}")
    train, test = splits == "train", splits == "test"
    if not test.any() or not train.any():
        raise EmbeddingFileError(f"{where}: needs rows with split 'train' and rows with split 'test' "
                                 f"(found {int(train.sum())} train, {int(test.sum())} test)")

    class_names = None
    if "class_name" in table.column_names and labels.dtype.kind in "iu" and (labels >= 0).all():
        given = np.asarray(table.column("class_name").to_pylist(), dtype=object)
        class_names = [""] * (int(labels.max()) + 1)
        for label in np.unique(labels):
            names = set(given[labels == label].tolist())
            if len(names) != 1:
                raise EmbeddingFileError(f"{where}: label {int(label)} has several class names {sorted(names)[:3]}")
            class_names[int(label)] = str(names.pop())
    checked = validate_arrays(where, vectors[train], labels[train], vectors[test], labels[test], class_names)
    return to_embedding_set(checked, name=path.name, standin=False, note=f"embeddings loaded from {path}",
                   meta={"file": str(path)})


def _vector_matrix(where: str, column) -> np.ndarray:
    import pyarrow as pa

    array = column.combine_chunks()
    if pa.types.is_fixed_size_list(array.type):
        width = array.type.list_size
    elif pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        lengths = np.asarray(array.value_lengths())
        if len(lengths) and (lengths != lengths[0]).any():
            row = int(np.flatnonzero(lengths != lengths[0])[0])
            raise EmbeddingFileError(f"{where}: column 'embedding' has vectors of different lengths "
                                     f"({lengths[0]} in row 0, {lengths[row]} in row {row})")
        width = int(lengths[0]) if len(lengths) else 0
    else:
        raise EmbeddingFileError(f"{where}: column 'embedding' must be a list of floats per row; got {array.type}")
    values = array.flatten()
    if values.null_count:
        raise EmbeddingFileError(f"{where}: column 'embedding' has empty (null) entries inside vectors")
    if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
        raise EmbeddingFileError(f"{where}: column 'embedding' must hold numbers; got {values.type}")
    return values.to_numpy(zero_copy_only=False).reshape(len(array), width)


READERS = {".npz": read_npz, ".parquet": read_parquet}


# ---------------------------------------------------------------- writer (atomic; used by extraction and stand-ins)

def check_output_file(out: str | os.PathLike, what: str = "out") -> Path:
    """Refuse an output ``.npz`` that could not be written, before any work: ``what`` (e.g. "--out")
    names the argument in the message. Nothing is created: the nearest existing folder on the way must
    accept a new file (probed with a temporary file, which also catches read-only file systems)."""
    out = Path(out)
    if out.suffix != ".npz":
        raise EmbeddingFileError(f"{what} {str(out)!r}: the output file must end in .npz")
    if out.is_dir():
        raise EmbeddingFileError(f"{what} {str(out)!r} is a folder; give a file name ending in .npz")
    probe = out.parent
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise EmbeddingFileError(f"{what} {str(out)!r} cannot be written: {str(probe)!r} is not a folder")
    try:
        handle, temp = tempfile.mkstemp(prefix=".torchfpe-write-check.", dir=probe)
    except OSError as error:
        raise EmbeddingFileError(f"{what} {str(out)!r} cannot be written: no new file can be made in "
                                 f"{str(probe)!r} ({error.strerror or error})") from None
    os.close(handle)
    os.unlink(temp)
    return out


def write_embeddings(
    out: str | os.PathLike,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    class_names: Sequence[str],
    *,
    name: str,
    note: str,
    standin: bool,
    extra: Mapping[str, str] | None = None,
) -> Path:
    """Write an embedding ``.npz`` atomically (temp file in the same folder, then rename): a reader sees
    the old file or the whole new one, never half of one. Validates first, so a bad set is never written.
    ``extra``: further string scalars (e.g. ``encoder``, ``preprocessing``) that the reader returns in
    ``EmbeddingSet.meta``."""
    out = Path(out)
    if out.suffix != ".npz":
        raise EmbeddingFileError(f"{out}: the output file must end in .npz")
    validate_arrays(str(out), x_train, y_train, x_test, y_test, class_names)
    extra = dict(extra or {})
    reserved = sorted(set(extra) & {*NPZ_KEYS, "class_names", "name", "note", "standin"})
    if reserved or not all(isinstance(k, str) and k.isidentifier() and isinstance(v, str) for k, v in extra.items()):
        raise EmbeddingFileError(f"{out}: extra must map new identifier names to strings; got {sorted(extra)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".tmp.npz", dir=out.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(
                stream,
                X_train=np.asarray(x_train, dtype=np.float32), y_train=np.asarray(y_train, dtype=np.int64),
                X_test=np.asarray(x_test, dtype=np.float32), y_test=np.asarray(y_test, dtype=np.int64),
                class_names=np.asarray([str(c) for c in class_names], dtype=str),
                name=np.asarray(name), note=np.asarray(note), standin=np.asarray("true" if standin else "false"),
                **{key: np.asarray(value) for key, value in extra.items()},
            )
        os.replace(temp, out)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return out

