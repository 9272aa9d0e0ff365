"""IDX files (the MNIST family's format) read with numpy, and Fashion-MNIST from them.

An IDX file: two zero bytes, a type code, the number of dimensions, then one big-endian int32 per
dimension and the values, big-endian, row-major. Gzipped files are recognised by their first bytes,
whatever their name.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .embeddings import DataError

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
GZIP_MAGIC = b"\x1f\x8b"

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
HOW_TO_GET_FASHION_MNIST = (
    "install it with `apt-get install dataset-fashion-mnist` (files in /usr/share/datasets/fashion-mnist), "
    "or pass data_dir (--data DIR on the command line) naming a folder with the four IDX files "
    + ", ".join(f"{name}[.gz]" for name in FASHION_MNIST_FILES.values())
)


class IdxFileError(DataError):
    """An IDX file that is not one, or does not hold what it should."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """A data set's files are not where they were looked for; the message says how to get them."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array in an IDX file (plain or gzipped), in native byte order."""
    path = Path(path)
    try:
        with open(path, "rb") as stream:
            raw = stream.read()
        if raw[:2] == GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as error:
        raise IdxFileError(f"{path}: cannot read IDX file ({error})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise IdxFileError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty file'})")
    type_code, ndim = raw[2], raw[3]
    if type_code not in IDX_TYPES:
        raise IdxFileError(f"{path}: unknown IDX type code 0x{type_code:02x}")
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        raise IdxFileError(f"{path}: IDX header is truncated or has 0 dimensions")
    shape = tuple(int(n) for n in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_TYPES[type_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    body = len(raw) - 4 - 4 * ndim
    if body != expected:
        raise IdxFileError(f"{path}: header says shape {shape} ({expected} bytes of data) but the file holds "
                           f"{body} bytes")
    array = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file (gzipped when the name ends in .gz, or when ``compress``)."""
    path = Path(path)
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in IDX_TYPES.items()}
    if array.dtype not in codes:
        raise IdxFileError(f"{path}: IDX cannot hold dtype {array.dtype}")
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if compress or (compress is None and path.suffix == ".gz"):
        raw = gzip.compress(raw, mtime=0)
    path.write_bytes(raw)
    return path


@dataclass(frozen=True)
class ImageSet:
    """uint8 images (N, H, W) and int64 labels ``0..C-1``, train and test."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_names: list[str]
    name: str
    standin: bool = False
    note: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def find_file(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def load_fashion_mnist(data_dir: str | os.PathLike | None = None) -> ImageSet:
    """Fashion-MNIST (Xiao et al. 2017) from IDX files: ``data_dir`` or the Debian package's folder."""
    folder = Path(data_dir) if data_dir is not None else FASHION_MNIST_DIR
    if not folder.is_dir():
        raise DatasetNotFoundError(f"Fashion-MNIST not found: {folder} is not a folder; {HOW_TO_GET_FASHION_MNIST}")
    paths = {key: find_file(folder, stem) for key, stem in FASHION_MNIST_FILES.items()}
    missing = [FASHION_MNIST_FILES[k] for k, p in paths.items() if p is None]
    if missing:
        raise DatasetNotFoundError(f"Fashion-MNIST not found in {folder} (missing {', '.join(missing)}); "
                                   f"{HOW_TO_GET_FASHION_MNIST}")
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        image_path, label_path = paths[f"{split}_images"], paths[f"{split}_labels"]
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise IdxFileError(f"{image_path}: expected uint8 images of shape (N, 28, 28); got {images.dtype} "
                               f"{images.shape}")
        if labels.dtype != np.uint8 or labels.ndim != 1:
            raise IdxFileError(f"{label_path}: expected a 1-D uint8 label array; got {labels.dtype} {labels.shape}")
        if len(labels) != len(images):
            raise IdxFileError(f"{label_path}: {len(labels)} labels but {image_path} holds {len(images)} images")
        if len(labels) and labels.max() >= len(FASHION_MNIST_CLASSES):
            raise IdxFileError(f"{label_path}: label {int(labels.max())} outside 0..9")
    return ImageSet(
        x_train=torch.from_numpy(arrays["train_images"]), y_train=torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        x_test=torch.from_numpy(arrays["test_images"]), y_test=torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        class_names=list(FASHION_MNIST_CLASSES), name="Fashion-MNIST", standin=False,
        note=f"Fashion-MNIST images (Xiao et al. 2017) read from IDX files in {folder}",
    )
