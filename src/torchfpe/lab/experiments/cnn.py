"""A small CNN on Fashion-MNIST whose classifier head is expanded and trained jointly with the backbone.

Model (plain ``torch.nn``): backbone ``conv 1→16 (3×3) → ReLU → max-pool 2 → conv 16→32 (3×3) →
ReLU → max-pool 2 → flatten → linear 1568→256 → ReLU`` (feature size 256), head
``linear 256→neurons → ReLU → linear neurons→10``. The protocol is the paper's: the whole network
trains dense for T1 epochs, the head's hidden layer is expanded (``expand(layers=["head.0"])``,
backbone untouched), then the whole network trains on for T2 epochs. The dense baseline trains
T1 + T2 epochs. Budgets count every non-zero of the network; only head layers are pruned.

Defaults, chosen to fit 2 CPU cores (each a config field):

- ``train_size=10000``: a fixed random subset of the 60000 training images (the same subset for
  every seed; drawn with seed 0); ``train_size=None`` uses all. The test set is the full 10000.
- Adam, lr 1e-3, minibatches of 128, 3 + 3 epochs; pixels scaled to [0, 1].

Data: Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` or ``data_dir`` holding the
IDX files (:func:`torchfpe.data.load_fashion_mnist`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ... import metrics
from ...core.validation import Interval
from . import protocol
from .heads import DTYPES
from .studies import Study, real_meta

FEATURES = 256
CLASSES = 10


def load_images(data_dir: str | None):
    """Fashion-MNIST as uint8 images and int64 labels (:func:`torchfpe.data.load_fashion_mnist`)."""
    from ...data import load_fashion_mnist

    return load_fashion_mnist(data_dir)


@functools.lru_cache(maxsize=2)
def prepared_data(data_dir: str | None, train_size: int | None, dtype: str) -> protocol.Data:
    images = load_images(data_dir)
    x_train, y_train = torch.as_tensor(images.x_train), torch.as_tensor(images.y_train).long()
    x_test, y_test = torch.as_tensor(images.x_test), torch.as_tensor(images.y_test).long()
    total = len(x_train)
    if train_size is not None and train_size < total:
        keep = torch.randperm(total, generator=torch.Generator().manual_seed(0))[:train_size]
        x_train, y_train = x_train[keep], y_train[keep]
    to = DTYPES[dtype]

    def scale(x):
        return (x.to(to) / 255.0).unsqueeze(1)  # (N, 1, 28, 28)

    used = len(x_train)
    name = "Fashion-MNIST images" + (f" ({used}-example training subset)" if used < total else "")
    return protocol.Data(scale(x_train), y_train, scale(x_test), y_test, {"name": name, "train_examples": used})


def cnn(neurons: int, seed: int, dtype: str) -> nn.Sequential:
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    backbone = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, FEATURES), nn.ReLU(),
    )
    head = nn.Sequential(nn.Linear(FEATURES, neurons), nn.ReLU(), nn.Linear(neurons, CLASSES))
    model = nn.Sequential()
    model.add_module("backbone", backbone)
    model.add_module("head", head)
    torch.random.set_rng_state(state)
    return model.to(DTYPES[dtype])


@torch.no_grad()
def dead_units(model: nn.Module, x: torch.Tensor, chunk: int) -> int:
    """Hidden units of the head whose ReLU is 0 on every image of ``x``: they pass no gradient to their
    incoming weights, so a narrow head with several of them is stuck (how a 4-unit head fails)."""
    was_training = model.training
    model.eval()
    alive = None
    for start in range(0, len(x), chunk):
        fired = (model.head[1](model.head[0](model.backbone(x[start:start + chunk]))) > 0).any(dim=0)
        alive = fired if alive is None else alive | fired
    model.train(was_training)
    return int((~alive).sum())


class CNNTask(protocol.Task):
    kind = "multiclass"
    fold_keys = ("capacity_mean", "cosine_abs_mean")
    eval_batch = 2000  # evaluate 10000 test images in chunks: bounded memory

    def data(self, config: "CNNConfig") -> protocol.Data:
        return prepared_data(config.data_dir, config.train_size, config.dtype)

    def check(self, config: "CNNConfig") -> None:
        """Load Fashion-MNIST before any run (missing or corrupt IDX files: ValueError naming the folder)."""
        self.data(config)

    def files(self, config: "CNNConfig") -> tuple[str, ...]:
        from ...data.digest import fashion_mnist_paths

        return () if config.data_dir is None else tuple(str(path) for path in fashion_mnist_paths(config.data_dir))

    def parent(self, config: "CNNConfig") -> nn.Module:
        return cnn(config.neurons, config.seed, config.dtype)

    def expand_kwargs(self, config: "CNNConfig", split: str, data: protocol.Data) -> dict:
        return {"layers": ["head.0"]}

    def record_extras(self, config: "CNNConfig", variant: str, model: nn.Module, data: protocol.Data) -> dict:
        weight = dict(metrics.hidden_weights(model))["head.0"]
        return {"neurons": config.neurons, "hidden_units": int(weight.shape[0]), "dataset": data.info["name"],
                "standin": False, "train_examples": data.info["train_examples"], "feature_size": FEATURES,
                "dead_units": dead_units(model, data.x_train, self.eval_batch),
                **metrics.interference_metrics(weight)}


TASK = CNNTask()


@dataclass(frozen=True)
class CNNConfig(protocol.ProtocolConfig):
    # data
    data_dir: str | None = None  # folder with the Fashion-MNIST IDX files; None: the Debian package
    train_size: int | None = 10000  # training subset (seed 0); None: all 60000
    # training: whole network, Adam at lr 1e-3 in minibatches of 128, 3 + 3 epochs (fits 2 CPU cores)
    lr: float = 1e-3
    batch_size: int | None = 128
    warmup_epochs: int = 3
    epochs_after: int = 3
    variants: tuple[str, ...] = ("dense", "random", "feature")

    task: ClassVar[protocol.Task] = TASK

    def constraints(self) -> dict:
        return {"data_dir": [str, None], "train_size": [Interval(int, 10), None], **super().constraints()}


STUDIES = (
    Study("width", "cnn", "small CNN on Fashion-MNIST, classifier head 256 → width → 10 expanded and trained "
          "jointly with the backbone", {"neurons": (4, 8, 16, 32)}, {"variants": "dense+random"},
          default_seeds=5, group="cnn",
          meta=real_meta("cells", "Fashion-MNIST images (Debian package dataset-fashion-mnist or --data DIR); "
                                  "the training set is subsampled as the data set's name says")),
)

EXPERIMENT = protocol.register("cnn", CNNConfig, STUDIES)
