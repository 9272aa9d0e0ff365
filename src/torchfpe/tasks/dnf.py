"""Boolean DNF task generator.

The target is ``f(x) = OR_{c=1..m} AND_{j=1..k} l_{c,j}(x)`` over ``n`` Boolean
variables, where each literal ``l`` is a variable or its negation.  The clauses
are the "features" of later experiments; :meth:`DNFFormula.clause_map` gives the
input indices each clause reads, which is what the clause split consumes.

Randomness
----------
Everything is drawn from one ``torch.Generator`` seeded with ``config.seed`` in
a fixed order: formula (variables, then signs), then the training set, then the
test set.  The global torch RNG is never touched, and the same config always
gives identical tensors.  :func:`make_formula` uses the same first draws, so
``make_formula(cfg)`` equals ``make_dnf(cfg).formula``.

Sampling
--------
``"uniform"``: every example is uniform over ``{0,1}^n``.

``"balanced"``: exactly ``ceil(N/2)`` positives and ``floor(N/2)`` negatives
per split (an odd ``N`` gets one more positive).  Positives are made
constructively: pick a clause uniformly at random, set its literals so that it
is satisfied, draw every other bit uniformly.  They are therefore certainly
positive but NOT uniform over the positive inputs (inputs satisfying several
clauses, or the clause with fewer overlaps, are over-represented relative to
uniform-over-positives).  Negatives are rejection-sampled from uniform bits, so
they ARE uniform over the negative inputs.  The examples are then shuffled with
the generator.  If the formula is (almost) always true, rejection sampling would
not terminate in reasonable time and a ``ValueError`` is raised.

``"rejection"``: the same counts as ``"balanced"`` (``ceil(N/2)`` positives,
``floor(N/2)`` negatives), but both sides are rejection-sampled from uniform
bits: draws come in batches, each draw is kept if its side is not yet full, and
the kept examples are shuffled with the generator.  A uniform draw that lands on
a side is uniform over that side, so positives are uniform over the satisfying
inputs and negatives over the others (the distribution ``"balanced"`` only
approximates for positives).  A ``ValueError`` is raised if either side is too
rare to fill in reasonable time (under 0.1% of draws).

Labels are always computed by :meth:`DNFFormula.evaluate` on the sampled bits.

Encodings
---------
``"pm1"``: bit 1 -> +1.0, bit 0 -> -1.0.  ``"01"``: bit 1 -> 1.0, bit 0 -> 0.0.
:func:`decode_bits` inverts this (pm1: ``x > 0``; 01: ``x > 0.5``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from ..core.validation import plain_number

__all__ = [
    "DNFConfig",
    "DNFFormula",
    "DNFTask",
    "make_formula",
    "make_dnf",
    "decode_bits",
    "encode_bits",
    "VARIABLE_MODES",
    "ENCODINGS",
    "SAMPLINGS",
]

VARIABLE_MODES = ("disjoint", "overlapping")
ENCODINGS = ("pm1", "01")
SAMPLINGS = ("uniform", "balanced", "rejection")

# Rejection sampling of negatives (balanced sampling).
_REJECTION_MIN_BATCH = 4096
_REJECTION_MAX_ROUNDS = 64
_REJECTION_MIN_NEG_RATE = 1e-3  # give up if fewer than 0.1% of draws are negative
_REJECTION_CHECK_AFTER = 20_000  # draws before the rate check is trusted
# Rejection sampling of both sides (sampling="rejection").
_REJECTION_MIN_RATE = 1e-3  # give up if fewer than 0.1% of draws land on a side still short of examples
_REJECTION_MAX_BATCH = 1 << 20  # draws per round (a bool row per draw: n_vars bytes each)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class DNFConfig:
    """Configuration of a random DNF task.  Validated on construction."""

    n_vars: int = 48
    clauses: int = 8  # m
    literals: int = 3  # k literals per clause
    negation_prob: float = 0.5
    variables: str = "disjoint"  # "disjoint" | "overlapping"
    encoding: str = "pm1"  # "pm1" | "01"
    sampling: str = "uniform"  # "uniform" | "balanced" | "rejection"
    train_size: int = 4000
    test_size: int = 4000
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_vars", "clauses", "literals", "train_size", "test_size", "seed", "negation_prob"):
            value = getattr(self, name)  # np.int64(3) is accepted as 3 and stored as the int
            if plain_number(value) is not value:
                object.__setattr__(self, name, plain_number(value))
        self.validate()

    def validate(self) -> None:
        for name in ("n_vars", "clauses", "literals", "train_size", "test_size", "seed"):
            v = getattr(self, name)
            if not _is_int(v):
                raise ValueError(f"{name} must be an int, got {v!r}")
        if self.n_vars < 1:
            raise ValueError(f"n_vars must be >= 1, got {self.n_vars}")
        if self.clauses < 1:
            raise ValueError(f"clauses must be >= 1, got {self.clauses}")
        if not 1 <= self.literals <= self.n_vars:
            raise ValueError(
                f"literals must satisfy 1 <= literals <= n_vars ({self.n_vars}), got {self.literals}"
            )
        if self.variables not in VARIABLE_MODES:
            raise ValueError(
                f"variables must be one of {VARIABLE_MODES}, got {self.variables!r}"
            )
        if self.variables == "disjoint" and self.clauses * self.literals > self.n_vars:
            raise ValueError(
                "variables='disjoint' requires clauses * literals <= n_vars, got "
                f"{self.clauses} * {self.literals} = {self.clauses * self.literals} > {self.n_vars}; "
                "use variables='overlapping' or more n_vars"
            )
        p = self.negation_prob
        if (
            isinstance(p, bool)
            or not isinstance(p, (int, float))
            or not math.isfinite(p)
            or not 0.0 <= p <= 1.0
        ):
            raise ValueError(f"negation_prob must be a number in [0, 1], got {p!r}")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if self.train_size < 1:
            raise ValueError(f"train_size must be >= 1, got {self.train_size}")
        if self.test_size < 1:
            raise ValueError(f"test_size must be >= 1, got {self.test_size}")


@dataclass
class DNFFormula:
    """A DNF formula: OR over clauses, each an AND of literals.

    ``clauses[c]`` are the variable indices of clause ``c`` (sorted ascending
    within the clause for generated formulas); ``signs[c][j]`` is True for the
    positive literal ``x_i`` and False for ``not x_i``.
    """

    n_vars: int
    clauses: list[list[int]]
    signs: list[list[bool]]

    def __post_init__(self) -> None:
        if not _is_int(self.n_vars) or self.n_vars < 1:
            raise ValueError(f"n_vars must be an int >= 1, got {self.n_vars!r}")
        if len(self.clauses) != len(self.signs):
            raise ValueError(
                f"clauses and signs must have the same length, got {len(self.clauses)} and {len(self.signs)}"
            )
        if len(self.clauses) < 1:
            raise ValueError("a DNFFormula needs at least one clause")
        for c, (idx, sg) in enumerate(zip(self.clauses, self.signs)):
            if len(idx) != len(sg):
                raise ValueError(
                    f"clause {c}: {len(idx)} variables but {len(sg)} signs"
                )
            if len(idx) < 1:
                raise ValueError(f"clause {c} is empty")
            for i in idx:
                if not _is_int(i) or not 0 <= i < self.n_vars:
                    raise ValueError(
                        f"clause {c}: variable index {i!r} out of range [0, {self.n_vars})"
                    )

    @property
    def num_clauses(self) -> int:
        return len(self.clauses)

    def clause_map(self) -> list[list[int]]:
        """Input indices per clause (one input per variable, so the variable indices)."""
        return [list(c) for c in self.clauses]

    def evaluate(self, bits: Tensor) -> Tensor:
        """Directly evaluate the formula.

        ``bits``: ``(N, n_vars)`` bool tensor, or a numeric tensor holding only
        0 and 1 (use :func:`decode_bits` for encoded inputs).  Returns ``(N,)`` bool.
        """
        if not isinstance(bits, Tensor):
            raise TypeError(f"bits must be a torch.Tensor, got {type(bits).__name__}")
        if bits.dim() != 2 or bits.shape[1] != self.n_vars:
            raise ValueError(
                f"bits must have shape (N, {self.n_vars}), got {tuple(bits.shape)}"
            )
        if bits.dtype != torch.bool:
            if not ((bits == 0) | (bits == 1)).all():
                raise ValueError(
                    "bits must be bool or contain only 0/1; decode encoded inputs with decode_bits()"
                )
            bits = bits != 0
        out = torch.zeros(bits.shape[0], dtype=torch.bool, device=bits.device)
        for idx, sg in zip(self.clauses, self.signs):
            idx_t = torch.tensor(idx, dtype=torch.long, device=bits.device)
            sg_t = torch.tensor(sg, dtype=torch.bool, device=bits.device)
            out |= (bits[:, idx_t] == sg_t).all(dim=1)
        return out


def encode_bits(bits: Tensor, encoding: str) -> Tensor:
    """Bits (bool / 0-1) -> float32 inputs in the given encoding."""
    b = bits.to(torch.float32)
    if encoding == "pm1":
        return b * 2.0 - 1.0
    if encoding == "01":
        return b
    raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")


def decode_bits(x: Tensor, encoding: str) -> Tensor:
    """Encoded inputs -> bool bits (pm1: ``x > 0``; 01: ``x > 0.5``)."""
    if encoding == "pm1":
        return x > 0
    if encoding == "01":
        return x > 0.5
    raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")


@dataclass
class DNFTask:
    config: DNFConfig
    formula: DNFFormula
    x_train: Tensor  # float32 (N, n)
    y_train: Tensor  # float32 (N,), 0./1.
    x_test: Tensor
    y_test: Tensor

    @property
    def clauses(self) -> list[list[int]]:
        return self.formula.clause_map()

    def positive_rate(self) -> dict:
        return {
            "train": float(self.y_train.mean().item()),
            "test": float(self.y_test.mean().item()),
        }

    def decode(self, x: Tensor) -> Tensor:
        """Encoded inputs -> bool bits, per ``config.encoding``."""
        return decode_bits(x, self.config.encoding)

    def evaluate_encoded(self, x: Tensor) -> Tensor:
        """Evaluate the formula on encoded inputs; returns float32 0./1. labels."""
        return self.formula.evaluate(self.decode(x)).to(torch.float32)


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


def make_formula(config: DNFConfig, generator: torch.Generator | None = None) -> DNFFormula:
    """Draw a random formula.  Without ``generator`` a fresh one seeded with
    ``config.seed`` is used (so this equals ``make_dnf(config).formula``)."""
    if not isinstance(config, DNFConfig):
        raise TypeError(f"config must be a DNFConfig, got {type(config).__name__}")
    config.validate()
    g = _generator(config.seed) if generator is None else generator
    n, m, k = config.n_vars, config.clauses, config.literals
    if config.variables == "disjoint":
        perm = torch.randperm(n, generator=g)
        var_sets = [perm[c * k : (c + 1) * k] for c in range(m)]
    else:  # overlapping
        var_sets = [torch.randperm(n, generator=g)[:k] for _ in range(m)]
    clauses = [sorted(int(i) for i in vs) for vs in var_sets]
    negated = torch.rand(m, k, generator=g) < config.negation_prob
    signs = [[not bool(v) for v in row] for row in negated]
    return DNFFormula(n_vars=n, clauses=clauses, signs=signs)


def _uniform_bits(n_rows: int, n: int, g: torch.Generator) -> Tensor:
    return torch.randint(0, 2, (n_rows, n), generator=g, dtype=torch.uint8).bool()


def _positive_bits(formula: DNFFormula, n_rows: int, g: torch.Generator) -> Tensor:
    """Constructive positives: uniform clause, its literals satisfied, rest uniform."""
    bits = _uniform_bits(n_rows, formula.n_vars, g)
    if n_rows == 0:
        return bits
    choice = torch.randint(0, formula.num_clauses, (n_rows,), generator=g)
    for c, (idx, sg) in enumerate(zip(formula.clauses, formula.signs)):
        rows = (choice == c).nonzero(as_tuple=True)[0]
        if rows.numel() == 0:
            continue
        idx_t = torch.tensor(idx, dtype=torch.long)
        sg_t = torch.tensor(sg, dtype=torch.bool)
        bits[rows.unsqueeze(1), idx_t.unsqueeze(0)] = sg_t
    return bits


def _negative_bits(formula: DNFFormula, n_rows: int, g: torch.Generator) -> Tensor:
    """Rejection-sample uniform bits until ``n_rows`` negatives are collected."""
    kept: list[Tensor] = []
    have = drawn = negs = 0
    for _ in range(_REJECTION_MAX_ROUNDS):
        if have >= n_rows:
            break
        batch = max(_REJECTION_MIN_BATCH, 4 * (n_rows - have))
        cand = _uniform_bits(batch, formula.n_vars, g)
        neg = cand[~formula.evaluate(cand)]
        drawn += batch
        negs += neg.shape[0]
        kept.append(neg)
        have += neg.shape[0]
        if have < n_rows and drawn >= _REJECTION_CHECK_AFTER and negs < _REJECTION_MIN_NEG_RATE * drawn:
            break
    if have < n_rows:
        raise ValueError(
            f"formula is positive on more than {100 * (1 - _REJECTION_MIN_NEG_RATE):.1f}% of inputs "
            f"({negs} negatives in {drawn} uniform draws); balanced sampling cannot find "
            f"{n_rows} negatives; use sampling='uniform'"
        )
    return torch.cat(kept, dim=0)[:n_rows]


def _rejection_bits(formula: DNFFormula, n_pos: int, n_neg: int, g: torch.Generator) -> Tensor:
    """Uniform draws, each kept while its side (positive / negative) still has room, in draw order."""
    need = {True: n_pos, False: n_neg}
    found = {True: 0, False: 0}
    kept: list[Tensor] = []
    drawn = 0
    for _ in range(_REJECTION_MAX_ROUNDS):
        open_sides = [side for side in (True, False) if need[side] > 0]
        if not open_sides:
            break
        # enough draws to fill the slowest open side, at its rate so far (a guess of 1/2 at first)
        rates = {side: max(found[side] / drawn if drawn else 0.5, _REJECTION_MIN_RATE) for side in open_sides}
        batch = max(_REJECTION_MIN_BATCH, int(1.5 * max(need[side] / rates[side] for side in open_sides)))
        cand = _uniform_bits(min(batch, _REJECTION_MAX_BATCH), formula.n_vars, g)
        label = formula.evaluate(cand)
        drawn += len(cand)
        # keep each side's first need[side] draws of this batch
        keep = torch.zeros_like(label)
        for side in (True, False):
            on_side = label == side
            found[side] += int(on_side.sum())
            keep |= on_side & (torch.cumsum(on_side.long(), 0) <= need[side])
            need[side] -= min(need[side], int(on_side.sum()))
        kept.append(cand[keep])
        short = [side for side in (True, False) if need[side] > 0]
        if short and drawn >= _REJECTION_CHECK_AFTER and any(found[s] < _REJECTION_MIN_RATE * drawn for s in short):
            break
    short = [side for side in (True, False) if need[side] > 0]
    if short:
        side = short[0]
        word = "positive" if side else "negative"
        raise ValueError(
            f"sampling='rejection': only {found[side]} of {drawn} uniform draws are {word} (the formula's "
            f"{word} inputs are too rare to draw {n_pos if side else n_neg} {word} examples in reasonable time; "
            f"at least {100 * _REJECTION_MIN_RATE:.1f}% of inputs must be {word}); use sampling='uniform', "
            f"or a formula with a less extreme positive rate"
        )
    return torch.cat(kept, dim=0)


def _sample_bits(config: DNFConfig, formula: DNFFormula, n_rows: int, g: torch.Generator) -> Tensor:
    if config.sampling == "uniform":
        return _uniform_bits(n_rows, config.n_vars, g)
    n_pos = (n_rows + 1) // 2  # ceil
    n_neg = n_rows // 2  # floor
    if config.sampling == "rejection":
        bits = _rejection_bits(formula, n_pos, n_neg, g)
        return bits[torch.randperm(n_rows, generator=g)]
    pos = _positive_bits(formula, n_pos, g)
    neg = _negative_bits(formula, n_neg, g) if n_neg > 0 else pos[:0]
    bits = torch.cat([pos, neg], dim=0)
    return bits[torch.randperm(n_rows, generator=g)]


def _make_split(config: DNFConfig, formula: DNFFormula, n_rows: int, g: torch.Generator):
    bits = _sample_bits(config, formula, n_rows, g)
    y = formula.evaluate(bits)
    if config.sampling in ("balanced", "rejection"):
        n_pos = int(y.sum().item())
        if n_pos != (n_rows + 1) // 2:  # pragma: no cover - internal invariant
            raise RuntimeError(f"{config.sampling} sampling produced {n_pos} positives of {n_rows}")
    return encode_bits(bits, config.encoding), y.to(torch.float32)


def make_dnf(config: DNFConfig | None = None, **overrides) -> DNFTask:
    """Build a DNF task.  ``overrides`` replace fields of ``config`` (default
    ``DNFConfig()``) via :func:`dataclasses.replace`."""
    if config is None:
        config = DNFConfig()
    elif not isinstance(config, DNFConfig):
        raise TypeError(f"config must be a DNFConfig or None, got {type(config).__name__}")
    if overrides:
        valid = [f.name for f in fields(DNFConfig)]
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise ValueError(
                f"unknown DNFConfig field(s) {unknown}; valid fields are {valid}"
            )
        config = dataclasses.replace(config, **overrides)
    config.validate()
    g = _generator(config.seed)
    formula = make_formula(config, generator=g)
    x_train, y_train = _make_split(config, formula, config.train_size, g)
    x_test, y_test = _make_split(config, formula, config.test_size, g)
    return DNFTask(
        config=config,
        formula=formula,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
    )
