"""Built-in real-feature sets: an image set through a frozen ImageNet encoder, computed once, cached.

- ``fashion-mnist-efficientnet``: Fashion-MNIST (Debian ``dataset-fashion-mnist`` or ``data_dir``)
  through a frozen ImageNet EfficientNet-Lite0 (not CLIP), 1280-d, 60000 / 10000 images, 10 classes;
- ``font-chars-efficientnet``: 62 characters rendered in the installed fonts
  (:mod:`torchfpe.data.fonts`) through the same encoder: many classes per neuron on real images.

Both are marked ``standin=True``: real images through a real pretrained encoder, but not the paper's
CLIP, so reports never put the paper's CLIP numbers beside them.

**Subsets.** ``NAME:TRAIN`` keeps the first TRAIN training images and every test image;
``NAME:TRAIN/TEST`` also the first TEST test images (e.g. ``fashion-mnist-efficientnet:6000/1000``).
Each split's order is a random one (Fashion-MNIST's files are shuffled; the font set is shuffled with
its seed), so a prefix is a random subset; class counts in the chosen prefix are whatever they are.

**Cache.** Features are computed in chunks of :data:`CHUNK` consecutive images and each chunk is kept
in the cache folder (``cache_dir``, default as for the other built-ins): a subset computes only the
chunks it covers, the whole set reuses them, and an interrupted build keeps its finished chunks. The
folder's name holds a hash of the recipe (encoder, preprocessing, raw files), so a changed recipe
never reuses old chunks. Chunks and the manifest are written atomically; a file lock makes concurrent
processes wait for the one that computes instead of computing twice. Progress goes to stderr from
the first second (a live bar on a terminal, a line every 10 s in a log).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .embeddings import EmbeddingFileError, EmbeddingSet, to_embedding_set, validate_arrays

CHUNK = 1000
RECIPE_VERSION = 1  # bump when the computation changes so that old chunks are not reused
SUBSET = re.compile(r"^(?P<name>[a-z0-9-]+):(?P<train>\d+)(?:/(?P<test>\d+))?$")


@dataclass(frozen=True)
class FeatureSet:
    """A built-in feature set: an image set (:data:`torchfpe.data.imagesets.IMAGE_SETS`) through an encoder."""

    name: str
    image_set: str
    encoder: str
    image_size: int
    batch_size: int = 64


#: Feature sets by name. Input sizes and batch sizes: the measurements behind them are in
#: docs/embeddings.md (Fashion-MNIST: a linear probe reaches 82.8 / 84.9 / 85.6 % at 64 / 96 / 112 px
#: for 3.3 / 7.2 / 14 minutes of one core for the 70000 images; batches of 32-64 are fastest on a CPU).
FEATURE_SETS: dict[str, FeatureSet] = {
    spec.name: spec
    for spec in [
        FeatureSet("fashion-mnist-efficientnet", "fashion-mnist", "efficientnet-lite0", 96, batch_size=32),
        FeatureSet("font-chars-efficientnet", "font-chars", "efficientnet-lite0", 64),
    ]
}
FEATURE_SET_NAMES = tuple(FEATURE_SETS)


def parse_name(source: str) -> tuple[str, int | None, int | None] | None:
    """``("fashion-mnist-efficientnet", 6000, 1000)`` for "fashion-mnist-efficientnet:6000/1000"; None if
    ``source`` names no feature set."""
    if source in FEATURE_SETS:
        return source, None, None
    match = SUBSET.match(source)
    if match is None or match["name"] not in FEATURE_SETS:
        return None
    sizes = [int(match["train"]), int(match["test"]) if match["test"] else None]
    for label, size in zip(("train", "test"), sizes):
        if size is not None and size < 1:
            raise EmbeddingFileError(f"{source}: the {label} subset size must be >= 1")
    return match["name"], sizes[0], sizes[1]


def load_feature_set(
    name: str,
    *,
    train_size: int | None = None,
    test_size: int | None = None,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    quiet: bool = False,
) -> EmbeddingSet:
    """The feature set ``name`` (the first ``train_size`` / ``test_size`` images of each split, or all),
    from the cache, computing the chunks it lacks first (see the module docstring)."""
    from .efficientnet import Preprocessing, check_available, encoder_spec
    from .imagesets import image_source
    from .standin import default_cache_dir

    if name not in FEATURE_SETS:
        raise EmbeddingFileError(f"unknown feature set {name!r}; built-in feature sets: {', '.join(FEATURE_SET_NAMES)}")
    for label, size in (("train_size", train_size), ("test_size", test_size)):
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise EmbeddingFileError(f"{name}: {label} must be None or an int >= 1; got {size!r}")
    spec = FEATURE_SETS[name]
    source = image_source(spec.image_set)
    check_available(spec.encoder)  # the packages are there: before any work
    preprocessing = Preprocessing(spec.image_size)
    recipe = {"version": RECIPE_VERSION, "feature_set": name, "encoder": spec.encoder,
              "weights": encoder_spec(spec.encoder).weights_package, "preprocessing": preprocessing.to_json(),
              "batch_size": spec.batch_size, "chunk": CHUNK, "images": source.fingerprint(data_dir)}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = folder / "features" / f"{name}-{key}"
    wanted = {"train": train_size, "test": test_size}

    manifest = _read_manifest(folder)
    if manifest is None or _missing(folder, manifest, wanted):
        with _progress_display(quiet) as progress:
            with _locked(folder / ".lock", name, quiet):
                manifest = _read_manifest(folder)  # another process may have finished while this one waited
                images = None
                if manifest is None or _missing(folder, manifest, wanted):
                    task = progress.add_task(f"{name}: loading {source.title} (cache {folder})", total=1) if progress else None
                    images = source.load(data_dir, progress)
                    if progress:
                        progress.advance(task, 1)
                if manifest is None:
                    manifest = _write_manifest(folder, spec, images, recipe)
                missing = _missing(folder, manifest, wanted)
                if missing:
                    _compute(folder, spec, images, missing, device, progress)
    return _assemble(folder, spec, manifest, wanted)


# ------------------------------------------------------------------------------------ cache files

def _chunk_path(folder: Path, split: str, index: int) -> Path:
    return folder / f"{split}-{index:04d}.npz"


def _read_manifest(folder: Path) -> dict | None:
    path = folder / "manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # unreadable: rebuilt under the lock


def _write_manifest(folder: Path, spec: FeatureSet, images, recipe: dict) -> dict:
    manifest = {"recipe": recipe, "class_names": list(images.class_names), "image_set": images.name,
                "image_note": images.note, "train": int(len(images.y_train)), "test": int(len(images.y_test))}
    _atomic_write(folder / "manifest.json", lambda stream: stream.write(json.dumps(manifest, indent=1).encode()))
    return manifest


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _count(manifest: dict, split: str, wanted: int | None, name: str) -> int:
    total = manifest[split]
    if wanted is not None and wanted > total:
        raise EmbeddingFileError(f"{name}: asks for {wanted} {split} images but the set has {total}")
    return total if wanted is None else wanted


def _missing(folder: Path, manifest: dict, wanted: dict) -> list[tuple[str, int]]:
    name = manifest["recipe"]["feature_set"]
    chunks = []
    for split in ("train", "test"):
        count = _count(manifest, split, wanted[split], name)
        chunks += [(split, i) for i in range(-(-count // CHUNK)) if not _chunk_path(folder, split, i).is_file()]
    return chunks


def _compute(folder: Path, spec: FeatureSet, images, missing, device, progress) -> None:
    from .efficientnet import load_encoder
    from .encode import encode_images

    tensors = {"train": (images.x_train, images.y_train), "test": (images.x_test, images.y_test)}
    total = sum(min(CHUNK, len(tensors[split][1]) - i * CHUNK) for split, i in missing)
    task = progress.add_task(f"{spec.name}: encoding {total} images", total=total) if progress else None
    encoder = load_encoder(spec.encoder, device=device, image_size=spec.image_size)
    for split, index in missing:
        x, y = tensors[split]
        rows = slice(index * CHUNK, (index + 1) * CHUNK)
        features = encode_images(encoder, x[rows], batch_size=spec.batch_size, progress=progress, task=task)
        labels = np.asarray(y[rows], dtype=np.int64)
        _atomic_write(_chunk_path(folder, split, index),
                      lambda stream: np.savez(stream, X=features, y=labels))


def _assemble(folder: Path, spec: FeatureSet, manifest: dict, wanted: dict) -> EmbeddingSet:
    from .efficientnet import Preprocessing, encoder_spec

    arrays = {}
    for split in ("train", "test"):
        count = _count(manifest, split, wanted[split], spec.name)
        xs, ys = [], []
        for index in range(-(-count // CHUNK)):
            path = _chunk_path(folder, split, index)
            try:
                with np.load(path, allow_pickle=False) as chunk:
                    xs.append(chunk["X"])
                    ys.append(chunk["y"])
            except Exception as error:  # a damaged cache file: say which, and how to recover
                raise EmbeddingFileError(f"{path}: damaged cache file ({error}); delete it and load again to "
                                         f"recompute it") from None
        arrays[split] = (np.concatenate(xs)[:count], np.concatenate(ys)[:count])
    checked = validate_arrays(str(folder), *arrays["train"], *arrays["test"], manifest["class_names"])
    sizes = (manifest["train"], manifest["test"])
    counts = (len(arrays["train"][1]), len(arrays["test"][1]))
    encoder = encoder_spec(spec.encoder)
    # the data set's name in reports, e.g. "Fashion-MNIST through a frozen ImageNet EfficientNet-Lite0 (not CLIP)"
    title = f"{manifest['image_set']} through a frozen ImageNet {encoder.title} (not CLIP)"
    if counts != sizes:
        title += f", first {counts[0]} train / {counts[1]} test images"
    preprocessing = Preprocessing(spec.image_size)
    note = (f"{manifest['image_set']} ({manifest['image_note']}) through a frozen {encoder.title} with ImageNet-pretrained "
            f"weights ({encoder.weights_package}), {spec.image_size} px input, global-average-pooled "
            f"{encoder.dim}-d features; a stand-in for the paper's CLIP features (a real pretrained encoder, "
            f"not CLIP)")
    meta = {"encoder": spec.encoder, "encoder_weights": encoder.weights_package,
            "preprocessing": preprocessing.to_json(), "cache": str(folder),
            "feature_set": spec.name, "train_images": str(counts[0]), "test_images": str(counts[1])}
    return to_embedding_set(checked, name=title, standin=True, note=note, meta=meta)


# ------------------------------------------------------------------------------------ lock, progress

@contextlib.contextmanager
def _locked(lock: Path, name: str, quiet: bool):
    """One process computes while the others wait (told so once); released by the OS if it dies."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock; atomic writes still keep every file whole
        yield
        return
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not quiet:
                print(f"{name}: another process is computing it; waiting for it (lock {lock})", file=sys.stderr,
                      flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _progress_display(quiet: bool):
    from .encode import _progress

    return _progress(quiet)
