"""Labelled text data for text embeddings: the Debian ``fortunes`` collection, a folder of ``.txt`` files,
or a CSV file. Every reader checks all of its input before any model is loaded; every problem is a
:class:`TextSetError` (a :class:`~torchfpe.data.DataError`) whose one-line message names the file or
argument.

- **fortunes** (:func:`read_fortunes`): the Debian packages ``fortunes`` and ``fortunes-min`` install
  one file per category in ``/usr/share/games/fortunes``, texts separated by lines holding a single
  ``%``. A category is a file with its ``strfile`` index ``NAME.dat`` beside it; the ``.dat`` indexes,
  the ``.u8`` links (the same files again) and subfolders (``off/``, the offensive collection of
  ``fortunes-off``) are skipped. Exact duplicates are kept once, a text found in several categories is
  dropped (its label would be ambiguous), and categories with fewer than ``min_per_class`` texts are
  left out. Debian 12's fortunes 1:1.99.1-7.3 (with fortunes-min) gives 43 category files, 15217 texts;
  after these rules 40 categories and 15031 texts remain (11274 train, 3757 test).
- **folder** (:func:`read_text_folder`): ``train/`` and ``test/``, each with one subfolder of ``.txt``
  files per class (one file, one text), the layout ``torchfpe embed`` reads for images; class names are
  the subfolder names, labels follow their sorted order.
- **CSV** (:func:`read_text_csv`): UTF-8, a header line naming the columns; ``text`` and ``label`` (a
  class name; labels follow the sorted names) are required, ``split`` (``train`` or ``test``) is
  optional. Without ``split``, the rows are split like fortunes.

A split drawn here (fortunes, a CSV without ``split``) is stratified: in each class a ``test_fraction``
of the texts, chosen by ``numpy.random.default_rng(seed)``, go to test, keeping at least
``MIN_TRAIN_PER_CLASS`` in train.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.validation import SEED, Interval, check_param, plain_number
from .embeddings import MIN_TRAIN_PER_CLASS, DataError

FORTUNES_DIR = Path("/usr/share/games/fortunes")
HOW_TO_GET_FORTUNES = "install the Debian package fortunes (sudo apt-get install fortunes), or pass its folder as data_dir"
FORTUNES_NAME = "fortunes"
DEFAULT_TEST_FRACTION = 0.25
DEFAULT_MIN_PER_CLASS = 20
CSV_TEXT, CSV_LABEL, CSV_SPLIT = "text", "label", "split"
SPLITS = ("train", "test")


class TextSetError(DataError):
    """Text data that cannot be used; the message names the file or argument and the problem."""


@dataclass(frozen=True)
class LabelledTexts:
    """Texts, their integer labels ``0..C-1`` and the class names, not yet split."""

    texts: list[str]
    labels: np.ndarray
    class_names: list[str]
    name: str
    note: str


@dataclass(frozen=True)
class TextSet:
    """Train and test texts with integer labels ``0..C-1``, and the words a report needs to name them."""

    train_texts: list[str]
    y_train: np.ndarray
    test_texts: list[str]
    y_test: np.ndarray
    class_names: list[str]
    name: str
    note: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ---------------------------------------------------------------- the split

def test_mask(labels: np.ndarray, class_names: Sequence[str], *, seed: int = 0,
              test_fraction: float = DEFAULT_TEST_FRACTION, where: str = "split_texts") -> np.ndarray:
    """Which of the examples labelled ``labels`` go to test: in each class a ``test_fraction`` of them
    (rounded), drawn with ``seed``, leaving at least ``MIN_TRAIN_PER_CLASS`` in train."""
    seed = plain_number(check_param("seed", seed, [SEED], "split_texts"))
    check_param("test_fraction", test_fraction, [Interval(float, 0, 1, closed="neither")], "split_texts")
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), dtype=bool)
    for label in range(len(class_names)):
        members = rng.permutation(np.flatnonzero(labels == label))
        if len(members) < MIN_TRAIN_PER_CLASS:
            raise TextSetError(f"{where}: class {class_names[label]!r} has {len(members)} text(s); every class needs "
                               f"at least {MIN_TRAIN_PER_CLASS}")
        test[members[: min(round(test_fraction * len(members)), len(members) - MIN_TRAIN_PER_CLASS)]] = True
    return test


def split_texts(data: LabelledTexts, *, seed: int = 0, test_fraction: float = DEFAULT_TEST_FRACTION) -> TextSet:
    """A stratified train/test split of ``data`` drawn with ``seed`` (see :func:`test_mask`)."""
    test = test_mask(data.labels, data.class_names, seed=seed, test_fraction=test_fraction, where=data.name)
    pick = lambda mask: [data.texts[i] for i in np.flatnonzero(mask)]  # noqa: E731
    return TextSet(pick(~test), data.labels[~test], pick(test), data.labels[test], list(data.class_names),
                   data.name, f"{data.note}; stratified {1 - test_fraction:g}/{test_fraction:g} split with seed {seed}")


def _labelled(texts: Sequence[str], names: Sequence[str], where: str, name: str, note: str) -> LabelledTexts:
    """Class names to labels in sorted order; at least two classes."""
    classes = sorted(set(names))
    if len(classes) < 2:
        raise TextSetError(f"{where}: needs at least 2 classes; found {len(classes)} ({classes})")
    index = {c: i for i, c in enumerate(classes)}
    return LabelledTexts(list(texts), np.asarray([index[n] for n in names], dtype=np.int64), classes, name, note)


# ---------------------------------------------------------------- fortunes

def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise TextSetError(f"{path}: not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start}); "
                           f"save it as UTF-8") from None


def _read(path: Path) -> str:
    try:
        return _decode(path, path.read_bytes())
    except OSError as error:
        raise TextSetError(f"{path}: cannot be read ({error.strerror or error})") from None


def fortune_files(folder: str | os.PathLike | None = None) -> list[Path]:
    """The category files of a fortunes folder (those with a ``.dat`` index beside them), sorted by name."""
    root = Path(folder) if folder is not None else FORTUNES_DIR
    if not root.is_dir():
        raise TextSetError(f"fortunes not found: {root} is not a folder; {HOW_TO_GET_FORTUNES}")
    files = sorted(p for p in root.iterdir()
                   if p.is_file() and not p.is_symlink() and not p.name.startswith(".") and p.suffix not in (".dat", ".u8")
                   and p.with_name(p.name + ".dat").is_file())
    if not files:
        raise TextSetError(f"fortunes not found: {root} holds no fortune files (NAME with NAME.dat beside it); "
                           f"{HOW_TO_GET_FORTUNES}")
    return files


def split_fortune_file(text: str) -> list[str]:
    """The texts of one fortune file: the parts between lines holding a single ``%``, without empty ones."""
    parts, current = [], []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line == "%":
            parts.append("\n".join(current))
            current = []
        else:
            current.append(line)
    parts.append("\n".join(current))
    return [part.strip("\n") for part in parts if part.strip()]


def fortunes_fingerprint(folder: str | os.PathLike | None = None) -> str:
    """A hash of the category files' names and bytes (2.7 MB in all): a cache built from them is never
    reused for other files."""
    digest = hashlib.sha256()
    for path in fortune_files(folder):
        digest.update(path.name.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def read_fortunes(folder: str | os.PathLike | None = None, *, min_per_class: int = DEFAULT_MIN_PER_CLASS) -> LabelledTexts:
    """Every fortune, labelled by its category file (not split; see :func:`load_fortunes`)."""
    check_param("min_per_class", min_per_class, [Interval(int, MIN_TRAIN_PER_CLASS, None)], "read_fortunes")
    files = fortune_files(folder)
    by_category = {}
    for path in files:
        by_category[path.name] = list(dict.fromkeys(split_fortune_file(_read(path))))  # duplicates kept once
    seen = Counter(text for texts in by_category.values() for text in texts)
    texts, names, small = [], [], []
    for category, found in by_category.items():
        kept = [text for text in found if seen[text] == 1]
        if len(kept) < min_per_class:
            small.append(f"{category} ({len(kept)})")
            continue
        texts += kept
        names += [category] * len(kept)
    root = files[0].parent
    shared = sum(1 for count in seen.values() if count > 1)
    note = (f"fortune cookies from {root}, one class per category file ({len(files)} files); {shared} texts found in "
            f"several categories dropped; categories with fewer than {min_per_class} texts left out"
            + (f": {', '.join(small)}" if small else ""))
    data = _labelled(texts, names, str(root), f"fortunes ({len(set(names))} categories)", note)
    return data


def load_fortunes(folder: str | os.PathLike | None = None, *, seed: int = 0,
                  test_fraction: float = DEFAULT_TEST_FRACTION,
                  min_per_class: int = DEFAULT_MIN_PER_CLASS) -> TextSet:
    """The fortunes, split into train and test by ``seed`` (stratified)."""
    return split_texts(read_fortunes(folder, min_per_class=min_per_class), seed=seed, test_fraction=test_fraction)


# ---------------------------------------------------------------- a folder of .txt files

def read_text_folder(source: str | os.PathLike) -> TextSet:
    """``source/train/<class>/*.txt`` and ``source/test/<class>/*.txt``: one text per file."""
    root = Path(source)
    layout = "SOURCE must hold train/ and test/, each with one subfolder of .txt files per class"
    if not root.is_dir():
        raise TextSetError(f"{root}: no such folder ({layout})")
    for split in SPLITS:
        if not (root / split).is_dir():
            raise TextSetError(f"{root}: missing the {split}/ folder ({layout})")
    classes = _class_folders(root / "train")
    if len(classes) < 2:
        raise TextSetError(f"{root / 'train'}: needs at least 2 class subfolders; found {len(classes)}")
    test_classes = _class_folders(root / "test")
    if not test_classes:
        raise TextSetError(f"{root / 'test'}: no class subfolders")
    unknown = sorted(set(test_classes) - set(classes))
    if unknown:
        raise TextSetError(f"{root / 'test'}: class folders {unknown[:5]} have no counterpart in train/")
    index = {name: i for i, name in enumerate(classes)}
    found = {}
    for split, names in (("train", classes), ("test", test_classes)):
        texts, labels = [], []
        for name in names:
            files = sorted(p for p in (root / split / name).iterdir()
                           if p.is_file() and not p.name.startswith(".") and p.suffix.lower() == ".txt")
            if not files:
                raise TextSetError(f"{root / split / name}: no .txt files (one file per text)")
            if split == "train" and len(files) < MIN_TRAIN_PER_CLASS:
                raise TextSetError(f"{root / split / name}: {len(files)} text file; every class needs at least "
                                   f"{MIN_TRAIN_PER_CLASS} training texts")
            for path in files:
                text = _read(path).strip()
                if not text:
                    raise TextSetError(f"{path}: the file is empty (one file holds one text)")
                texts.append(text)
            labels += [index[name]] * len(files)
        found[split] = (texts, np.asarray(labels, dtype=np.int64))
    return TextSet(*found["train"], *found["test"], classes, root.resolve().name,
                   f"the .txt files in {root.resolve()}, one text per file, one class per subfolder")


def _class_folders(folder: Path) -> list[str]:
    loose = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".txt"]
    if loose:
        raise TextSetError(f"{folder}: holds .txt files directly ({loose[0].name}, ...); put each class's texts in "
                           f"its own subfolder")
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


# ---------------------------------------------------------------- a CSV file

def read_text_csv(source: str | os.PathLike, *, seed: int = 0, test_fraction: float = DEFAULT_TEST_FRACTION,
                  text_column: str = CSV_TEXT, label_column: str = CSV_LABEL, split_column: str = CSV_SPLIT) -> TextSet:
    """A UTF-8 CSV with a header: ``text_column`` and ``label_column`` required, ``split_column``
    (``train``/``test``) optional; without it the rows are split by ``seed`` (stratified)."""
    path = Path(source)
    for label, value in (("text_column", text_column), ("label_column", label_column), ("split_column", split_column)):
        check_param(label, value, [str], "read_text_csv")
    if len({text_column, label_column, split_column}) < 3:
        raise TextSetError(f"read_text_csv: text_column, label_column and split_column must differ; got "
                           f"{text_column!r}, {label_column!r}, {split_column!r}")
    if not path.is_file():
        raise TextSetError(f"{path}: no such file")
    try:
        rows = list(csv.reader(io.StringIO(_read(path).lstrip("\ufeff"), newline="")))
    except csv.Error as error:
        raise TextSetError(f"{path}: not a readable CSV file ({error})") from None
    if not rows:
        raise TextSetError(f"{path}: the file is empty; a CSV needs a header line ({text_column},{label_column}) "
                           f"and one row per text")
    header = [name.strip() for name in rows[0]]
    missing = [name for name in (text_column, label_column) if name not in header]
    if missing:
        raise TextSetError(f"{path}: the header has no column {missing[0]!r} (found {header[:6]}); the first line must "
                           f"name the columns, e.g. {text_column},{label_column}[,{split_column}]")
    repeated = sorted(name for name, count in Counter(header).items() if count > 1)
    if repeated:
        raise TextSetError(f"{path}: the header names the column {repeated[0]!r} twice")
    at = {name: header.index(name) for name in (text_column, label_column, split_column) if name in header}
    texts, names, splits = [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if not any(field.strip() for field in row):
            continue  # blank line
        if len(row) != len(header):
            raise TextSetError(f"{path}: line {line} has {len(row)} fields but the header has {len(header)}")
        text, name = row[at[text_column]].strip(), row[at[label_column]].strip()
        if not text:
            raise TextSetError(f"{path}: line {line} has an empty {text_column!r}")
        if not name:
            raise TextSetError(f"{path}: line {line} has an empty {label_column!r}")
        if split_column in at:
            split = row[at[split_column]].strip().lower()
            if split not in SPLITS:
                raise TextSetError(f"{path}: line {line}: {split_column!r} must be 'train' or 'test'; got {split!r}")
            splits.append(split)
        texts.append(text)
        names.append(name)
    if not texts:
        raise TextSetError(f"{path}: no rows after the header")
    data = _labelled(texts, names, str(path), path.name, f"the texts in {path.resolve()}")
    if split_column not in at:
        return split_texts(data, seed=seed, test_fraction=test_fraction)
    return _given_split(data, np.asarray(splits), str(path))


def _given_split(data: LabelledTexts, splits: np.ndarray, where: str) -> TextSet:
    train, test = splits == "train", splits == "test"
    if not test.any():
        raise TextSetError(f"{where}: no rows with split 'test'")
    counts = np.bincount(data.labels[train], minlength=len(data.class_names))
    few = [data.class_names[c] for c in np.flatnonzero(counts < MIN_TRAIN_PER_CLASS)]
    if few:
        raise TextSetError(f"{where}: class {few[0]!r} has {int(counts[data.class_names.index(few[0])])} training "
                           f"row(s); every class needs at least {MIN_TRAIN_PER_CLASS}")
    pick = lambda mask: [data.texts[i] for i in np.flatnonzero(mask)]  # noqa: E731
    return TextSet(pick(train), data.labels[train], pick(test), data.labels[test], data.class_names, data.name,
                   f"{data.note}, split as its {CSV_SPLIT!r} column says")


# ---------------------------------------------------------------- by name

#: Built-in text sets by name.
TEXT_SET_NAMES = (FORTUNES_NAME,)


def load_text_set(source: str | os.PathLike, *, seed: int = 0, test_fraction: float = DEFAULT_TEST_FRACTION,
                  data_dir: str | os.PathLike | None = None) -> TextSet:
    """A text set from a folder (``train/``, ``test/``), a ``.csv`` file, or the name ``fortunes`` (read from
    ``data_dir``, default the Debian package's folder) when no file or folder of that name exists."""
    if not isinstance(source, (str, os.PathLike)):
        raise TextSetError(f"load_text_set: source must be a folder, a .csv file or one of {list(TEXT_SET_NAMES)}; "
                           f"got {source!r}")
    path = Path(source)
    if path.is_dir():
        return read_text_folder(path)
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise TextSetError(f"{path}: unknown text file type {path.suffix or '(no suffix)'}; use a .csv file "
                               f"(columns {CSV_TEXT},{CSV_LABEL}[,{CSV_SPLIT}]) or a folder of .txt files")
        return read_text_csv(path, seed=seed, test_fraction=test_fraction)
    if isinstance(source, str) and source == FORTUNES_NAME:
        return load_fortunes(data_dir, seed=seed, test_fraction=test_fraction)
    raise TextSetError(f"{path}: no such file or folder, and not a built-in text set ({', '.join(TEXT_SET_NAMES)})")


__all__ = ["FORTUNES_DIR", "LabelledTexts", "TEXT_SET_NAMES", "TextSet", "TextSetError", "fortune_files",
           "fortunes_fingerprint", "load_fortunes", "load_text_set", "read_fortunes", "read_text_csv",
           "read_text_folder", "split_fortune_file", "split_texts", "test_mask"]
