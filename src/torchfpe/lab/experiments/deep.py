"""A deep MLP over frozen embeddings with every hidden layer expanded (the paper's 5-layer network).

``d → neurons → neurons → neurons → neurons → C`` (``depth = 4`` hidden layers, 5 linear layers),
ReLU between them, trained with the two-phase protocol. ``expand`` treats every pair of consecutive
linear layers as a (incoming, outgoing) pair, so each hidden layer is split alpha-fold and the
layer after it gets alpha copies of each column; the budget prunes globally back to the parent's
non-zero count. One alpha fits every layer as long as ``alpha <= neurons`` (the smallest fan-in),
so no per-layer alpha is needed for the default grid.

Everything else (data, defaults, controls, records) is as in :mod:`torchfpe.lab.experiments.heads`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...core.validation import Interval
from . import protocol
from .heads import HeadsConfig
from .studies import Study, real_meta


@dataclass(frozen=True)
class DeepConfig(HeadsConfig):
    depth: int = 4  # hidden layers

    def constraints(self) -> dict:
        return {**super().constraints(), "depth": [Interval(int, 1)]}

    def alpha_limit(self) -> tuple[int, str, str] | None:
        if self.depth == 1:
            return super().alpha_limit()
        return self.neurons, f"neurons={self.neurons}", "the fan-in of the deeper hidden layers"


STUDIES = (
    Study("width", "deep", "5-layer MLP (4 hidden layers, every one expanded) over embeddings: widths × alpha",
          {"neurons": (4, 8, 16), "alpha": (2, 4)}, {"variants": "dense+random+feature"}, default_seeds=5,
          group="deep", meta=real_meta("cells")),
    Study("fonts", "deep", "the 5-layer MLP on the 62-class font-character set (real features, many classes "
          "per neuron): widths × alpha", {"neurons": (4, 8, 16), "alpha": (2, 4)},
          {"embeddings": "font-chars-efficientnet", "variants": "dense+random+feature", "batch_size": 256,
           "warmup_epochs": 20, "epochs_after": 20}, default_seeds=5, group="deep", meta=real_meta("cells")),
)

EXPERIMENT = protocol.register("deep", DeepConfig, STUDIES)
