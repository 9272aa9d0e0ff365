"""The paper's two-phase FPE protocol, written once for every experiment.

One *run* is one seed of one config. Every variant of a run shares the data and the dense warm-up:

- ``dense``: T1 + T2 epochs with one optimizer (the warm-up's optimizer keeps going).
- every registered split (:data:`torchfpe.core.splits.SPLITS`) that the task can feed (its ``needs``
  are in ``Task.provides``): the dense model after T1 epochs, ``expand``-ed with that split, then T2
  epochs with a new optimizer of the same settings; a split drawn at initialisation (``at_init``:
  ``static_sparse``, Golubeva et al. 2021) expands a fresh init and trains T1 + T2 epochs instead.
- ``wide<scale>`` (e.g. ``wide1.5``), for tasks with ``wide_parent``: a dense model with about
  ``scale`` times the parent's non-zero count, trained from scratch for T1 + T2 epochs (for "how much
  wider must dense be to match FPE").
- a split with modifiers, ``<split>[@<budget>][@carry]`` (:func:`parse_variant`, the one place the
  grammar is read): ``random@structured`` expands with that budget instead of the config's
  ``budget``; ``random@carry`` trains on with the warm-up optimizer's state carried into the
  expanded model (:func:`torchfpe.carry_optimizer`) instead of a fresh optimizer;
  ``grouped@outgoing@carry`` does both. ``@carry`` applies to splits of the warmed-up model only.

T1 and T2 are counted in the task's unit: epochs for the configs derived from
:class:`ProtocolConfig` (fields ``warmup_epochs`` and ``epochs_after``), optimizer steps for a config
that names other fields in ``phase_fields`` (the language models' ``warmup_steps`` and
``steps_after``); :meth:`Task.train` is what counts them.

What an experiment provides is a :class:`Task` (the contract):

- ``kind``: a registered task kind (:data:`torchfpe.lab.kinds.TASK_KINDS`: ``"binary"``, one logit and
  0/1 targets; ``"multiclass"``, C logits and integer labels; or one registered from outside): its
  loss, its measured record fields, their stacked forms and the metric.
- ``provides``: what its splits may ask for (``"clauses"``, ``"data"``), given by
  ``split_inputs(config, data) -> dict``; the variants a config may name follow from it.
- ``data(config) -> Data``: train and test tensors of one seed (and any ``info`` the task needs).
- ``parent(config) -> nn.Module``: the dense parent, initialised from ``config.seed`` without
  touching torch's global generator.
- ``expand_kwargs(config, split, data) -> dict``: extra arguments of ``expand`` for a variant's split
  (``layers=``, ``pairs=``, or a per-layer ``split=`` mapping).
- ``record_extras(config, variant, model, data) -> dict``: fields added to each record.
- ``schedule(config) -> (config, dict)``: the config the protocol trains instead (records keep the
  asked config's fields and gain the dict's); default: the config itself.
- ``split_seed(config) -> int``: the seed of ``expand``'s split masks (default ``config.seed``).
- ``check(config)``: checks that need files, run before any work (default: none).
- ``fold_keys``: record fields whose variant / dense ratio is recorded as ``<key>_fold``.
- ``wide_parent(config, scale)``: a wider dense model, only for ``wide<scale>`` variants.
- ``eval_batch``: evaluate in chunks of this many examples (None: one pass).
- ``metric`` and ``higher_is_better``: the record field ``relative_gain`` compares with the dense run
  of the same seed, signed so that a positive gain is better (default: the kind's metric and direction).
- ``train(model, config, data, length, generator, optimizer=None) -> optimizer`` and
  ``evaluate(model, config, data) -> dict``: how a model is trained for ``length`` units and what is
  measured (default: :func:`torchfpe.lab.train.fit` for ``length`` epochs on ``x_train``/``y_train``
  with the kind's loss, and the kind's measured fields). A task that overrides either, or whose kind
  does not stack, is trained one model at a time.

A config is a frozen dataclass derived from :class:`ProtocolConfig` (epochs; a ``neurons`` width), or
from :class:`ProtocolBase` (the fields every protocol experiment shares) for a task that counts its
phases in other fields. The base declares the shared fields and their constraints once; the subclass
adds its own fields (with ``constraints()`` and ``check()`` for its own rules), names its task
(``task: ClassVar``) and its phase fields (``phase_fields: ClassVar``). :func:`register` makes it an
experiment of the registry (one call per experiment module).

:func:`run_batch` trains the seeds of one config as stacks (:mod:`torchfpe.lab.batched`) where the
models are plain MLPs, else one model at a time; :func:`run_single` is the one-model reference path
that the stacks must agree with. Both return one flat record per (variant, seed).

**The device.** Both take ``device=`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``; checked by
:func:`torchfpe.lab.devices.resolve_device`), a runtime option that is no config field, so run keys and
stacks are the same on every device. The protocol builds each seed's ``Data`` and parent on the CPU
(so seeded draws are the same everywhere), moves the data to the device once (:meth:`Data.to`) and
trains and evaluates every model there; ``expand`` and the records work on CPU copies. A task never
needs to be told the device: a hook that makes tensors for a model or for data it is handed uses
their device (``data.device``, ``next(model.parameters()).device``).

**The layout.** Both also take ``layout=`` (``"auto"``, ``"masked"``, ``"packed"``; checked by
:func:`torchfpe.lab.train_layout.check_train_layout`), the layout phase 2 trains an expanded model in,
a runtime option like the device (no config field, no part of a run key). A model trained one at a
time is packed (``torchfpe.pack``) after ``expand`` and before it moves to the device, where the
option says so (:func:`torchfpe.lab.train_layout.for_training`; ``auto``'s rule and the measurement
behind it are in that module), and unpacked again before its record is made, so a task's hooks that
read weights (``record_extras``) always see the masked layout; :meth:`Task.train` and
:meth:`Task.evaluate` get the packed model and must not assume the masked layout's attributes. Stacks
(:mod:`torchfpe.lab.batched`: many seeds as batched masked products) and ``@carry`` variants
(:func:`torchfpe.carry_optimizer` needs the masked layout) always train masked. Records are those of
the masked layout up to float rounding.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ... import metrics
from ..devices import resolve_device
from ..train_layout import check_train_layout, for_records, for_training
from ..batched import StackedMLP, stack_signature, can_stack, fit_stacked
from ...core import BIAS_POLICIES, BUDGETS, SPLITS, carry_optimizer, expand, nonzero_parameters
from ...core.validation import (Interval, InvalidParameterError, Options, Predicate, invalid, plain_number,
                                validate_dataclass)
from ...core.optim import OPTIMIZERS
from ..kinds import TaskKind, get_task_kind
from ..train import TrainSettings, fit, optimizer_names

WIDE = re.compile(r"^wide(\d+(?:\.\d+)?)$")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: A split with modifiers: ``<split>[@<budget>][@carry]`` (see :func:`parse_variant`).
MODIFIED = re.compile(rf"^(?P<split>[A-Za-z_][A-Za-z0-9_]*)(?:@(?P<budget>{'|'.join(BUDGETS)}))?(?P<carry>@carry)?$")
CARRY = "carry"


@dataclass(frozen=True)
class Variant:
    """A variant name, read once (:func:`parse_variant`).

    ``kind``: ``"dense"``, ``"wide"`` (a wider dense model of ``scale`` times the non-zeros) or
    ``"split"`` (``split`` applied by ``expand``; ``budget`` overrides the config's budget where set;
    ``carry``: the warm-up optimizer's state is carried into the expanded model).
    """

    name: str
    kind: str
    split: str | None = None
    scale: float | None = None
    budget: str | None = None
    carry: bool = False

    @property
    def modifiers(self) -> tuple[str, ...]:
        """The split's modifiers in the order the name writes them (``("structured", "carry")``)."""
        return tuple(m for m in (self.budget, CARRY if self.carry else None) if m)


def variant_name(split: str, budget: str | None = None, carry: bool = False) -> str:
    """The one writer of the grammar: ``<split>[@<budget>][@carry]``."""
    return "@".join([split, *([budget] if budget else []), *([CARRY] if carry else [])])


def read_variant(name: object) -> Variant | None:
    """A variant name read by the grammar alone, whether or not its split is registered in this process
    (a report reads records of splits registered elsewhere); None where the name is no variant."""
    if not isinstance(name, str):
        return None
    if name == "dense":
        return Variant(name, "dense")
    wide = WIDE.match(name)
    if wide and float(wide.group(1)) > 0:
        return Variant(name, "wide", scale=float(wide.group(1)))
    modified = MODIFIED.match(name)
    if modified is None:
        return None
    return Variant(name, "split", split=modified["split"], budget=modified["budget"],
                   carry=modified["carry"] is not None)


def parse_variant(name: str, allowed: Sequence[str] | None = None) -> Variant:
    """Read a variant name: ``dense``, ``wide<scale>``, ``<split>``, ``<split>@<budget>``, ``<split>@carry`` or
    ``<split>@<budget>@carry``, whose split is registered; ``allowed`` (default: every name) is what the task
    offers (``"wide"``: any ``wide<scale>``). Raises ValueError naming the variant and what is allowed."""
    allowed = tuple(allowed) if allowed is not None else ("dense", *SPLITS, "wide")
    if not isinstance(name, str):
        raise ValueError(f"a variant is a name, got {name!r}")
    variant = read_variant(name)
    if variant is not None and variant.kind in ("dense", "wide") and variant.kind in allowed:
        return variant
    split = SPLITS.get(variant.split) if variant is not None and variant.kind == "split" else None
    if split is None or split.name not in allowed:
        raise ValueError(f"unknown variant {name!r}")
    budget, carry = variant.budget, variant.carry
    if carry and split.at_init:
        raise ValueError(f"variant {name!r}: @{CARRY} carries the warm-up optimizer into an expansion of the "
                         f"warmed-up model, but {split.name!r} is drawn at initialisation and has no warm-up")
    return Variant(name, "split", split=split.name, budget=budget, carry=carry)


def split_of(variant: str) -> str | None:
    """The split a variant applies (``"random"`` for ``random@structured``), or None (dense, wide, unknown)."""
    try:
        return parse_variant(str(variant)).split
    except ValueError:
        return None


def task_variants(task: "Task") -> tuple[str, ...]:
    """The variants a task's configs may name: dense, every split whose needs it provides, and "wide"
    (any ``wide<scale>``) where it has a wider parent; each split also with modifiers (:func:`parse_variant`)."""
    splits = [name for name, split in SPLITS.items() if set(split.needs) <= set(task.provides)]
    return ("dense", *splits, *(("wide",) if task.has_wide() else ()))


def variants_help(allowed: Sequence[str]) -> str:
    shown = tuple(a for a in allowed if a != "wide") + (("wide<scale>",) if "wide" in allowed else ())
    return f"{shown}, a split also as <split>@<budget>, <split>@carry or <split>@<budget>@carry (budgets: " \
           f"{', '.join(BUDGETS)})"


def check_variants(variants: Sequence[str], allowed: Sequence[str], budget: str | None = None,
                   optimizer: str | None = None) -> None:
    """Raise ValueError unless ``variants`` is a non-empty list of distinct names :func:`parse_variant` reads
    within ``allowed``, each split fits its budget (``budget``: the config's, for unmodified splits), and
    ``@carry`` is named only with an optimizer registered as carried (``optimizer``: the config's)."""
    if not variants:
        raise ValueError(f"variants must be a non-empty subset of {variants_help(allowed)}, got {tuple(variants)!r}")
    for name in variants:
        try:
            variant = parse_variant(name, allowed)
        except ValueError as error:
            raise ValueError(f"{error}; variants must be a non-empty subset of {variants_help(allowed)}, got "
                             f"{tuple(variants)!r}") from None
        if variant.carry and optimizer in OPTIMIZERS and not OPTIMIZERS[optimizer].carried:
            carried = ", ".join(OPTIMIZERS.where(carried=True))
            raise ValueError(f"variant {name!r}: @{CARRY} carries the warm-up optimizer's state, but "
                             f"optimizer={optimizer!r} is not registered as carried (carried: {carried}); drop "
                             f"@{CARRY} or choose a carried optimizer")
        chosen = variant.budget or budget
        split = SPLITS[variant.split] if variant.split else None
        if chosen == "structured" and split is not None and not (split.partition and split.widens
                                                                  and not split.whole_model):
            raise ValueError(f"budget='structured' gives every child a disjoint share of its parent's weights, so "
                             f"it needs a partition split; variant {name!r} ({split.name!r}) is not one (drop it, "
                             f"or give it another budget, e.g. {variant_name(split.name, 'global')})")
    repeated = sorted({v for v in variants if list(variants).count(v) > 1})
    if repeated:
        raise ValueError(f"variants name {repeated} more than once")


@dataclass
class Data:
    """One seed's data; ``info`` is whatever the task needs later (e.g. the clause map)."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    info: Any = None

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def to(self, device: torch.device | str) -> "Data":
        """The same data with its four tensors on ``device`` (``info`` is left as it is)."""
        return Data(*(None if getattr(self, name) is None else getattr(self, name).to(device)
                      for name in ("x_train", "y_train", "x_test", "y_test")),
                    info=self.info)


class Task:
    """Base class with the optional hooks' defaults; see the module docstring for the contract."""

    kind: str = "binary"  # a registered task kind (torchfpe.lab.kinds.TASK_KINDS)
    provides: tuple[str, ...] = ()  # what its splits may ask for: "clauses", "data"
    fold_keys: tuple[str, ...] = ()
    eval_batch: int | None = None  # evaluate in chunks of this many examples (None: one pass)

    @property
    def task_kind(self) -> TaskKind:
        """The registered record of :attr:`kind` (looked up at call time)."""
        return get_task_kind(self.kind, f"{type(self).__name__}.kind")

    @property
    def metric(self) -> str:
        """The record field relative_gain compares with dense (default: the kind's metric)."""
        return self.task_kind.metric

    @property
    def higher_is_better(self) -> bool:
        """The direction of :attr:`metric` (declared by the kind)."""
        return self.task_kind.field(self.metric).higher_is_better

    def data(self, config) -> Data:
        raise NotImplementedError

    def split_inputs(self, config, data: Data) -> dict:
        """The inputs of :attr:`provides` for one seed's data (``{"clauses": ..., "data": ...}``)."""
        return {"data": data.x_train} if "data" in self.provides else {}

    def check(self, config) -> None:
        """Checks that need files (a missing or corrupt data file), before any run or write."""

    def files(self, config) -> tuple[str, ...]:
        """Data files the config names by path (not built-in sets). Run keys hold the path only, so the
        store records each file's content digest and refuses to reuse runs once a file changed."""
        return ()

    def has_wide(self) -> bool:
        return type(self).wide_parent is not Task.wide_parent

    def stacks(self) -> bool:
        """Whether :func:`run_batch` may train this task's models as stacks: the stacked trainer reproduces
        the default :meth:`train` and :meth:`evaluate` only."""
        return type(self).train is Task.train and type(self).evaluate is Task.evaluate and self.task_kind.stacks

    def parent(self, config) -> nn.Module:
        raise NotImplementedError

    def wide_parent(self, config, scale: float) -> nn.Module:
        raise ValueError(f"{type(self).__name__} has no wide<scale> variants")

    def expand_kwargs(self, config, split: str, data: Data) -> dict:
        """Extra arguments of ``expand`` for the split ``split`` (a variant's split, modifiers removed)."""
        return {}

    def record_extras(self, config, variant: str, model: nn.Module, data: Data) -> dict:
        return {}

    def schedule(self, config) -> tuple[Any, dict]:
        """The config the protocol trains for ``config`` and the fields each of its records gains
        (default: the config itself, none). Records keep the fields of the config asked for, so run keys
        do not change (the heads' fixed step counts become whole passes here)."""
        return config, {}

    def split_seed(self, config) -> int:
        """The seed of ``expand``'s generator (the split masks); a task with separate streams derives its own."""
        return config.seed

    def train(self, model: nn.Module, config, data: Data, length: int, generator: torch.Generator,
              optimizer: torch.optim.Optimizer | None = None) -> torch.optim.Optimizer:
        """Train ``model`` in place for ``length`` units of the task (here epochs over ``x_train``); returns
        the optimizer (a new one of the config's settings unless ``optimizer`` is given)."""
        return fit(model, data.x_train, data.y_train, length, config.settings(), optimizer=optimizer,
                   generator=generator, loss_fn=self.task_kind.loss)

    def evaluate(self, model: nn.Module, config, data: Data) -> dict:
        """The measured fields of one record (the kind's, e.g. test and train accuracy); :attr:`metric` is
        one of them."""
        return self.task_kind.evaluate(model, data.x_train, data.y_train, data.x_test, data.y_test, self.eval_batch)


# ------------------------------------------------------------------------------------- the config
@dataclass(frozen=True)
class ProtocolBase:
    """The fields every protocol experiment has, whatever its model and its unit of training.

    A subclass adds its own fields, names its ``task`` and the two fields holding T1 and T2
    (``phase_fields``). Defaults are generic; a subclass redeclares a field to change its default
    (with its reason). Checked when built (``__post_init__``): every field against
    :meth:`constraints`, then :meth:`check`.
    """

    # model
    alpha: int = 2  # children per parent unit
    bias: str = "copy"
    budget: str = "global"
    dropconnect_p: float | None = None  # the dropconnect variant's drop rate; None: 1 - 1/alpha
    # training (both phases)
    optimizer: str = "adam"
    lr: float = 1e-2
    weight_decay: float = 0.0
    batch_size: int | None = None  # None: full batch
    dtype: str = "float32"
    variants: tuple[str, ...] = ("dense", "random")  # also accepted as "dense+random" or a list
    seed: int = 0

    task: ClassVar[Task]
    #: the fields holding T1 (dense before the split) and T2 (after it), in the unit the task trains in
    phase_fields: ClassVar[tuple[str, str]]

    def __post_init__(self) -> None:
        self.normalise()
        validate_dataclass(self, self.constraints(), type(self).__name__)
        try:  # each name is known (the constraint); here the rules between names and with the budget
            check_variants(self.variants, task_variants(self.task), self.budget, self.optimizer)
        except ValueError as error:
            raise InvalidParameterError(f"the 'variants' parameter of {type(self).__name__}: {error}") from None
        self.check()
        limit = self.alpha_limit()
        if limit is not None:
            check_alpha(self, *limit)

    def normalise(self) -> None:
        """Turn accepted spellings into the stored form before validation (frozen: object.__setattr__)."""
        for item in dataclasses.fields(self):  # np.int64(3) is accepted as 3 (and stored as the int)
            value = getattr(self, item.name)
            if plain_number(value) is not value:
                object.__setattr__(self, item.name, plain_number(value))
        if isinstance(self.variants, str):
            object.__setattr__(self, "variants", tuple(v for v in self.variants.split("+") if v))
        elif isinstance(self.variants, list):
            object.__setattr__(self, "variants", tuple(self.variants))

    def constraints(self) -> dict:
        """Each field's constraint (:mod:`torchfpe.core.validation`); a subclass adds its own fields'."""
        count = Interval(int, 1)
        allowed = task_variants(self.task)

        def known_variants(value) -> bool:
            if not isinstance(value, tuple) or not value:
                return False
            return all(isinstance(v, str) and v == parse_variant(v, allowed).name for v in value)

        return {
            "alpha": [Interval(int, 2)], "bias": [Options(BIAS_POLICIES)],
            "budget": [Options(BUDGETS)], "dropconnect_p": [Interval(float, 0.0, 1.0, closed="left"), None],
            "optimizer": [Options(optimizer_names())], "lr": [Interval(float, 0.0, None, closed="neither")],
            "weight_decay": [Interval(float, 0.0)], "batch_size": [count, None],
            **{name: [Interval(int, 0)] for name in self.phase_fields},
            "dtype": [Options(tuple(DTYPES))],
            "variants": [Predicate(known_variants, f"a non-empty '+'-joined list of variants from "
                                                   f"{variants_help(allowed)}")],
            "seed": [Interval(int, 0, 2**32 - 1)],
        }

    def check(self) -> None:
        """Rules across fields, after each field is valid (a subclass adds its own)."""

    def alpha_limit(self) -> tuple[int, str, str] | None:
        """alpha's upper bound where the config alone fixes it: (the smallest fan-in its expansion splits,
        how the bound is shown, why), checked by :func:`check_alpha` after :meth:`check`; None where only
        the data tell (the task's ``check`` calls :func:`check_alpha` then)."""
        return None

    def phase_lengths(self) -> tuple[int, int]:
        """(T1, T2): the dense warm-up and the training after the split, in the task's unit."""
        first, second = self.phase_fields
        return getattr(self, first), getattr(self, second)

    def settings(self) -> TrainSettings:
        return TrainSettings(optimizer=self.optimizer, lr=self.lr, weight_decay=self.weight_decay,
                             batch_size=self.batch_size)

    def to_dict(self) -> dict:
        """Field -> value, the subclass's own fields first (the order of records.csv's columns)."""
        values = dataclasses.asdict(self)
        values["variants"] = "+".join(self.variants)
        protocol = _protocol_fields(type(self))
        return {**{k: v for k, v in values.items() if k not in protocol},
                **{k: v for k, v in values.items() if k in protocol}}

    def without_seed(self) -> tuple:
        """Configs equal here differ only in their seed and can be trained as one stack."""
        values = self.to_dict()
        values.pop("seed")
        return tuple(sorted(values.items()))


@dataclass(frozen=True)
class ProtocolConfig(ProtocolBase):
    """The protocol in epochs, for models with one hidden width ``neurons`` (the MLP and CNN experiments)."""

    neurons: int = 8  # hidden width of the parent
    warmup_epochs: int = 10  # T1: dense epochs before the split
    epochs_after: int = 10  # T2: epochs after it

    phase_fields: ClassVar[tuple[str, str]] = ("warmup_epochs", "epochs_after")

    def constraints(self) -> dict:
        return {"neurons": [Interval(int, 1)], **super().constraints()}


def check_alpha(config, limit: int, shown: str, reason: str) -> None:
    """The one check of alpha's upper bound in the harness: a parent unit splits into at most as many
    children as the inputs it reads (``expand`` refuses more, after work has started)."""
    if config.alpha > limit:
        raise invalid("alpha", type(config).__name__, f"an int in [2, {shown}] ({reason})", config.alpha)


def _protocol_fields(cls: type) -> set[str]:
    """The fields ``cls`` inherits from the protocol's own config classes (listed after its own in ``to_dict``)."""
    bases = [base for base in cls.__mro__ if base in (ProtocolBase, ProtocolConfig)]
    return {f.name for base in bases for f in dataclasses.fields(base)}


def register(name: str, config: type[ProtocolBase], studies: Sequence = ()):
    """Make ``config`` (a :class:`ProtocolBase` subclass naming its ``task``) the experiment ``name``.

    The one registration of a protocol experiment: its capabilities follow from the protocol and the
    task, never passed by hand. It trains tensors, so it takes ``device=`` and ``layout=`` (:func:`run_batch`
    and :func:`run_single` resolve them); whether it stacks follows from :meth:`Task.stacks`. A task that
    trains another config than the one asked for says so in :meth:`Task.schedule`, not by wrapping.
    """
    from .registry import register_experiment

    task = config.task
    return register_experiment(name, config, functools.partial(run_batch, task),
                               run_single=functools.partial(run_single, task), check=functools.partial(_check, task),
                               files=functools.partial(_files, task), studies=studies, device=trains_on_device(task),
                               layout=trains_on_device(task))


def trains_on_device(task: Task) -> bool:
    """Whether the experiment of ``task`` takes ``device=``: every protocol task trains tensors there."""
    return isinstance(task, Task)


def _check(task: Task, config) -> None:
    task.check(config)  # looked up at call time: a task's check can be replaced (tests do)


def _files(task: Task, config) -> tuple[str, ...]:
    return tuple(task.files(config))


# ------------------------------------------------------------------------------ the protocol's rules
def phase(variant: str) -> int:
    """0: the dense run; 2: built at init and trained T1 + T2 (splits drawn at init, wide<scale>);
    1: every other variant, a split applied to the warmed-up model (so a new split needs no edit here)."""
    parsed = parse_variant(variant)
    if parsed.kind == "dense":
        return 0
    return 2 if parsed.kind == "wide" or SPLITS[parsed.split].at_init else 1


def length(config, phase_: int) -> int:
    """Training after the model is built, in the task's unit: T2 after the warm-up, T1 + T2 from scratch."""
    warmup, after = config.phase_lengths()
    return after if phase_ == 1 else warmup + after


def batch_generator(config, phase_: int) -> torch.Generator:
    """Minibatch order of one seed and phase (the dense run keeps its phase-0 generator)."""
    return torch.Generator().manual_seed(config.seed * 7919 + phase_)


def build_variant(task: Task, config, variant: str, warm: nn.Module, data: Data) -> nn.Module:
    """The model a variant trains: an expansion of the warm model or of a fresh init, or a wider dense."""
    parsed = parse_variant(variant)
    if parsed.kind == "wide":
        return task.wide_parent(config, parsed.scale)
    source = warm if phase(variant) == 1 else task.parent(config)
    split = SPLITS[parsed.split]
    inputs = task.split_inputs(config, data)
    kwargs = {"split": split.name, **{need: inputs[need] for need in split.needs},
              **({"dropconnect_p": config.dropconnect_p} if "dropconnect_p" in split.options else {}),
              **task.expand_kwargs(config, split.name, data)}
    return expand(source, config.alpha, seed=task.split_seed(config), bias=config.bias, budget=parsed.budget or config.budget,
                  **kwargs)


def make_record(task: Task, config, variant: str, model: nn.Module, measured: dict, data: Data) -> dict:
    """One record: the config, the variant, what :meth:`Task.evaluate` measured, the non-zeros, the extras."""
    record = config.to_dict()
    record.update(variant=variant, **measured, nonzero_parameters=nonzero_parameters(model),
                  **task.record_extras(config, variant, model, data))
    return record


def add_relative(records: list[dict], fold_keys: Sequence[str] = (), metric: str = "test_accuracy",
                 higher_is_better: bool = True) -> list[dict]:
    """Relative gain of ``metric`` (and fold changes of ``fold_keys``) of each variant against its seed's dense
    run; signed so that positive is better: (v − dense)/dense, or (dense − v)/dense where lower is better."""
    dense = {r["seed"]: r for r in records if r["variant"] == "dense"}
    for record in records:
        base = dense.get(record["seed"])
        if base is None:
            continue
        value, reference = record[metric], base[metric]
        gain = metrics.relative_gain(value, reference)
        record["relative_gain"] = gain if higher_is_better else 0.0 - gain  # 0.0 - 0.0 is 0.0, not -0.0
        for key in fold_keys:
            try:
                record[f"{key}_fold"] = metrics.fold_change(record[key], base[key])
            except ValueError:
                record[f"{key}_fold"] = float("nan")
    return records


def _relative(task: Task, records: list[dict]) -> list[dict]:
    return add_relative(records, task.fold_keys, task.metric, task.higher_is_better)


def _sorted(records: list[dict], variants: Sequence[str]) -> list[dict]:
    order = {v: k for k, v in enumerate(variants)}
    records.sort(key=lambda r: (order[r["variant"]], r["seed"]))
    return records


# -------------------------------------------------------------------------------- one model at a time
def scheduled_run(task: Task, configs: Sequence, train) -> list[dict]:
    """``train(configs the task schedules)``; each record keeps the fields of the config asked for (same
    seed) and gains the task's schedule fields (:meth:`Task.schedule`)."""
    configs = list(configs)
    plans = [task.schedule(c) for c in configs]
    if all(ran is asked and not extra for asked, (ran, extra) in zip(configs, plans)):
        return train(configs)
    asked = {c.seed: (c.to_dict(), extra) for c, (_, extra) in zip(configs, plans)}
    records = train([ran for ran, _ in plans])
    for record in records:
        fields, extra = asked[record["seed"]]
        record.update(fields, **extra)
    return records


def run_single(task: Task, config, device: str | torch.device | None = None, layout: str | None = None) -> list[dict]:
    """The reference path: every variant of one run trained one model at a time (on ``device``, phase 2 in
    ``layout``: see "The layout" in the module docstring)."""
    device = resolve_device(device, "run_single")
    layout = check_train_layout(layout, "run_single")
    return scheduled_run(task, [config], lambda ran: train_single(task, ran[0], device, layout))


def train_single(task: Task, config, device: torch.device, layout: str = "masked") -> list[dict]:
    """:func:`run_single` of a scheduled config on a resolved device, phase 2 in a checked ``layout``."""
    data = task.data(config)
    on = data.to(device)  # moved once; ``data`` (CPU) feeds expand and the records
    warmup, after = config.phase_lengths()
    records = []

    def finish(variant, model):
        measured = task.evaluate(model, config, on)
        records.append(make_record(task, config, variant, for_records(model.cpu()), measured, data))

    torch.manual_seed(config.seed)  # DropConnect's masks come from the global generator
    dense = task.parent(config).to(device)
    generator = batch_generator(config, 0)
    optimizer = task.train(dense, config, on, warmup, generator)  # phase 1: dense warm-up (T1)
    if any(parse_variant(v).carry for v in config.variants):  # one copy: the optimizer's holds warm's parameters
        warm, warm_optimizer = copy.deepcopy((dense, optimizer))
    else:
        warm, warm_optimizer = copy.deepcopy(dense), None
    source = warm if warm_optimizer is None else copy.deepcopy(warm)
    source = source.cpu()  # expand works on CPU copies; a carried optimizer keeps ``warm`` where it trained
    if "dense" in config.variants:  # the baseline keeps its optimizer for T2 more
        task.train(dense, config, on, after, generator, optimizer)
        finish("dense", dense)
    for variant in config.variants:  # phase 2: expand (or build the control), train on
        if variant == "dense":
            continue
        model = build_variant(task, config, variant, source, data)
        carries = parse_variant(variant).carry  # carry_optimizer needs the masked layout: no packing
        model = (model if carries else for_training(model, layout, device)).to(device)
        carried = carry_optimizer(warm_optimizer, warm, model) if carries else None
        task.train(model, config, on, length(config, phase(variant)), batch_generator(config, phase(variant)),
                   carried)
        finish(variant, model)
    return _relative(task, records)


# ---------------------------------------------------------------------------------------- batched
def run_batch(task: Task, configs: Sequence, device: str | torch.device | None = None,
              layout: str | None = None) -> list[dict]:
    """Train the runs of ``configs`` (equal but for the seed) as stacks on ``device``; same records as
    ``run_single``.

    Models that :class:`~torchfpe.lab.batched.StackedMLP` cannot stack (e.g. a CNN), tasks with their own
    ``train`` or ``evaluate``, and variants that carry the optimizer run one seed at a time through
    :func:`run_single`, phase 2 in ``layout``; stacks always train masked (see "The layout").
    """
    device = resolve_device(device, "run_batch")
    layout = check_train_layout(layout, "run_batch")
    configs = list(configs)
    if not configs:
        return []
    if len({c.without_seed() for c in configs}) != 1:
        raise ValueError("run_batch needs configs that differ only in their seed; group them first")
    return scheduled_run(task, configs, lambda ran: train_batch(task, ran, device, layout))


def train_batch(task: Task, configs: list, device: torch.device, layout: str = "masked") -> list[dict]:
    """:func:`run_batch` of scheduled configs (equal but for the seed) on a resolved device; ``layout``
    (checked) reaches the models trained one at a time only."""
    first = configs[0]
    carries = any(parse_variant(v).carry for v in first.variants)
    parents = [task.parent(c) for c in configs] if task.stacks() and not carries else []
    if not parents or not can_stack(parents[:1]):  # each parent is seeded by its config (global RNG untouched)
        return _sorted([r for c in configs for r in train_single(task, c, device, layout)], first.variants)
    settings = first.settings()
    kind = task.task_kind
    datas = [task.data(c) for c in configs]
    x_train, y_train, x_test, y_test = (  # moved to the device once
        _stack([getattr(d, name) for d in datas], device) for name in ("x_train", "y_train", "x_test", "y_test"))
    records: list[dict] = []

    def train(stack, index, epochs_, generators, optimizer=None):
        return fit_stacked(stack, _take(x_train, index), _take(y_train, index), epochs_, settings, optimizer=optimizer,
                           generators=generators, loss_fn=kind.stacked_loss)

    def finish(stack: StackedMLP, owners: list[tuple[Any, str, int]]):
        index = torch.tensor([i for _, _, i in owners])
        measured = kind.evaluate_stacked(stack, _take(x_train, index), _take(y_train, index),
                                         _take(x_test, index), _take(y_test, index))
        for model, (config, variant, i), fields in zip(stack.unstack(), owners, measured):
            records.append(make_record(task, config, variant, model.cpu(), fields, datas[i]))

    everyone = torch.arange(len(configs))
    torch.manual_seed(first.seed)  # DropConnect's masks come from the global generator
    dense = StackedMLP(parents).to(device)
    generators = [batch_generator(c, 0) for c in configs]
    warmup, after = first.phase_lengths()
    optimizer = train(dense, everyone, warmup, generators)  # phase 1: dense warm-up
    warm = [model.cpu() for model in dense.unstack()]  # expand works on CPU copies
    if "dense" in first.variants:  # the baseline keeps its optimizer for T2 more epochs
        train(dense, everyone, after, generators, optimizer)
        finish(dense, [(c, "dense", i) for i, c in enumerate(configs)])

    # Phase 2. Variants of one shape are trained together: a bigger stack, fewer kernel launches.
    groups: dict[str, list[tuple[nn.Module, tuple[Any, str, int]]]] = {}
    for variant in first.variants:
        if variant == "dense":
            continue
        for i, config in enumerate(configs):
            model = build_variant(task, config, variant, warm[i], datas[i])
            groups.setdefault(repr((stack_signature(model), phase(variant))), []).append((model, (config, variant, i)))
    for members in groups.values():
        owners = [owner for _, owner in members]
        phase_ = phase(owners[0][1])
        stack = StackedMLP([model for model, _ in members]).to(device)
        train(stack, torch.tensor([i for _, _, i in owners]), length(first, phase_),
              [batch_generator(c, phase_) for c, _, _ in owners])
        finish(stack, owners)
    return _relative(task, _sorted(records, first.variants))


def _take(stacked: Tensor, index: Tensor) -> Tensor:
    """``stacked[index]``, kept a view where every model shares one data set (indexing would copy it
    once per model: 15 copies of a 60000 × 1280 feature set are 4.6 GB)."""
    if stacked.stride(0) == 0:
        return stacked[0].unsqueeze(0).expand(len(index), *stacked.shape[1:])
    return stacked[index]


def _stack(tensors: list[Tensor], device: torch.device | None = None) -> Tensor:
    """(B, ...) from B tensors on ``device``; one shared tensor becomes a view, not B copies."""
    if all(t is tensors[0] for t in tensors):
        return tensors[0].to(device).unsqueeze(0).expand(len(tensors), *tensors[0].shape)
    return torch.stack(tensors).to(device)
