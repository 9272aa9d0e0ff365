"""One validation layer: each parameter's constraint declared once, one message format, one error type.

In the style of scikit-learn's ``_param_validation``: a parameter's constraints are a list of
constraint objects (:class:`Interval`, :class:`Options`, :class:`Sequences`, a type, ``None``,
``callable``); :func:`check_param` accepts the value if *any* constraint accepts it and otherwise
raises :class:`InvalidParameterError` with one message format::

    the 'alpha' parameter of expand must be an int >= 2; got 2.5

Torch only (this module is part of the core).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class InvalidParameterError(ValueError, TypeError):
    """A parameter outside its declared constraint; both a ValueError and a TypeError (as scikit-learn's)."""


# ------------------------------------------------------------------------------------ constraints
@dataclass(frozen=True)
class Interval:
    """A real or integral number in an interval; ``None`` bounds are open-ended.

    ``kind`` is ``int`` (integral values only; bools are refused) or ``float`` (any finite real;
    ints are accepted). ``closed`` is ``"both"``, ``"left"``, ``"right"`` or ``"neither"``.
    """

    kind: type
    left: float | None = None
    right: float | None = None
    closed: str = "both"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if self.kind is int and not isinstance(value, numbers.Integral):
            return False
        if self.kind is float and not math.isfinite(float(value)):
            return False
        if self.left is not None:
            if value < self.left or (value == self.left and self.closed in ("right", "neither")):
                return False
        if self.right is not None:
            if value > self.right or (value == self.right and self.closed in ("left", "neither")):
                return False
        return True

    def describe(self) -> str:
        noun = "an int" if self.kind is int else "a finite float"
        left_closed, right_closed = self.closed in ("both", "left"), self.closed in ("both", "right")
        if self.left is not None and self.right is not None:
            return (f"{noun} in {'[' if left_closed else '('}{_num(self.left)}, "
                    f"{_num(self.right)}{']' if right_closed else ')'}")
        if self.left is not None:
            return f"{noun} {'>=' if left_closed else '>'} {_num(self.left)}"
        if self.right is not None:
            return f"{noun} {'<=' if right_closed else '<'} {_num(self.right)}"
        return noun


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values (compared with ``==``; types must match, so ``True`` is not ``1``)."""

    values: tuple

    def accepts(self, value: Any) -> bool:
        return any(type(value) is type(option) and value == option for option in self.values)

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


@dataclass(frozen=True)
class Sequences:
    """A list or tuple (never a bare string) whose items all meet ``item`` constraints; ``min_len`` items at least."""

    item: tuple = ()
    min_len: int = 0
    item_name: str = "value"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            return False
        if len(value) < self.min_len:
            return False
        return all(any(_accepts(c, v) for c in self.item) for v in value)

    def describe(self) -> str:
        size = "a non-empty list" if self.min_len == 1 else (
            f"a list of at least {self.min_len}" if self.min_len > 1 else "a list")
        joiner = " of " if self.min_len <= 1 else " "
        each = [c for c in self.item if isinstance(c, (Options, Interval))]
        allowed = f", each {_describe_all(each)}" if each else ""
        return f"{size}{joiner}{self.item_name}s (not a single string{allowed})"


@dataclass(frozen=True)
class Predicate:
    """Any value for which ``test`` is true; ``text`` says what that means."""

    test: Callable[[Any], bool]
    text: str

    def accepts(self, value: Any) -> bool:
        try:
            return bool(self.test(value))
        except Exception:  # a predicate that cannot decide refuses
            return False

    def describe(self) -> str:
        return self.text


Constraint = Any  # Interval | Options | Sequences | Predicate | type | None | callable (the builtin)


def _accepts(constraint: Constraint, value: Any) -> bool:
    if constraint is None:
        return value is None
    if constraint is callable:
        return callable(value)
    if isinstance(constraint, type):
        if constraint is int:
            return isinstance(value, numbers.Integral) and not isinstance(value, bool)
        if constraint is str:
            return isinstance(value, str)
        return isinstance(value, constraint)
    return constraint.accepts(value)


def _describe(constraint: Constraint) -> str:
    if constraint is None:
        return "None"
    if constraint is callable:
        return "a callable"
    if isinstance(constraint, type):
        return {int: "an int", str: "a string", float: "a float", bool: "a bool"}.get(
            constraint, f"a {constraint.__name__}")
    return constraint.describe()


def _describe_all(constraints: Sequence[Constraint]) -> str:
    texts = [_describe(c) for c in constraints]
    # None reads best last: "an int >= 1 or None"
    texts.sort(key=lambda t: t == "None")
    return texts[0] if len(texts) == 1 else ", ".join(texts[:-1]) + " or " + texts[-1]


def _num(value: float) -> str:
    if isinstance(value, int) and value >= 2**31:
        exponent = int(math.log2(value + 1))
        if value + 1 == 2**exponent:
            return f"2**{exponent} - 1"
        if value == 2**exponent:
            return f"2**{exponent}"
    return repr(value)


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return text if isinstance(value, (str, numbers.Number, type(None), list, tuple, dict)) else (
        f"{type(value).__name__} {text}")


# ------------------------------------------------------------------------------------- validators
def check_param(name: str, value: Any, constraints: Sequence[Constraint], owner: str) -> Any:
    """Return ``value`` if any of ``constraints`` accepts it; else raise :class:`InvalidParameterError`."""
    if any(_accepts(c, value) for c in constraints):
        return value
    raise InvalidParameterError(param_message(name, owner, _describe_all(constraints), value))


def param_message(name: str, owner: str, expected: str, value: Any) -> str:
    """The one message format: ``the 'alpha' parameter of expand must be an int >= 2; got 2.5``."""
    return f"the {name!r} parameter of {owner} must be {expected}; got {_show(value)}"


def validate_params(values: Mapping[str, Any], constraints: Mapping[str, Sequence[Constraint]], owner: str) -> None:
    """Check every named value against its declared constraints, in declaration order."""
    for name, allowed in constraints.items():
        if name in values:
            check_param(name, values[name], allowed, owner)


def invalid(name: str, owner: str, expected: str, value: Any) -> InvalidParameterError:
    """An error in the one format for a constraint that depends on other parameters."""
    return InvalidParameterError(param_message(name, owner, expected, value))


def validate_dataclass(instance: Any, constraints: Mapping[str, Sequence[Constraint]], owner: str) -> None:
    """Check the fields of a (config) dataclass instance against their declared constraints."""
    validate_params({name: getattr(instance, name) for name in constraints}, constraints, owner)


def build_config(cls: type, overrides: Mapping[str, Any], label: str) -> Any:
    """``cls(**overrides)`` for a config dataclass; unknown field names are refused, listing the fields."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise InvalidParameterError(f"unknown {label} config field(s) {unknown}; fields: {sorted(fields)}")
    return cls(**overrides)


#: Seeds accepted everywhere: what ``torch.Generator.manual_seed`` takes without wrapping.
SEED = Interval(int, 0, 2**64 - 1)


def plain_number(value: Any) -> Any:
    """A NumPy (or other ``numbers``) integer or float as the Python ``int``/``float`` it stands for.

    Checks accept any integral value (``np.int64(3)`` is an int >= 0), but torch's generators and JSON
    want Python numbers, so every entry point that takes a seed or a count passes it through this after
    the check. Bools and everything else come back unchanged.
    """
    if isinstance(value, bool) or type(value) in (int, float):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and type(value).__module__ == "numpy":
        return float(value)
    return value
