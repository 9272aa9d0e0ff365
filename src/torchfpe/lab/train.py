"""Fit loops, one model at a time: the readable reference path.

The two-phase protocol of the paper: dense warm-up for T1 epochs, ``expand``, then T2 more epochs
with a new optimizer of the same settings; the dense baseline keeps training (same optimizer) for
T1 + T2 epochs in all. :mod:`torchfpe.lab.batched` trains many same-shape models at once and gives the
same numbers up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.optim import OPTIMIZERS


def optimizer_names() -> tuple[str, ...]:
    """The registered optimizers' names (:data:`torchfpe.core.optim.OPTIMIZERS`), read at call time."""
    return tuple(OPTIMIZERS)


@dataclass(frozen=True)
class TrainSettings:
    """Optimizer settings shared by both phases of the protocol."""

    optimizer: str = "adam"
    lr: float = 5e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    batch_size: int | None = None  # None: full batch

    def __post_init__(self) -> None:
        from ..core.validation import Interval, Options, validate_dataclass

        validate_dataclass(self, {
            "optimizer": [Options(optimizer_names())], "lr": [Interval(float, 0.0, None, closed="neither")],
            "weight_decay": [Interval(float, 0.0)], "momentum": [Interval(float, 0.0)],
            "batch_size": [Interval(int, 1), None],
        }, "TrainSettings")


def make_optimizer(parameters, settings: TrainSettings) -> torch.optim.Optimizer:
    """A new optimizer of ``settings.optimizer`` (its registered builder) over ``parameters``."""
    values = {"lr": settings.lr, "weight_decay": settings.weight_decay, "momentum": settings.momentum}
    return OPTIMIZERS.build(settings.optimizer, parameters, values)


def binary_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean binary cross-entropy on logits of shape (..., N, 1) or (..., N) against 0/1 targets."""
    return F.binary_cross_entropy_with_logits(logits.reshape(targets.shape), targets)


def multiclass_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of logits (N, C) against integer class labels (N,)."""
    return F.cross_entropy(logits, targets)


def batch_order(examples: int, epochs: int, batch_size: int | None, generator: torch.Generator | None):
    """Index batches for ``epochs`` epochs: full batch (None) or a fresh permutation per epoch."""
    for _ in range(epochs):
        if batch_size is None or batch_size >= examples:
            yield None
            continue
        order = torch.randperm(examples, generator=generator)
        for start in range(0, examples, batch_size):
            yield order[start:start + batch_size]


def fit(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epochs: int,
    settings: TrainSettings,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
    loss_fn=binary_loss,
) -> torch.optim.Optimizer:
    """Train ``model`` in place for ``epochs`` epochs; returns the optimizer so training can go on."""
    optimizer = optimizer or make_optimizer(model.parameters(), settings)
    model.train()
    for index in batch_order(len(x), epochs, settings.batch_size, generator):
        xb, yb = (x, y) if index is None else (x[index], y[index])
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(xb), yb).backward()
        optimizer.step()
    return optimizer


@torch.no_grad()
def _logits(model: nn.Module, x: Tensor, eval_batch: int | None) -> Tensor:
    """The model's outputs in eval mode, in chunks of ``eval_batch`` examples (None: one pass)."""
    model.eval()
    if eval_batch is None or eval_batch >= len(x):
        logits = model(x)
    else:
        logits = torch.cat([model(x[i:i + eval_batch]) for i in range(0, len(x), eval_batch)])
    model.train()
    return logits


def binary_accuracy(model: nn.Module, x: Tensor, y: Tensor, eval_batch: int | None = None) -> float:
    """Fraction of 0/1 targets matched by the sign of the single logit."""
    logits = _logits(model, x, eval_batch).reshape(y.shape)
    return float(((logits > 0).to(y.dtype) == y).float().mean())


def multiclass_accuracy(model: nn.Module, x: Tensor, y: Tensor, eval_batch: int | None = None) -> float:
    """Fraction of integer labels matched by the arg-max logit."""
    return float((_logits(model, x, eval_batch).argmax(dim=1) == y).float().mean())
