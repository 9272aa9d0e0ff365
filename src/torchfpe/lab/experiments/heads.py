"""Classifier heads over frozen embeddings: one hidden layer, dense vs FPE at the same non-zero count.

The paper's vision experiment: a small MLP ``d → neurons (ReLU) → C`` over frozen image embeddings
(CLIP in the paper; here any embedding file or a built-in stand-in, see :mod:`torchfpe.data`),
trained with the two-phase protocol of :mod:`torchfpe.lab.experiments.protocol` and multi-class
cross-entropy. FPE widens the hidden layer alpha-fold at the parent's non-zero count; the controls
(overlap, DropConnect, static sparsity at the same width) and wider dense models (``wide<scale>``,
about ``scale`` times the non-zeros) are variants of the same run.

Defaults and why (each one a config field, overridable with ``--set``):

- data: ``embeddings="fashion-mnist-efficientnet"``, real pretrained features: Fashion-MNIST through
  a frozen ImageNet EfficientNet-Lite0 (not CLIP; like CLIP it never saw the heads' classes), the
  closest offline analogue of the paper's CLIP Fashion-MNIST; computed once and cached
  (:mod:`torchfpe.data.features`; ``NAME:TRAIN/TEST`` subsets keep quick runs quick). The
  label-free autoencoder stand-in ``fashion-mnist-ae`` is the control (``--embeddings
  fashion-mnist-ae``). The same embeddings for every seed (the seed fixes the initial weights, the
  splits and the minibatch order). Features are standardised with the training set's mean and
  standard deviation.
- ``classes=None``: every class; an int keeps the first ``classes`` classes (class-subset sweeps).
- ``steps_per_epoch=None``: an epoch is one pass over the training set. An int fixes the number of
  optimizer steps instead, whatever the training set's size: ``warmup_epochs`` and ``epochs_after``
  then count epochs of ``steps_per_epoch`` minibatches, and each phase runs the whole number of
  passes over the (class-subset) training set whose step count is closest to that (at least one
  pass; the steps run are recorded as ``warmup_steps``/``steps_after``). Class-subset sweeps use it
  so that more classes do not also mean more training. ``None`` is left out of the run key, so the
  keys of runs made before the field existed are unchanged.
- ``correlation`` variant (beyond the paper, its "future work"; a registered split that needs
  ``data``, which this task provides as the training features): children partition the inputs by
  their correlation over the training set, so each child sees a group of inputs that co-vary in the
  data. Deep models split their first layer this way and deeper layers at random.
- training: Adam, lr 1e-2, minibatches of 2048, 10 + 10 epochs (the paper: 25 + 25; ours keeps
  every default study within 15 minutes on 2 CPU cores; ``--set warmup_epochs=25 epochs_after=25``
  runs the paper's preset).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ... import metrics
from ...core import SPLITS
from ...core.validation import Interval, Predicate
from . import protocol
from .studies import Study, real_meta

DTYPES = protocol.DTYPES


# ------------------------------------------------------------------------------------------ data
def load_embedding_set(embeddings: str, data_dir: str | None):
    """The :class:`torchfpe.data.EmbeddingSet` behind a config (cached per process)."""
    return _load_cached(embeddings, data_dir)


@functools.lru_cache(maxsize=4)
def _load_cached(embeddings: str, data_dir: str | None):
    from ...data import load_embeddings

    return load_embeddings(embeddings, data_dir=data_dir, seed=0)


@functools.lru_cache(maxsize=8)
def prepared_data(embeddings: str, data_dir: str | None, classes: int | None, dtype: str) -> protocol.Data:
    """Standardised features and labels (optionally the first ``classes`` classes); shared by all seeds."""
    data = load_embedding_set(embeddings, data_dir)
    x_train, y_train = data.x_train.to(torch.float64), data.y_train.to(torch.int64)
    x_test, y_test = data.x_test.to(torch.float64), data.y_test.to(torch.int64)
    available = int(max(int(y_train.max()), int(y_test.max())) + 1)
    if classes is not None:
        if classes > available:
            raise ValueError(f"classes={classes} but {data.name} has {available} classes")
        keep_train, keep_test = y_train < classes, y_test < classes
        x_train, y_train, x_test, y_test = x_train[keep_train], y_train[keep_train], x_test[keep_test], y_test[keep_test]
    mean, std = x_train.mean(dim=0), x_train.std(dim=0).clamp_min(1e-8)
    to = DTYPES[dtype]
    info = {"name": data.name, "standin": bool(getattr(data, "standin", False)),
            "classes": classes or available, "features": int(x_train.shape[1])}
    return protocol.Data(((x_train - mean) / std).to(to), y_train, ((x_test - mean) / std).to(to), y_test, info)


def mlp(features: int, widths: Sequence[int], classes: int, seed: int, dtype: str) -> nn.Sequential:
    """``features → widths[0] → … → classes`` with ReLUs, initialised from ``seed`` (global RNG untouched)."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for fan_in, width in zip([features, *widths], widths):
        layers += [nn.Linear(fan_in, width), nn.ReLU()]
    layers.append(nn.Linear(widths[-1] if widths else features, classes))
    model = nn.Sequential(*layers).to(DTYPES[dtype])
    torch.random.set_rng_state(state)
    return model


def wide_width(scale: float, neurons: int, features: int, classes: int, depth: int = 1) -> int:
    """Hidden width (all layers) whose dense MLP has about ``scale`` times the non-zeros of width ``neurons``."""
    def count(h: int) -> int:
        return (features + 1) * h + (depth - 1) * (h + 1) * h + (h + 1) * classes

    target = scale * count(neurons)
    return min(range(1, 64 * neurons + 2), key=lambda h: (abs(count(h) - target), h))


# ------------------------------------------------------------------------------------------ the task
class HeadsTask(protocol.Task):
    """Multi-class head over fixed features; the hidden layers are ``depth`` layers of ``neurons``."""

    kind = "multiclass"
    provides = ("data",)  # the training features, for splits that read data (correlation)
    fold_keys = ("capacity_mean", "cosine_abs_mean")

    def data(self, config) -> protocol.Data:
        return prepared_data(config.embeddings, config.data_dir, config.classes, config.dtype)

    def check(self, config) -> None:
        """Load the config's data before any run (a missing or bad file, too many classes: ValueError),
        and check that alpha fits the first layer's fan-in (the embedding's features)."""
        info = self.data(config).info
        protocol.check_alpha(config, info["features"], str(info["features"]),
                             f"the first hidden layer reads the {info['features']} features of {info['name']}")

    def files(self, config) -> tuple[str, ...]:
        from ...data import BUILTINS, parse_name
        from ...data.digest import fashion_mnist_paths

        feature_set = parse_name(config.embeddings)  # a real-feature set or a subset of one ("NAME:6000/1000")
        builtin = config.embeddings in BUILTINS or feature_set is not None
        named = [] if builtin else [config.embeddings]
        reads_idx = config.embeddings == "fashion-mnist-ae" or (feature_set or ("",))[0] == "fashion-mnist-efficientnet"
        if config.data_dir is not None and reads_idx:
            named += [str(path) for path in fashion_mnist_paths(config.data_dir)]
        return tuple(named)

    def _depth(self, config) -> int:
        return getattr(config, "depth", 1)

    def parent(self, config) -> nn.Module:
        info = self.data(config).info
        return mlp(info["features"], [config.neurons] * self._depth(config), info["classes"], config.seed,
                   config.dtype)

    def wide_parent(self, config, scale: float) -> nn.Module:
        info = self.data(config).info
        width = wide_width(scale, config.neurons, info["features"], info["classes"], self._depth(config))
        return mlp(info["features"], [width] * self._depth(config), info["classes"], config.seed, config.dtype)

    def expand_kwargs(self, config, split: str, data: protocol.Data) -> dict:
        if "data" not in SPLITS[split].needs or self._depth(config) == 1:
            return {}
        # the data are the first layer's inputs: deeper layers of a deep model split at random
        first, *deeper = [f"{2 * i}" for i in range(self._depth(config))]  # incoming Linears of the MLP
        return {"split": {first: split, **{name: "random" for name in deeper}}}

    def schedule(self, config) -> tuple:
        """The passes the config's fixed step count becomes (:func:`scheduled`); each record gains the
        passes it ran (``warmup_passes``, ``passes_after``)."""
        ran = scheduled(config)
        return ran, {"warmup_passes": ran.warmup_epochs, "passes_after": ran.epochs_after}

    def record_extras(self, config, variant: str, model: nn.Module, data: protocol.Data) -> dict:
        weight = metrics.hidden_weights(model)[0][1]
        per_pass = steps_per_pass(len(data.y_train), config.batch_size)
        return {
            "neurons": config.neurons, "hidden_units": int(weight.shape[0]),
            "dataset": data.info["name"], "standin": data.info["standin"],
            "n_classes": data.info["classes"], "n_features": data.info["features"],
            "train_examples": int(len(data.y_train)),
            # the optimizer steps of the two phases (config is the one the protocol ran: epochs = passes)
            "warmup_steps": config.warmup_epochs * per_pass, "steps_after": config.epochs_after * per_pass,
            **metrics.interference_metrics(weight),
        }


TASK = HeadsTask()


# ------------------------------------------------------------------------------------------ fixed steps
def steps_per_pass(examples: int, batch_size: int | None) -> int:
    """Optimizer steps of one pass over ``examples`` (the last minibatch may be smaller)."""
    return 1 if batch_size is None else math.ceil(examples / batch_size)


def passes(epochs: int, steps_per_epoch: int, per_pass: int) -> int:
    """Whole passes whose step count is closest to ``epochs × steps_per_epoch`` (at least 1 if epochs > 0)."""
    return 0 if epochs == 0 else max(1, math.floor(epochs * steps_per_epoch / per_pass + 0.5))  # halves round up


def scheduled(config):
    """The config the protocol runs: with ``steps_per_epoch`` set, its epochs become passes over the
    training set (see the module docstring); otherwise the config itself."""
    if config.steps_per_epoch is None:
        return config
    per_pass = steps_per_pass(len(config.task.data(config).y_train), config.batch_size)
    return dataclasses.replace(config, steps_per_epoch=None,
                               warmup_epochs=passes(config.warmup_epochs, config.steps_per_epoch, per_pass),
                               epochs_after=passes(config.epochs_after, config.steps_per_epoch, per_pass))


# ------------------------------------------------------------------------------------------ the config
@dataclass(frozen=True)
class HeadsConfig(protocol.ProtocolConfig):
    """One run of a classifier head. Defaults: see the module docstring for why."""

    # data
    embeddings: str = "fashion-mnist-efficientnet"  # an embedding file (.npz / .parquet) or a built-in name
    data_dir: str | None = None  # where built-in sets find their raw files (e.g. Fashion-MNIST IDX)
    classes: int | None = None  # keep the first `classes` classes; None: all
    # training: minibatches of 2048, 10 + 10 epochs (the protocol's default epochs)
    batch_size: int | None = 2048
    steps_per_epoch: int | None = None  # None: an epoch is one pass; an int: epochs of this many steps
    variants: tuple[str, ...] = ("dense", "random", "feature")

    task: ClassVar[protocol.Task] = TASK

    def constraints(self) -> dict:
        source = Predicate(lambda v: isinstance(v, str) and bool(v), "a file path or a built-in name")
        return {"embeddings": [source], "data_dir": [str, None], "classes": [Interval(int, 2), None],
                "steps_per_epoch": [Interval(int, 1), None], **super().constraints()}

    def to_dict(self) -> dict:
        """As the protocol's, without ``steps_per_epoch`` while it is None: run keys hash this dict, and
        runs stored before the field existed must keep their keys."""
        values = super().to_dict()
        if values.get("steps_per_epoch") is None:
            values.pop("steps_per_epoch", None)
        return values


# ------------------------------------------------------------------------------------------ studies
HEADS_CONTROLS = "dense+random+feature+overlap+dropconnect+static_sparse"
#: The font set's 62-class training set in minibatches of 256 (21700 images with the 175 fonts of
#: docs/embeddings.md): the classes study gives every class subset this many steps per epoch.
FONT_STEPS_PER_EPOCH = 85
STUDIES = (
    Study("width", "heads", "one hidden layer over embeddings: widths × alpha, FPE (random, feature) vs "
          "dense at the same non-zero count, with the overlap, DropConnect and static-sparse controls",
          {"neurons": (2, 4, 8, 16, 32), "alpha": (2, 4)}, {"variants": HEADS_CONTROLS}, default_seeds=5,
          group="heads", meta=real_meta("cells")),
    Study("classes", "heads", "class subsets × width × alpha on the 62-class font-character set (real "
          "features): does the gain grow with classes per neuron? Every subset trains the same number of "
          "optimizer steps", {"classes": (10, 20, 36, 62), "neurons": (2, 4, 8, 16), "alpha": (2, 4)},
          {"embeddings": "font-chars-efficientnet", "variants": "dense+random", "batch_size": 256,
           "warmup_epochs": 20, "epochs_after": 20, "steps_per_epoch": FONT_STEPS_PER_EPOCH}, default_seeds=5,
          group="heads", meta=real_meta("cells")),
    Study("classes-synthetic", "heads", "class subsets × width on the synthetic 100-class set (Gaussian "
          "clusters), every subset at the 100-class set's step count", {"classes": (10, 25, 50, 100),
                                                                        "neurons": (4, 8, 16)},
          {"embeddings": "synthetic-100", "variants": "dense+random", "alpha": 4, "batch_size": 256,
           "warmup_epochs": 20, "epochs_after": 20, "steps_per_epoch": 40}, default_seeds=5,
          group="heads", meta=real_meta("cells")),
    Study("match", "heads", "how much wider must dense be to match FPE: dense at 1×, 1.25×, 1.5×, 2×, 3× "
          "the non-zero count vs FPE (alpha = 4)", {"neurons": (2, 4, 8, 16)},
          {"alpha": 4, "variants": "dense+random+feature+wide1.25+wide1.5+wide2+wide3"}, default_seeds=5,
          group="heads", meta=real_meta("match")),
    Study("splits", "heads", "beyond the paper: the data-driven correlation split (inputs clustered by their "
          "correlation over the training set) against the random and feature splits",
          {"neurons": (2, 8, 32), "alpha": (2, 4)}, {"variants": "dense+random+feature+correlation"},
          default_seeds=5, group="heads", meta=real_meta("cells")),
)

EXPERIMENT = protocol.register("heads", HeadsConfig, STUDIES)
