"""Image sets to the image-folder layout that ``torchfpe embed`` reads, and CIFAR-100 from its official
"python version" archive; the helpers docs/embeddings.md uses to prepare data for CLIP extraction.

The layout: ``OUT/train/<class>/<index>.png`` and ``OUT/test/<class>/<index>.png``; a class name is made
safe as a folder name (``/`` becomes ``-``). Extraction numbers the classes in the sorted order of their
folder names, which may differ from the source's label order (labels are arbitrary for a classifier;
``class_names`` in the embedding file say which is which).
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import torch

from .embeddings import DataError
from .idx import ImageSet


def folder_name(name: str) -> str:
    """A class name made safe as a folder name (``T-shirt/top`` becomes ``T-shirt-top``)."""
    return "".join(c if c.isalnum() or c in "-_ ." else "-" for c in name).strip(" .") or "class"


def export_image_folder(images: ImageSet, out: str | os.PathLike, *, limit: int | None = None) -> Path:
    """Write ``images`` as PNG files in the image-folder layout under ``out`` (which must not exist yet,
    so nothing of an earlier export is mixed in). ``limit``: at most this many images per split."""
    from PIL import Image

    out = Path(out)
    if out.exists():
        raise DataError(f"{out}: already exists; export into a new folder")
    for split, x, y in (("train", images.x_train, images.y_train), ("test", images.x_test, images.y_test)):
        x = np.asarray(x[:1])
        if x.dtype != np.uint8 or not (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] in (3, 4))):
            raise DataError(f"export_image_folder: {split} images must be uint8 (N, H, W) or (N, H, W, 3|4); got "
                            f"{x.dtype} with {x.ndim} dimensions")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= images.num_classes):
            raise DataError(f"export_image_folder: {split} labels outside 0..{images.num_classes - 1}")
    names = [folder_name(n) for n in images.class_names]
    if len(set(names)) != len(names):
        raise DataError(f"class names {images.class_names} do not give distinct folder names")
    temp = out.with_name(f".{out.name}.partial")
    if temp.exists():
        raise DataError(f"{temp}: left over from an interrupted export; remove it first")
    try:
        for split, x, y in (("train", images.x_train, images.y_train), ("test", images.x_test, images.y_test)):
            count = len(y) if limit is None else min(limit, len(y))
            for i in range(count):
                folder = temp / split / names[int(y[i])]
                folder.mkdir(parents=True, exist_ok=True)
                pixels = x[i].numpy() if isinstance(x, torch.Tensor) else np.asarray(x[i])
                Image.fromarray(pixels).save(folder / f"{i:06d}.png")
        temp.rename(out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return out


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR's files are pickles of numpy arrays and lists; refuse anything else (pickles can run code)."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype")} | {
        (module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray") for name in ("_reconstruct", "scalar")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(raw: bytes, where: str) -> dict:
    try:
        data = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as error:
        raise DataError(f"{where}: not a CIFAR-100 pickle ({error})") from None
    if not isinstance(data, dict):
        raise DataError(f"{where}: not a CIFAR-100 pickle (holds {type(data).__name__})")
    return data


def read_cifar100(path: str | os.PathLike) -> ImageSet:
    """CIFAR-100 (Krizhevsky 2009), fine labels, from ``cifar-100-python.tar.gz`` or its unpacked folder
    (files ``train``, ``test``, ``meta``): uint8 images (N, 32, 32, 3)."""
    path = Path(path)
    raw: dict[str, bytes] = {}
    if path.is_dir():
        for member in ("train", "test", "meta"):
            if not (path / member).is_file():
                raise DataError(f"{path}: missing the file {member!r} of cifar-100-python")
            raw[member] = (path / member).read_bytes()
    elif path.is_file():
        try:
            with tarfile.open(path) as archive:
                for member in archive.getmembers():
                    base = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and base in ("train", "test", "meta"):
                        raw[base] = archive.extractfile(member).read()
        except (tarfile.TarError, OSError) as error:
            raise DataError(f"{path}: not a readable cifar-100-python archive ({error})") from None
        missing = sorted({"train", "test", "meta"} - set(raw))
        if missing:
            raise DataError(f"{path}: archive lacks {missing} (expected cifar-100-python.tar.gz)")
    else:
        raise DataError(f"{path}: no such file or folder (download cifar-100-python.tar.gz from "
                        f"https://www.cs.toronto.edu/~kriz/cifar.html)")
    meta = _unpickle(raw["meta"], f"{path}/meta")
    names = [str(n) for n in meta.get("fine_label_names", [])]
    if len(names) != 100:
        raise DataError(f"{path}/meta: expected 100 fine_label_names; got {len(names)}")
    splits = {}
    for split in ("train", "test"):
        data = _unpickle(raw[split], f"{path}/{split}")
        pixels, labels = np.asarray(data.get("data")), np.asarray(data.get("fine_labels", []), dtype=np.int64)
        if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != 3 * 32 * 32 or len(labels) != len(pixels):
            raise DataError(f"{path}/{split}: expected uint8 data (N, 3072) and N fine_labels; got {pixels.dtype} "
                            f"{pixels.shape} and {len(labels)} labels")
        if len(labels) and (labels.min() < 0 or labels.max() > 99):
            raise DataError(f"{path}/{split}: fine labels outside 0..99")
        images = pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()  # stored channel-first
        splits[split] = (torch.from_numpy(images), torch.from_numpy(labels))
    return ImageSet(x_train=splits["train"][0], y_train=splits["train"][1], x_test=splits["test"][0],
                    y_test=splits["test"][1], class_names=names, name="CIFAR-100",
                    note=f"CIFAR-100 (fine labels) read from {path}")
