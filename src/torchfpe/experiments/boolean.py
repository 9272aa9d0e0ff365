"""The paper's symbolic experiment: one-hidden-layer networks on Boolean DNF formulas.

One *run* is one seed of one config: the seed fixes the formula, the data, the initial weights and
the splits. Every variant of a run shares the data and the dense warm-up:

- ``dense``: T1 + T2 epochs with one optimizer.
- FPE (``random``, ``clause``, ``feature``, ``contiguous``) and the ``overlap`` and ``dropconnect``
  controls: the dense model after T1 epochs, ``expand``-ed, then T2 epochs with a new optimizer
  of the same settings.
- ``static_sparse``: the width alpha·h under a random fixed mask drawn at initialisation
  (Golubeva et al. 2021), trained from scratch for T1 + T2 epochs.

``run(config)`` returns one record (a flat dict of numbers and config values) per variant.
``run_batch(configs)`` trains the runs of several seeds at once with :mod:`torchfpe.batched`;
``run_single(config)`` is the one-model-at-a-time reference path that it must agree with.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .. import metrics
from ..batched import StackedMLP, _signature, fit_stacked, stacked_binary_accuracy
from ..core import expand, nonzero_parameters
from ..tasks import DNFConfig, make_dnf
from ..train import TrainSettings, binary_accuracy, fit

VARIANTS = ("dense", "random", "clause", "clause_shared", "feature", "contiguous", "overlap", "dropconnect", "static_sparse")
AFTER_WARMUP = ("random", "clause", "clause_shared", "feature", "contiguous", "overlap", "dropconnect")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class BooleanConfig:
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
        if isinstance(self.variants, str):
            object.__setattr__(self, "variants", tuple(v for v in self.variants.split("+") if v))
        elif isinstance(self.variants, list):
            object.__setattr__(self, "variants", tuple(self.variants))
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

    def settings(self) -> TrainSettings:
        return TrainSettings(optimizer=self.optimizer, lr=self.lr, weight_decay=self.weight_decay,
                             batch_size=self.batch_size)

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["variants"] = "+".join(self.variants)
        return values

    def without_seed(self) -> tuple:
        """Configs equal here differ only in their seed and can be trained as one stack."""
        values = self.to_dict()
        values.pop("seed")
        return tuple(sorted(values.items()))


def config_fields() -> dict[str, type]:
    return {f.name: f.type for f in dataclasses.fields(BooleanConfig)}


def make_config(**overrides) -> BooleanConfig:
    """A config from keyword overrides; unknown names raise ValueError listing the fields."""
    unknown = sorted(set(overrides) - set(config_fields()))
    if unknown:
        raise ValueError(f"unknown Boolean config field(s) {unknown}; fields: {sorted(config_fields())}")
    return BooleanConfig(**overrides)


# ------------------------------------------------------------------------------------------ pieces
def init_model(config: BooleanConfig) -> nn.Sequential:
    """The dense parent: n → neurons (ReLU) → 1, initialised from ``config.seed``."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(config.seed)
    model = nn.Sequential(
        nn.Linear(config.n_vars, config.neurons), nn.ReLU(), nn.Linear(config.neurons, 1),
    ).to(DTYPES[config.dtype])
    torch.random.set_rng_state(generator_state)
    return model


def _expand_variant(model: nn.Module, variant: str, config: BooleanConfig, clauses) -> nn.Module:
    return expand(
        model, config.alpha, split=variant, seed=config.seed,
        clauses=clauses if variant in ("clause", "clause_shared") else None, bias=config.bias, budget=config.budget,
        dropconnect_p=config.dropconnect_p if variant == "dropconnect" else None,
    )


def _phase(variant: str) -> int:
    """0: the dense run; 1: expanded after the warm-up; 2: trained from scratch (static_sparse)."""
    return 0 if variant == "dense" else 1 if variant in AFTER_WARMUP else 2


def _epochs(config: BooleanConfig, phase: int) -> int:
    """Epochs after the model is built: T2 after the warm-up, T1 + T2 from scratch."""
    return config.epochs_after if phase == 1 else config.warmup_epochs + config.epochs_after


def _source(variant: str, warm: nn.Module, config: BooleanConfig) -> nn.Module:
    """What an expanded variant starts from: the warmed-up dense model, or a fresh init."""
    return warm if _phase(variant) == 1 else init_model(config)


def _batch_generator(config: BooleanConfig, phase: int) -> torch.Generator:
    return torch.Generator().manual_seed(config.seed * 7919 + phase)


def _input_order(clauses: list[list[int]], n_vars: int) -> list[int]:
    """Inputs grouped clause by clause, then the unused ones: the order heat maps are drawn in."""
    order = list(dict.fromkeys(j for clause in clauses for j in clause))
    used = set(order)
    return order + [j for j in range(n_vars) if j not in used]


def _record(config: BooleanConfig, variant: str, model: nn.Module, train_acc: float, test_acc: float,
            clauses: list[list[int]]) -> dict:
    weight = metrics.hidden_weights(model)[0][1]
    record = config.to_dict()
    record.update(
        variant=variant, test_accuracy=test_acc, train_accuracy=train_acc,
        nonzero_parameters=nonzero_parameters(model), hidden_units=int(weight.shape[0]),
        **metrics.interference_metrics(weight),
    )
    record["hidden_weight"] = weight  # for the report's heat maps (not a CSV column)
    record["input_order"] = _input_order(clauses, config.n_vars)
    return record


def _add_relative(records: list[dict]) -> list[dict]:
    """Relative gain and metric fold changes of each variant against the dense run of its seed."""
    dense = {r["seed"]: r for r in records if r["variant"] == "dense"}
    for record in records:
        base = dense.get(record["seed"])
        if base is None:
            continue
        record["relative_gain"] = metrics.relative_gain(record["test_accuracy"], base["test_accuracy"])
        for key in ("capacity_mean", "cosine_mean", "cosine_abs_mean"):
            try:
                record[f"{key}_fold"] = metrics.fold_change(record[key], base[key])
            except ValueError:
                record[f"{key}_fold"] = float("nan")
    return records


# -------------------------------------------------------------------------------- one model at a time
def run_single(config: BooleanConfig) -> list[dict]:
    """The reference path: every variant of one run trained one model at a time."""
    task = make_dnf(config.task_config())
    dtype = DTYPES[config.dtype]
    x_train, y_train = task.x_train.to(dtype), task.y_train.to(dtype)
    x_test, y_test = task.x_test.to(dtype), task.y_test.to(dtype)
    settings = config.settings()
    records = []

    def finish(variant, model):
        records.append(_record(config, variant, model, binary_accuracy(model, x_train, y_train),
                               binary_accuracy(model, x_test, y_test), task.clauses))

    torch.manual_seed(config.seed)
    dense = init_model(config)
    generator = _batch_generator(config, 0)
    optimizer = fit(dense, x_train, y_train, config.warmup_epochs, settings, generator=generator)
    warm = copy.deepcopy(dense)
    if "dense" in config.variants:
        fit(dense, x_train, y_train, config.epochs_after, settings, optimizer=optimizer, generator=generator)
        finish("dense", dense)
    for variant in config.variants:
        phase = _phase(variant)
        if phase == 0:
            continue
        model = _expand_variant(_source(variant, warm, config), variant, config, task.clauses)
        fit(model, x_train, y_train, _epochs(config, phase), settings, generator=_batch_generator(config, phase))
        finish(variant, model)
    return _add_relative(records)


# ---------------------------------------------------------------------------------------- batched
def run_batch(configs: Sequence[BooleanConfig]) -> list[dict]:
    """Train the runs of ``configs`` (equal but for the seed) as stacks; same records as ``run_single``."""
    configs = list(configs)
    if not configs:
        return []
    if len({c.without_seed() for c in configs}) != 1:
        raise ValueError("run_batch needs configs that differ only in their seed; group them first")
    first = configs[0]
    dtype = DTYPES[first.dtype]
    settings = first.settings()
    tasks = [make_dnf(c.task_config()) for c in configs]
    x_train = torch.stack([t.x_train for t in tasks]).to(dtype)
    y_train = torch.stack([t.y_train for t in tasks]).to(dtype)
    x_test = torch.stack([t.x_test for t in tasks]).to(dtype)
    y_test = torch.stack([t.y_test for t in tasks]).to(dtype)
    records: list[dict] = []

    def finish(stack: StackedMLP, owners: list[tuple[BooleanConfig, str, int]]):
        index = torch.tensor([i for _, _, i in owners])
        train_acc = stacked_binary_accuracy(stack, x_train[index], y_train[index])
        test_acc = stacked_binary_accuracy(stack, x_test[index], y_test[index])
        for model, (config, variant, i), a, b in zip(stack.unstack(), owners, train_acc, test_acc):
            records.append(_record(config, variant, model, float(a), float(b), tasks[i].clauses))

    torch.manual_seed(first.seed)
    dense = StackedMLP([init_model(c) for c in configs])
    generators = [_batch_generator(c, 0) for c in configs]
    optimizer = fit_stacked(dense, x_train, y_train, first.warmup_epochs, settings, generators=generators)
    warm = dense.unstack()
    if "dense" in first.variants:
        fit_stacked(dense, x_train, y_train, first.epochs_after, settings, optimizer=optimizer, generators=generators)
        finish(dense, [(c, "dense", i) for i, c in enumerate(configs)])

    # Expanded variants of one shape are trained together: a bigger stack, fewer kernel launches.
    groups: dict[str, list[tuple[nn.Module, tuple[BooleanConfig, str, int], int]]] = {}
    for variant in first.variants:
        phase = _phase(variant)
        if phase == 0:
            continue
        for i, (config, task) in enumerate(zip(configs, tasks)):
            model = _expand_variant(_source(variant, warm[i], config), variant, config, task.clauses)
            key = repr((_signature(model), phase))
            groups.setdefault(key, []).append((model, (config, variant, i), phase))
    for members in groups.values():
        phase = members[0][2]
        owners = [owner for _, owner, _ in members]
        index = torch.tensor([i for _, _, i in owners])
        stack = StackedMLP([model for model, _, _ in members])
        fit_stacked(stack, x_train[index], y_train[index], _epochs(first, phase), settings,
                    generators=[_batch_generator(c, phase) for c, _, _ in owners])
        finish(stack, owners)
    order = {v: k for k, v in enumerate(first.variants)}
    records.sort(key=lambda r: (order[r["variant"]], r["seed"]))
    return _add_relative(records)


def run(config: BooleanConfig) -> list[dict]:
    """One run (one seed, every variant of ``config``); batched training is used inside."""
    return run_batch([config])

