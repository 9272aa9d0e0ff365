"""Task kinds: how a protocol task's models are trained and measured, one registered record each.

A :class:`TaskKind` declares, beside its code:

- ``loss(outputs, targets)``: one model's mean loss (what :func:`torchfpe.lab.train.fit` minimises);
- ``measure(model, x, y, eval_batch) -> float``: the score of one model on one split;
- ``stacked_loss(outputs (B, out, N), targets (B, N))``: the sum over models of each model's mean loss
  and ``stacked_measure(stack, x (B, N, in), y (B, N)) -> (B,)``: the same score per model of a
  :class:`~torchfpe.lab.batched.StackedMLP` (both or neither: a kind without them never stacks);
- ``fields``: the record fields it measures (:class:`RecordField`: whether a value is a fraction in
  [0, 1], whether higher is better). A kind with ``measure`` records ``test_<measured>`` and
  ``train_<measured>`` (in that order); a kind whose task measures itself (the language models'
  bits per byte) declares its fields;
- ``metric``: the field ``relative_gain`` compares with the dense run (default ``test_<measured>``).

The protocol's default training and evaluation, the stacked trainer's records, the store's check of
read-back records (:func:`fraction_fields`) and a study's report metric (:meth:`TaskKind.report_metric`)
read the kind, so a new task kind or metric is one :func:`register_task_kind` call, with no edit of
``train``, ``batched`` or ``protocol``. Built in: ``binary`` (one logit, 0/1 targets, BCE, accuracy)
and ``multiclass`` (C logits, integer labels, cross-entropy, accuracy).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from ..core.validation import InvalidParameterError, check_param
from .batched import (stacked_binary_accuracy, stacked_binary_loss, stacked_multiclass_accuracy,
                      stacked_multiclass_loss)
from .train import binary_accuracy, binary_loss, multiclass_accuracy, multiclass_loss


@dataclass(frozen=True)
class RecordField:
    """A record field a task kind measures: ``fraction``: a value in [0, 1] (checked when records are read
    back, shown in percent); ``higher_is_better``: the direction of a better model."""

    name: str
    fraction: bool = False
    higher_is_better: bool = True


@dataclass(frozen=True)
class TaskKind:
    """A registered task kind (see the module docstring)."""

    name: str
    fields: tuple[RecordField, ...]
    metric: str
    loss: Callable[[Tensor, Tensor], Tensor] | None = None
    measure: Callable[..., float] | None = None
    stacked_loss: Callable[[Tensor, Tensor], Tensor] | None = None
    stacked_measure: Callable[..., Tensor] | None = None
    description: str = ""

    @property
    def stacks(self) -> bool:
        """Whether the stacked trainer can train and measure this kind's models."""
        return self.stacked_loss is not None and self.stacked_measure is not None

    def field(self, name: str) -> RecordField:
        """The declared field ``name``; an undeclared one is an error listing the kind's fields."""
        for declared in self.fields:
            if declared.name == name:
                return declared
        raise InvalidParameterError(f"task kind {self.name!r} measures no field {name!r}; its fields: "
                                    f"{', '.join(f.name for f in self.fields)}")

    @property
    def higher_is_better(self) -> bool:
        """The direction of :attr:`metric`."""
        return self.field(self.metric).higher_is_better

    def evaluate(self, model: nn.Module, x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor,
                 eval_batch: int | None = None) -> dict[str, float]:
        """One model's measured fields: ``{test field: score on the test split, train field: on training}``."""
        if self.measure is None:
            raise InvalidParameterError(f"task kind {self.name!r} has no measure; its task evaluates its models itself")
        test, train = self.fields[0].name, self.fields[1].name
        return {test: self.measure(model, x_test, y_test, eval_batch),
                train: self.measure(model, x_train, y_train, eval_batch)}

    def evaluate_stacked(self, stack: nn.Module, x_train: Tensor, y_train: Tensor, x_test: Tensor,
                         y_test: Tensor) -> list[dict[str, float]]:
        """Each stacked model's measured fields, in the stack's order (as :meth:`evaluate` would give)."""
        test, train = self.fields[0].name, self.fields[1].name
        train_scores = self.stacked_measure(stack, x_train, y_train)
        test_scores = self.stacked_measure(stack, x_test, y_test)
        return [{test: float(b), train: float(a)} for a, b in zip(train_scores, test_scores)]

    def report_metric(self, label: str | None = None) -> dict:
        """A study meta's ``metric`` block for :attr:`metric` (see :mod:`torchfpe.lab.report.metric`)."""
        declared = self.field(self.metric)
        return {"key": declared.name, "label": label or declared.name.replace("_", " "),
                "higher_is_better": declared.higher_is_better, "percent": declared.fraction}


class TaskKindRegistry(Mapping[str, TaskKind]):
    """Name -> :class:`TaskKind`, in registration order."""

    def __init__(self) -> None:
        self._kinds: dict[str, TaskKind] = {}

    def __getitem__(self, name: str) -> TaskKind:
        return self._kinds[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._kinds)

    def __len__(self) -> int:
        return len(self._kinds)

    def __repr__(self) -> str:
        return f"TaskKindRegistry({', '.join(self._kinds)})"

    def add(self, kind: TaskKind, *, replace: bool = False) -> TaskKind:
        if not replace and kind.name in self._kinds:
            raise InvalidParameterError(f"a task kind named {kind.name!r} is already registered; pass replace=True "
                                        "to register_task_kind to replace it")
        self._kinds[kind.name] = kind
        return kind

    def remove(self, name: str) -> None:
        """Forget a task kind (tests register temporary ones)."""
        self._kinds.pop(name, None)


#: Every registered task kind; the protocol, the stacked trainer's records and the store's checks read it.
TASK_KINDS = TaskKindRegistry()


def register_task_kind(name: str, *, loss: Callable | None = None, measure: Callable | None = None,
                       stacked_loss: Callable | None = None, stacked_measure: Callable | None = None,
                       measured: str = "accuracy", fraction: bool = False, higher_is_better: bool = True,
                       fields: Sequence[RecordField] | None = None, metric: str | None = None,
                       description: str = "", replace: bool = False) -> TaskKind:
    """Register a task kind (see the module docstring); returns it.

    With ``measure``, the kind records ``test_<measured>`` and ``train_<measured>`` (``fraction`` and
    ``higher_is_better`` say what they are) unless ``fields`` declares them; without it, ``fields`` and
    ``metric`` are required (the task's own ``evaluate`` measures them).
    """
    owner = "register_task_kind"
    check_param("name", name, [str], owner)
    if not name.isidentifier():
        raise InvalidParameterError(f"the 'name' parameter of {owner} must be an identifier; got {name!r}")
    for argument, value in (("loss", loss), ("measure", measure), ("stacked_loss", stacked_loss),
                            ("stacked_measure", stacked_measure)):
        if value is not None:
            check_param(argument, value, [callable], owner)
    if (stacked_loss is None) != (stacked_measure is None):
        raise InvalidParameterError(f"{owner}({name!r}): give stacked_loss and stacked_measure together (a kind "
                                    "stacks with both) or neither")
    for trait, value in (("fraction", fraction), ("higher_is_better", higher_is_better), ("replace", replace)):
        check_param(trait, value, [bool], owner)
    if fields is None:
        if measure is None:
            raise InvalidParameterError(f"{owner}({name!r}): a kind without 'measure' declares its 'fields' (the record "
                                        "fields its task's evaluate measures)")
        check_param("measured", measured, [str], owner)
        fields = tuple(RecordField(f"{split}_{measured}", fraction, higher_is_better) for split in ("test", "train"))
    fields = tuple(fields)
    if not fields or not all(isinstance(f, RecordField) for f in fields):
        raise InvalidParameterError(f"the 'fields' parameter of {owner} must be a non-empty list of RecordField; "
                                    f"got {fields!r}")
    if measure is not None and len(fields) < 2:
        raise InvalidParameterError(f"{owner}({name!r}): a kind with 'measure' records a test and a train field")
    metric = fields[0].name if metric is None else metric
    if metric not in [f.name for f in fields]:
        raise InvalidParameterError(f"the 'metric' parameter of {owner} must be one of its fields "
                                    f"({', '.join(f.name for f in fields)}); got {metric!r}")
    return TASK_KINDS.add(TaskKind(name, fields, metric, loss, measure, stacked_loss, stacked_measure, description),
                          replace=replace)


def get_task_kind(name: str, where: str = "kind") -> TaskKind:
    """The registered task kind ``name``; an unknown name is an error listing the registered ones."""
    try:
        return TASK_KINDS[name]
    except (KeyError, TypeError):
        raise InvalidParameterError(f"{where}: unknown task kind {name!r}; registered kinds: "
                                    f"{', '.join(TASK_KINDS)}") from None


def fraction_fields() -> frozenset[str]:
    """The record fields some registered kind declares a fraction in [0, 1]."""
    return frozenset(f.name for kind in TASK_KINDS.values() for f in kind.fields if f.fraction)


register_task_kind("binary", loss=binary_loss, measure=binary_accuracy, stacked_loss=stacked_binary_loss,
                   stacked_measure=stacked_binary_accuracy, fraction=True,
                   description="one logit, 0/1 targets: binary cross-entropy; accuracy of the logit's sign")
register_task_kind("multiclass", loss=multiclass_loss, measure=multiclass_accuracy,
                   stacked_loss=stacked_multiclass_loss, stacked_measure=stacked_multiclass_accuracy, fraction=True,
                   description="C logits, integer labels: cross-entropy; arg-max accuracy")
