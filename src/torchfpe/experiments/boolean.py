"""The paper's symbolic experiment: one-hidden-layer networks on Boolean DNF formulas.

One *run* is one seed of one config: the seed fixes the formula, the data, the initial weights and
the splits. Every variant of a run shares the data and the dense warm-up:

- ``dense``: T1 + T2 epochs with one optimizer.
- FPE (``random``, ``clause``, ``feature``, ``contiguous``) and the ``overlap`` and ``dropconnect``
  controls: the dense model after T1 epochs, ``expand``-ed, then T2 epochs with a new optimizer
  of the same settings.
- ``static_sparse``: the width alpha·h under a random fixed mask drawn at initialisation
  (Golubeva et al. 2021), trained from scratch for T1 + T2 epochs.

The protocol itself lives in :mod:`torchfpe.experiments.protocol`; this module is its
:class:`BooleanTask` (data, parent model, clause map, interference metrics) and the config.
``run(config)`` returns one record (a flat dict of numbers and config values) per variant.
``run_batch(configs)`` trains the runs of several seeds at once with :mod:`torchfpe.batched`;
``run_single(config)`` is the one-model-at-a-time reference path that it must agree with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .. import metrics
from ..tasks import DNFConfig, make_dnf
from . import protocol

VARIANTS = tuple(v for v in protocol.VARIANTS if v != "correlation")  # correlation: embedding heads only
#: Splits that read the formula's clause map.
CLAUSE_VARIANTS = ("clause", "clause_shared")
DTYPES = protocol.DTYPES


@dataclass(frozen=True)
class BooleanConfig(protocol.ConfigMethods):
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
    # model
    neurons: int = 8
    alpha: int = 2
    bias: str = "copy"
    budget: str = "global"
    dropconnect_p: float | None = None  # the dropconnect variant's drop rate; None: 1 - 1/alpha
    # training
    optimizer: str = "adam"
    lr: float = 1e-2
    weight_decay: float = 0.0
    batch_size: int | None = None
    warmup_epochs: int = 1000
    epochs_after: int = 1000
    dtype: str = "float32"
    variants: tuple[str, ...] = ("dense", "random", "clause")
    seed: int = 0

    def __post_init__(self) -> None:
        from ..core import BIAS_POLICIES, BUDGETS
        from ..core.validation import Interval, InvalidParameterError, Options, Sequences, invalid, validate_dataclass
        from ..tasks.dnf import ENCODINGS, SAMPLINGS, VARIABLE_MODES
        from ..train import OPTIMIZERS

        if self.n_vars is None and all(type(getattr(self, f)) is int for f in ("clauses", "literals")):
            # room for disjoint clauses plus as many distractor inputs
            object.__setattr__(self, "n_vars", max(48, 2 * self.clauses * self.literals))
        protocol.split_variants(self)
        count, positive, share = Interval(int, 1), Interval(float, 0.0, None, closed="neither"), Interval(float, 0.0, 1.0)
        validate_dataclass(self, {  # every field's constraint, declared once; checked before any work
            "n_vars": [count], "clauses": [count], "literals": [count], "negation_prob": [share],
            "variables": [Options(VARIABLE_MODES)], "encoding": [Options(ENCODINGS)], "sampling": [Options(SAMPLINGS)],
            "train_size": [count], "test_size": [count], "neurons": [count], "alpha": [Interval(int, 2)],
            "bias": [Options(BIAS_POLICIES)], "budget": [Options(BUDGETS)],
            "dropconnect_p": [Interval(float, 0.0, 1.0, closed="left"), None],
            "optimizer": [Options(OPTIMIZERS)], "lr": [positive], "weight_decay": [Interval(float, 0.0)],
            "batch_size": [count, None], "warmup_epochs": [Interval(int, 0)], "epochs_after": [Interval(int, 0)],
            "dtype": [Options(tuple(DTYPES))], "variants": [Sequences((Options(VARIANTS),), 1, "variant name")],
            "seed": [Interval(int, 0, 2**32 - 1)],
        }, "BooleanConfig")
        if self.alpha > self.n_vars:
            raise invalid("alpha", "BooleanConfig", f"an int in [2, n_vars={self.n_vars}] (the hidden layer's fan-in)",
                          self.alpha)
        try:
            self.task_config()  # the task's own cross-field checks (e.g. disjoint clauses fit in n_vars)
        except ValueError as error:
            raise InvalidParameterError(f"BooleanConfig: {error}") from None
        self.settings()

    def task_config(self) -> DNFConfig:
        return DNFConfig(
            n_vars=self.n_vars, clauses=self.clauses, literals=self.literals, negation_prob=self.negation_prob,
            variables=self.variables, encoding=self.encoding, sampling=self.sampling,
            train_size=self.train_size, test_size=self.test_size, seed=self.seed,
        )



def config_fields() -> dict[str, type]:
    return {f.name: f.type for f in dataclasses.fields(BooleanConfig)}


def make_config(**overrides) -> BooleanConfig:
    """A config from keyword overrides; unknown names raise InvalidParameterError listing the fields."""
    from ..core.validation import build_config

    return build_config(BooleanConfig, overrides, "Boolean")


# ------------------------------------------------------------------------------------------ the task
def init_model(config: BooleanConfig) -> nn.Sequential:
    """The dense parent: n → neurons (ReLU) → 1, initialised from ``config.seed``."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(config.seed)
    model = nn.Sequential(
        nn.Linear(config.n_vars, config.neurons), nn.ReLU(), nn.Linear(config.neurons, 1),
    ).to(DTYPES[config.dtype])
    torch.random.set_rng_state(generator_state)
    return model


def _input_order(clauses: list[list[int]], n_vars: int) -> list[int]:
    """Inputs grouped clause by clause, then the unused ones: the order heat maps are drawn in."""
    order = list(dict.fromkeys(j for clause in clauses for j in clause))
    used = set(order)
    return order + [j for j in range(n_vars) if j not in used]


class BooleanTask(protocol.Task):
    """A DNF formula per seed; one sigmoid output; the clause map feeds ``split="clause"``."""

    kind = "binary"
    fold_keys = ("capacity_mean", "cosine_mean", "cosine_abs_mean")

    def data(self, config: BooleanConfig) -> protocol.Data:
        task = make_dnf(config.task_config())
        dtype = DTYPES[config.dtype]
        return protocol.Data(task.x_train.to(dtype), task.y_train.to(dtype), task.x_test.to(dtype),
                             task.y_test.to(dtype), info=task.clauses)

    def parent(self, config: BooleanConfig) -> nn.Module:
        return init_model(config)

    def expand_kwargs(self, config: BooleanConfig, variant: str, data: protocol.Data) -> dict:
        return {"clauses": data.info if variant in CLAUSE_VARIANTS else None}

    def record_extras(self, config: BooleanConfig, variant: str, model: nn.Module, data: protocol.Data) -> dict:
        weight = metrics.hidden_weights(model)[0][1]
        return {
            "hidden_units": int(weight.shape[0]), **metrics.interference_metrics(weight),
            "hidden_weight": weight,  # for the report's heat maps (not a CSV column)
            "input_order": _input_order(data.info, config.n_vars),
        }


TASK = BooleanTask()


def run_single(config: BooleanConfig) -> list[dict]:
    """The reference path: every variant of one run trained one model at a time."""
    return protocol.run_single(TASK, config)


def run_batch(configs: Sequence[BooleanConfig]) -> list[dict]:
    """Train the runs of ``configs`` (equal but for the seed) as stacks; same records as ``run_single``."""
    return protocol.run_batch(TASK, configs)


def run(config: BooleanConfig) -> list[dict]:
    """One run (one seed, every variant of ``config``); batched training is used inside."""
    return run_batch([config])
