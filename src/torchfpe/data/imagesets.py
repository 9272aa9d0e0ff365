"""Image sets by name, for ``torchfpe embed NAME`` and the built-in real-feature sets.

Each entry loads an :class:`~torchfpe.data.idx.ImageSet` (uint8 images and labels, train and test) and
gives a cheap fingerprint of its raw files, so that a cache computed from them is never reused for
other files. ``data_dir`` means the folder of the raw files: Fashion-MNIST's IDX files, or the fonts
folder of ``font-chars``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from .embeddings import DataError
from .idx import FASHION_MNIST_DIR, FASHION_MNIST_FILES, HOW_TO_GET_FASHION_MNIST, DatasetNotFoundError, ImageSet, find_file


@dataclass(frozen=True)
class ImageSource:
    """A named image set: how to load it and how to fingerprint its raw files (both take ``data_dir``)."""

    name: str
    title: str  # the data set's name in reports, e.g. "Fashion-MNIST"
    load: Callable[..., ImageSet]  # (data_dir, progress=None): progress is a display to add a task to, or None
    fingerprint: Callable[[str | os.PathLike | None], str]
    description: str


def _fashion_mnist(data_dir, progress=None):
    from .idx import load_fashion_mnist

    return load_fashion_mnist(data_dir)


def _fashion_mnist_fingerprint(data_dir) -> str:
    """The folder and the sizes of the four IDX files; a missing file says how to get them."""
    folder = Path(data_dir) if data_dir is not None else FASHION_MNIST_DIR
    if not folder.is_dir():
        raise DatasetNotFoundError(f"Fashion-MNIST not found: {folder} is not a folder; {HOW_TO_GET_FASHION_MNIST}")
    paths = {stem: find_file(folder, stem) for stem in FASHION_MNIST_FILES.values()}
    missing = [stem for stem, path in paths.items() if path is None]
    if missing:
        raise DatasetNotFoundError(f"Fashion-MNIST not found in {folder} (missing {', '.join(missing)}); "
                                   f"{HOW_TO_GET_FASHION_MNIST}")
    key = {"folder": str(folder.resolve()), **{p.name: p.stat().st_size for p in paths.values()}}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _font_config(data_dir):
    from .fonts import FontCharsConfig

    return FontCharsConfig() if data_dir is None else FontCharsConfig(font_dirs=(str(data_dir),))


def _font_chars(data_dir, progress=None):
    from .fonts import render_font_chars

    return render_font_chars(_font_config(data_dir), progress=progress)


def _font_chars_fingerprint(data_dir) -> str:
    from .fonts import fonts_fingerprint, font_files

    config = _font_config(data_dir)
    if not font_files(config.font_dirs):
        raise DataError(f"font-chars: no .ttf or .otf files under {', '.join(config.font_dirs)} (install Debian font "
                        f"packages, e.g. apt-get install fonts-dejavu-core fonts-liberation fonts-freefont-ttf)")
    key = {**asdict(config), "fonts": fonts_fingerprint(config)}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


IMAGE_SETS: dict[str, ImageSource] = {
    source.name: source
    for source in [
        ImageSource("fashion-mnist", "Fashion-MNIST", _fashion_mnist, _fashion_mnist_fingerprint,
                    "Fashion-MNIST (60000 train / 10000 test, 28x28 grayscale, 10 classes) from the Debian package "
                    "dataset-fashion-mnist or data_dir"),
        ImageSource("font-chars", "font characters", _font_chars, _font_chars_fingerprint,
                    "62 characters (0-9, A-Z, a-z) rendered in the installed fonts with small seeded augmentations "
                    "(torchfpe.data.fonts); data_dir: the fonts folder (default /usr/share/fonts)"),
    ]
}
IMAGE_SET_NAMES = tuple(IMAGE_SETS)


def image_source(name: str) -> ImageSource:
    if name not in IMAGE_SETS:
        raise DataError(f"unknown image set {name!r}; built-in image sets: {', '.join(IMAGE_SET_NAMES)}")
    return IMAGE_SETS[name]
