"""The paper's symbolic experiment: one-hidden-layer networks on Boolean DNF formulas.

One *run* is one seed of one config: the seed fixes the formula, the data, the initial weights and
the splits. Every variant of a run shares the data and the dense warm-up:

- ``dense``: T1 + T2 epochs with one optimizer.
- FPE (``random``, ``clause``, ``feature``, ``contiguous``) and the ``overlap`` and ``dropconnect``
  controls: the dense model after T1 epochs, ``expand``-ed, then T2 epochs with a new optimizer
  of the same settings.
- ``static_sparse``: the width alpha·h under a random fixed mask drawn at initialisation
  (Golubeva et al. 2021), trained from scratch for T1 + T2 epochs.

The protocol itself lives in :mod:`torchfpe.lab.experiments.protocol`; this module is its
:class:`BooleanTask` (data, parent model, clause map, interference metrics), the config and the
studies, registered as the experiment ``boolean``: ``EXPERIMENT.run_batch(configs)`` trains the runs
of several seeds at once with :mod:`torchfpe.lab.batched`; ``EXPERIMENT.run_single(config)`` is the
one-model-at-a-time reference path that it must agree with.

Random streams (``BooleanConfig.streams``)
------------------------------------------
``"separate"`` (the default): the data, the initial weights and the split masks come from three
independent generators. The data keep the seed itself (so a formula and its data are the same in
both modes, and ``make_dnf(seed=s)`` is still run ``s``'s data); the initial weights and the splits
are seeded by :func:`stream_seed` ``(seed, "init")`` and ``(seed, "split")``.

``"shared"``: the code before 2026-12-07, kept so that its records can be reproduced: data, initial
weights and splits are all seeded by the seed itself. torch's global generator and a
``torch.Generator`` seeded alike give the same draws, so the random split's per-parent order was
the rank order of the parent's *initial* weights (``torch.rand`` and ``nn.Linear``'s uniform init
consume the same numbers): the split depended on the initial weights.

Run keys are the config's ``to_dict()``, which now names ``streams``: a result folder from before
this field holds runs whose configs lack it; they are read as ``"shared"`` (:func:`streams_of`) and
never reused for a new run (every new key names its streams).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ...core.validation import Interval, InvalidParameterError, Options, invalid

from ... import metrics
from ...tasks import DNFConfig, make_dnf
from . import protocol
from .studies import DATASET_NOTE, Study

DTYPES = protocol.DTYPES
#: How a run's random draws are seeded (see the module docstring); "separate" is the default.
STREAMS = ("separate", "shared")
#: What a stored config without a ``streams`` field was made with (the code before the field existed).
STREAMS_BEFORE_FIELD = "shared"
STREAM_PURPOSES = ("data", "init", "split")


def stream_seed(seed: int, purpose: str) -> int:
    """The seed of one purpose's generator, derived from (run seed, purpose) by a hash: independent of the
    other purposes' streams, the same on every machine and Python (no ``hash()`` salt), in [0, 2**63)."""
    if purpose not in STREAM_PURPOSES:
        raise ValueError(f"purpose must be one of {STREAM_PURPOSES}, got {purpose!r}")
    digest = hashlib.blake2b(f"torchfpe.boolean/{int(seed)}/{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def streams_of(config: Mapping) -> str:
    """The ``streams`` of a stored config (a record or a run file's config): absent means the old code's."""
    return config.get("streams", STREAMS_BEFORE_FIELD)


def _input_order(clauses: list[list[int]], n_vars: int) -> list[int]:
    """Inputs grouped clause by clause, then the unused ones: the order heat maps are drawn in."""
    order = list(dict.fromkeys(j for clause in clauses for j in clause))
    used = set(order)
    return order + [j for j in range(n_vars) if j not in used]


# ------------------------------------------------------------------------------------------ the task
class BooleanTask(protocol.Task):
    """A DNF formula per seed; one sigmoid output; the clause map feeds splits that need clauses."""

    kind = "binary"
    provides = ("clauses", "data")
    fold_keys = ("capacity_mean", "cosine_mean", "cosine_abs_mean")

    def data(self, config: "BooleanConfig") -> protocol.Data:
        task = make_dnf(config.task_config())
        dtype = DTYPES[config.dtype]
        return protocol.Data(task.x_train.to(dtype), task.y_train.to(dtype), task.x_test.to(dtype),
                             task.y_test.to(dtype), info=task.clauses)

    def split_inputs(self, config: "BooleanConfig", data: protocol.Data) -> dict:
        return {"clauses": data.info, "data": data.x_train}

    def parent(self, config: "BooleanConfig") -> nn.Module:
        return init_model(config)

    def split_seed(self, config: "BooleanConfig") -> int:
        return config.seed_for("split")

    def record_extras(self, config: "BooleanConfig", variant: str, model: nn.Module, data: protocol.Data) -> dict:
        weight = metrics.hidden_weights(model)[0][1]
        return {
            "hidden_units": int(weight.shape[0]), **metrics.interference_metrics(weight),
            "hidden_weight": weight,  # for the report's heat maps (not a CSV column)
            "input_order": _input_order(data.info, config.n_vars),
        }


TASK = BooleanTask()


# ------------------------------------------------------------------------------------------ the config
@dataclass(frozen=True)
class BooleanConfig(protocol.ProtocolConfig):
    """Everything that defines one run. Defaults: see docs/reproduction.md for why."""

    # task (see torchfpe.tasks.DNFConfig); n_vars=None means max(48, 2 * clauses * literals)
    n_vars: int | None = 48
    clauses: int = 8
    literals: int = 3
    negation_prob: float = 0.5
    variables: str = "disjoint"
    encoding: str = "pm1"
    sampling: str = "uniform"
    train_size: int = 4000
    test_size: int = 4000
    # the paper's Boolean preset: 1000 + 1000 full-batch epochs
    warmup_epochs: int = 1000
    epochs_after: int = 1000
    variants: tuple[str, ...] = ("dense", "random", "clause")
    # "separate": data, initial weights and splits from independent generators; "shared": the old code's
    # single seed for all three (its records reproduce with it); see the module docstring
    streams: str = "separate"

    task: ClassVar[protocol.Task] = TASK

    def normalise(self) -> None:
        super().normalise()
        if self.n_vars is None and all(type(getattr(self, f)) is int for f in ("clauses", "literals")):
            # room for disjoint clauses plus as many distractor inputs
            object.__setattr__(self, "n_vars", max(48, 2 * self.clauses * self.literals))

    def constraints(self) -> dict:
        from ...tasks.dnf import ENCODINGS, SAMPLINGS, VARIABLE_MODES

        count = Interval(int, 1)
        return {
            "n_vars": [count], "clauses": [count], "literals": [count], "negation_prob": [Interval(float, 0.0, 1.0)],
            "variables": [Options(VARIABLE_MODES)], "encoding": [Options(ENCODINGS)], "sampling": [Options(SAMPLINGS)],
            "train_size": [count], "test_size": [count], "streams": [Options(STREAMS)], **super().constraints(),
        }

    def check(self) -> None:
        if self.alpha > self.n_vars:
            raise invalid("alpha", "BooleanConfig", f"an int in [2, n_vars={self.n_vars}] (the hidden layer's fan-in)",
                          self.alpha)
        try:
            self.task_config()  # the task's own cross-field checks (e.g. disjoint clauses fit in n_vars)
        except ValueError as error:
            raise InvalidParameterError(f"BooleanConfig: {error}") from None

    def seed_for(self, purpose: str) -> int:
        """The seed of one random stream ("data", "init" or "split"); the data keep the run seed in both modes."""
        if self.streams == "shared" or purpose == "data":
            return self.seed
        return stream_seed(self.seed, purpose)

    def task_config(self) -> DNFConfig:
        return DNFConfig(
            n_vars=self.n_vars, clauses=self.clauses, literals=self.literals, negation_prob=self.negation_prob,
            variables=self.variables, encoding=self.encoding, sampling=self.sampling,
            train_size=self.train_size, test_size=self.test_size, seed=self.seed_for("data"),
        )


def init_model(config: BooleanConfig) -> nn.Sequential:
    """The dense parent: n → neurons (ReLU) → 1, initialised from the config's init stream
    (``config.seed_for("init")``) without touching torch's global generator."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(config.seed_for("init"))
    model = nn.Sequential(
        nn.Linear(config.n_vars, config.neurons), nn.ReLU(), nn.Linear(config.neurons, 1),
    ).to(DTYPES[config.dtype])
    torch.random.set_rng_state(generator_state)
    return model


# ------------------------------------------------------------------------------------------ studies
CONTROLS = "dense+random+clause+dropconnect+static_sparse"
# Written out here, not imported from report.constants (which loads pandas): studies stay light to import.
BOOLEAN_PAPER = {"dataset": "synthetic Boolean DNF", "accuracy": {"dense": 78.7, "random": 88.7, "clause": 99.4},
                 "config": {"clauses": 8, "neurons": 8, "alpha": 2},
                 "source": "arXiv 2510.04500 (8 clauses, 8 neurons, α = 2)"}


def boolean_meta(layout: str, **extra) -> dict:
    """What a Boolean study's report needs: its layout, the data's name and note (see studies.Study)."""
    return {"layout": layout, "dataset": BOOLEAN_PAPER["dataset"], "dataset_note": DATASET_NOTE, **extra}


STUDIES = (
    Study("headline", "boolean", "m = 8 clauses, h = 8 neurons, alpha = 2: dense vs FPE random vs FPE clause",
          default_seeds=20, meta=boolean_meta("headline", paper=BOOLEAN_PAPER,
                                              heatmaps=["dense", "random", "clause"])),
    Study("neurons", "boolean", "hidden neurons swept at 8 clauses", {"neurons": (8, 10, 12, 16)},
          meta=boolean_meta("sweep")),
    Study("clauses", "boolean",
          "clauses swept at 8 neurons; balanced positives, 16000 examples, n_vars = max(48, 2 * clauses * k)",
          {"clauses": (4, 8, 12, 16, 24, 32)}, {"n_vars": None, "sampling": "balanced", "train_size": 16000},
          meta=boolean_meta("sweep")),
    Study("alpha", "boolean", "expansion factor swept at the headline", {"alpha": (2, 3, 4, 6, 8)},
          default_seeds=20, meta=boolean_meta("sweep")),
    Study("metrics", "boolean", "interference metrics' fold change against accuracy gain over a grid",
          {"neurons": (8, 12, 16), "clauses": (4, 8, 16)}, default_seeds=5, meta=boolean_meta("grid")),
    Study("data", "boolean", "training-set size with the DropConnect and static-sparse controls",
          {"train_size": (1000, 4000, 16000)}, {"variants": CONTROLS}, default_seeds=5,
          meta=boolean_meta("sweep", show_train=True)),
)

EXPERIMENT = protocol.register("boolean", BooleanConfig, STUDIES)
