"""A frozen-encoder stand-in for CLIP: an autoencoder trained here on Fashion-MNIST's training images
without their labels, frozen, whose bottleneck features become an embedding file.

Why no labels: an encoder trained on the classes the heads predict would lay those classes out for
them and hide the effect FPE is about (several classes sharing a neuron). Like CLIP, this encoder
learns from images alone. The file goes through the same path as CLIP extraction
(:func:`torchfpe.data.encode.encode_to_file`) and is cached, so later runs reuse it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .embeddings import EmbeddingSet, read_npz
from .encode import LabelledImages, encode_to_file
from .idx import FASHION_MNIST_DIR, load_fashion_mnist

CACHE_ENV = "TORCHFPE_CACHE_DIR"
STANDIN_VERSION = 1  # bump when the recipe changes so old cache files are not reused


def default_cache_dir() -> Path:
    """``$TORCHFPE_CACHE_DIR``, else ``$XDG_CACHE_HOME/torchfpe``, else ``~/.cache/torchfpe``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "torchfpe"


@dataclass(frozen=True)
class AutoencoderConfig:
    """The stand-in's recipe. Defaults: about a minute on one CPU core (8 epochs over 60000 images)."""

    dim: int = 64            # embedding width (CLIP ViT-B/32 has 512; 64 keeps the heads cheap)
    hidden: int = 256
    epochs: int = 8
    batch_size: int = 256
    lr: float = 2e-3
    train_images: int | None = None  # None: every training image; a small number for quick tests

    def __post_init__(self):
        for key in ("dim", "hidden", "epochs", "batch_size"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ValueError(f"AutoencoderConfig.{key} must be a positive int; got {getattr(self, key)!r}")
        if self.train_images is not None and (not isinstance(self.train_images, int) or self.train_images < 2):
            raise ValueError(f"AutoencoderConfig.train_images must be None or an int >= 2; got {self.train_images!r}")


class MLPAutoencoder(nn.Module):
    """784 -> hidden -> dim (linear bottleneck: the embedding) -> hidden -> 784 (sigmoid)."""

    def __init__(self, dim: int, hidden: int, pixels: int = 28 * 28):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(pixels, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.decoder = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, pixels), nn.Sigmoid())

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(pixels))


def _pixels(images: torch.Tensor) -> torch.Tensor:
    return images.reshape(len(images), -1).to(torch.float32) / 255.0


def train_autoencoder(images: torch.Tensor, config: AutoencoderConfig, *, seed: int = 0) -> MLPAutoencoder:
    """Fit the autoencoder to reconstruct ``images`` (uint8, N x 28 x 28); labels are never seen."""
    # Own generators, so the global RNG is untouched (and threads do not race on it): one for the
    # initial weights (PyTorch's default nn.Linear initialisation, drawn in the same order), one for the
    # batch order.
    weights, order = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    model = MLPAutoencoder(config.dim, config.hidden)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=weights)
                bound = 1 / math.sqrt(layer.in_features)
                nn.init.uniform_(layer.bias, -bound, bound, generator=weights)
    pixels = _pixels(images if config.train_images is None else images[: config.train_images])
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    for _ in range(config.epochs):
        for batch in torch.randperm(len(pixels), generator=order).split(config.batch_size):
            optimizer.zero_grad()
            loss = nn.functional.binary_cross_entropy(model(pixels[batch]), pixels[batch])
            loss.backward()
            optimizer.step()
    model.eval().requires_grad_(False)
    return model


@dataclass
class AutoencoderImageEncoder:
    """The frozen encoder half as an :class:`~torchfpe.data.encode.ImageEncoder` over uint8 image batches."""

    model: MLPAutoencoder
    description: str = "MLP autoencoder trained without labels on Fashion-MNIST training images"

    def encode(self, images: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return self.model.encoder(_pixels(images)).numpy()


def cache_path(cache_dir: Path, config: AutoencoderConfig, seed: int, data_folder: Path) -> Path:
    """The cache file of one build. A folder other than the Debian package's is also keyed by its files'
    content: new images copied to the same folder must not get the old vectors (the package's files
    change only with the package, and its key stays what it was, so existing caches stay valid)."""
    fields = {"version": STANDIN_VERSION, "seed": seed, "data": str(data_folder.resolve()), **asdict(config)}
    if data_folder.resolve() != FASHION_MNIST_DIR.resolve():
        from .digest import fashion_mnist_paths, file_digest

        fields["content"] = [file_digest(path) for path in fashion_mnist_paths(data_folder)]
    key = json.dumps(fields, sort_keys=True)
    return cache_dir / f"fashion-mnist-ae-seed{seed}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npz"


def fashion_mnist_ae(
    seed: int = 0,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    config: AutoencoderConfig | None = None,
    quiet: bool = True,
) -> EmbeddingSet:
    """The stand-in embedding set: cached file if there is one, else train, freeze, encode, cache."""
    config = config or AutoencoderConfig()
    folder = Path(data_dir) if data_dir is not None else FASHION_MNIST_DIR
    path = cache_path(Path(cache_dir) if cache_dir is not None else default_cache_dir(), config, seed, folder)
    if not path.is_file():
        images = load_fashion_mnist(folder)  # validates (or says how to get the data) before anything is written
        with _exclusive(path.with_suffix(".lock")):
            if not path.is_file():  # another process may have built it while this one waited
                _build(images, config, seed, path, quiet)
    return read_npz(path)


def _build(images, config: AutoencoderConfig, seed: int, path: Path, quiet: bool) -> None:
    model = train_autoencoder(images.x_train, config, seed=seed)
    encoder = AutoencoderImageEncoder(model)
    encode_to_file(
        encoder,
        LabelledImages(images.x_train, images.y_train.numpy()),
        LabelledImages(images.x_test, images.y_test.numpy()),
        images.class_names, path,
        name="Fashion-MNIST autoencoder embeddings (stand-in for CLIP)",
        note=(f"{config.dim}-d bottleneck of an MLP autoencoder trained without labels on "
              f"{config.train_images or len(images.x_train)} Fashion-MNIST training images "
              f"({config.epochs} epochs, seed {seed}), frozen; a stand-in for CLIP image embeddings"),
        standin=True, batch_size=4096, quiet=quiet,
    )


@contextlib.contextmanager
def _exclusive(lock: Path):
    """One process builds a cache file while others wait (parallel workers asking for the stand-in at
    once would each train it otherwise). An advisory lock, released by the OS if the process dies."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock; the atomic write still keeps the file whole
        yield
        return
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
