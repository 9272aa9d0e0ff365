"""A deep MLP over frozen embeddings with every hidden layer expanded (the paper's 5-layer network).

``d → neurons → neurons → neurons → neurons → C`` (``depth = 4`` hidden layers, 5 linear layers),
ReLU between them, trained with the two-phase protocol. ``expand`` treats every pair of consecutive
linear layers as a (incoming, outgoing) pair, so each hidden layer is split alpha-fold and the
layer after it gets alpha copies of each column; the budget prunes globally back to the parent's
non-zero count. One alpha fits every layer as long as ``alpha <= neurons`` (the smallest fan-in),
so no per-layer alpha is needed for the default grid.

Everything else (data, defaults, controls, records) is as in :mod:`torchfpe.experiments.heads`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from . import protocol
from ..core.validation import build_config
from .heads import TASK, HeadsConfig, check_config  # noqa: F401 - check_config re-exported


@dataclass(frozen=True)
class DeepConfig(HeadsConfig):
    depth: int = 4  # hidden layers

    def _constraints(self) -> dict:
        from ..core.validation import Interval

        return {**super()._constraints(), "depth": [Interval(int, 1)]}


def make_config(**overrides) -> DeepConfig:
    return build_config(DeepConfig, overrides, "deep")


def run_batch(configs: Sequence[DeepConfig]) -> list[dict]:
    return protocol.run_batch(TASK, configs)


def run_single(config: DeepConfig) -> list[dict]:
    return protocol.run_single(TASK, config)
