"""Evaluation and interference metrics for Fixed Parameter Expansion (FPE).

FPE widens a layer by splitting every hidden neuron into ``alpha`` children
that partition the neuron's incoming weights.  The claims we measure are:

* the expanded ("variant") network is more accurate than the dense one at a
  fixed non-zero parameter count (:func:`accuracy`, :func:`relative_gain`,
  :func:`fold_change`);
* splitting reduces *polysemanticity* / feature interference, measured by the
  feature capacity of Scherlis et al. (2022) (:func:`feature_capacity`) and by
  the similarity of hidden units' incoming weight vectors
  (:func:`mean_pairwise_cosine`);
* for symbolic tasks built from k-literal clauses, the chance that a clause
  (or two clauses) land wholly inside one child is given by simple formulas
  that we check by Monte-Carlo (:func:`clause_coverage_theory`,
  :func:`collision_probability_theory` and their ``_mc`` counterparts).

Conventions
-----------
A layer weight ``W`` has PyTorch's ``nn.Linear`` layout ``(hidden, inputs)``:
row ``r`` is hidden unit ``r``'s incoming weight vector and column ``i`` is
the embedding of input feature ``i`` in hidden space.

The module depends on ``torch`` only, keeps no global state, and every random
choice is driven by an explicit ``seed``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Union

import torch
from torch import Tensor, nn

from .core.layouts import ExpandedLayer

__all__ = [
    "accuracy",
    "relative_gain",
    "fold_change",
    "gram_matrix",
    "feature_capacity",
    "capacity_summary",
    "mean_pairwise_cosine",
    "interference_metrics",
    "linear_fit",
    "collision_probability_theory",
    "collision_probability_mc",
    "clause_coverage_theory",
    "clause_coverage_mc",
    "hidden_weights",
    "clause_relevant_inputs",
    "clause_embeddings",
    "clause_interference",
    "whole_clause_cover",
    "pearson_r",
    "spearman_r",
]

ArrayLike = Union[Tensor, Sequence[float]]

# Row block size for the O(n^2) pairwise computations; bounds peak memory to
# about _BLOCK * n float64 values regardless of layer size.
_BLOCK = 1024
# Upper bound on the number of random numbers drawn per Monte-Carlo chunk.
_MC_CHUNK_ELEMS = 4_000_000


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------


def _check_weight(weight: Tensor, name: str = "weight") -> Tensor:
    """Validate a 2-D, non-empty, finite weight and return it as float64."""
    if not isinstance(weight, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(weight).__name__}")
    if weight.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D with shape (hidden, inputs), got shape {tuple(weight.shape)}"
        )
    if weight.shape[0] == 0 or weight.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(weight.shape)}")
    if weight.is_complex():
        raise ValueError(f"{name} must be real-valued, got dtype {weight.dtype}")
    w64 = weight.detach().to(torch.float64)
    if not bool(torch.isfinite(w64).all()):
        raise ValueError(f"{name} contains NaN or infinite entries")
    return w64


def _check_pos_int(value: int, name: str, minimum: int = 1) -> int:
    """Validate an integer argument (bools rejected) that must be >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_finite_number(value: float, name: str) -> float:
    """Validate a real, finite scalar and return it as a Python float."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _to_1d_float64(values: ArrayLike, name: str) -> Tensor:
    """Convert a list/tuple/tensor to a finite 1-D float64 tensor."""
    try:
        t = torch.as_tensor(values.detach() if isinstance(values, Tensor) else values)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name} must be a 1-D sequence of numbers: {exc}") from exc
    t = t.to(torch.float64)
    if t.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


# --------------------------------------------------------------------------
# task-level metrics
# --------------------------------------------------------------------------


def accuracy(
    logits_or_probs: Tensor, targets: Tensor, *, threshold: float | None = None
) -> float:
    """Fraction of correct predictions, as a Python float in [0, 1].

    Two output layouts are supported:

    * **binary** -- shape ``(N,)`` or ``(N, 1)``: the prediction is
      ``output > threshold``.  ``threshold`` defaults to ``0.0``, i.e. the
      output is taken to be a *logit*; pass ``threshold=0.5`` for
      probabilities.  ``targets`` must have ``N`` entries, each 0 or 1
      (bool, int or float).
    * **multi-class** -- shape ``(N, C)`` with ``C >= 2``: the prediction is
      the ``argmax`` over classes and ``targets`` holds ``N`` integer class
      indices in ``[0, C)``.  ``threshold`` must be ``None`` here.

    Raises:
        ValueError: on empty input, mismatched sizes, invalid target values,
            or a ``threshold`` given for multi-class output.
    """
    if not isinstance(logits_or_probs, Tensor):
        raise ValueError(
            f"logits_or_probs must be a torch.Tensor, got {type(logits_or_probs).__name__}"
        )
    if not isinstance(targets, Tensor):
        raise ValueError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    out = logits_or_probs.detach()
    tgt = targets.detach()
    if out.ndim not in (1, 2):
        raise ValueError(
            "logits_or_probs must have shape (N,), (N, 1) or (N, C), "
            f"got {tuple(out.shape)}"
        )
    n = out.shape[0]
    if n == 0:
        raise ValueError("logits_or_probs is empty (N == 0); accuracy is undefined")
    if tgt.ndim == 2 and tgt.shape[1] == 1:
        tgt = tgt[:, 0]
    if tgt.ndim != 1 or tgt.shape[0] != n:
        raise ValueError(
            f"targets must have {n} entries (shape ({n},) or ({n}, 1)), got {tuple(targets.shape)}"
        )

    binary = out.ndim == 1 or out.shape[1] == 1
    if binary:
        thr = 0.0 if threshold is None else _check_finite_number(threshold, "threshold")
        scores = out.reshape(n).to(torch.float64)
        pred = scores > thr
        t = tgt.to(torch.float64)
        if not bool(((t == 0) | (t == 1)).all()):
            raise ValueError("targets for binary output must be 0 or 1")
        correct = pred == (t == 1)
    else:
        if threshold is not None:
            raise ValueError(
                "threshold is only meaningful for binary (N,) or (N, 1) output; "
                f"got multi-class output with C={out.shape[1]}"
            )
        if tgt.is_floating_point():
            if not bool((tgt == tgt.round()).all()):
                raise ValueError("targets for multi-class output must be integer class indices")
        tgt_i = tgt.to(torch.int64)
        c = out.shape[1]
        if bool(((tgt_i < 0) | (tgt_i >= c)).any()):
            raise ValueError(f"targets must be class indices in [0, {c}), got out-of-range values")
        correct = out.argmax(dim=1) == tgt_i
    return float(correct.to(torch.float64).mean().item())


def relative_gain(acc_variant: float, acc_dense: float) -> float:
    """Relative improvement ``(acc_variant - acc_dense) / acc_dense``.

    E.g. 0.9 vs 0.75 gives 0.2 (a 20 % gain).  Negative when the variant is
    worse.

    Raises:
        ValueError: if ``acc_dense <= 0`` (the ratio would be undefined or
            sign-flipped) or either value is not finite.
    """
    a = _check_finite_number(acc_variant, "acc_variant")
    d = _check_finite_number(acc_dense, "acc_dense")
    if d <= 0:
        raise ValueError(f"acc_dense must be > 0 for a relative gain, got {d}")
    return (a - d) / d


def fold_change(value_variant: float, value_dense: float) -> float:
    """Ratio ``value_variant / value_dense`` (e.g. 2.0 = twice the dense value).

    Raises:
        ValueError: if ``value_dense == 0`` or either value is not finite.
    """
    v = _check_finite_number(value_variant, "value_variant")
    d = _check_finite_number(value_dense, "value_dense")
    if d == 0:
        raise ValueError("value_dense must be non-zero for a fold change")
    return v / d


# --------------------------------------------------------------------------
# interference / polysemanticity metrics
# --------------------------------------------------------------------------


def gram_matrix(weight: Tensor) -> Tensor:
    """Return ``Wᵀ W`` of shape ``(inputs, inputs)`` for ``W`` of shape ``(hidden, inputs)``.

    Entry ``(i, j)`` is the dot product of input features ``i`` and ``j``'s
    hidden-space embeddings (columns of ``W``); the off-diagonal mass is what
    makes features interfere.  Computed in the weight's own dtype (detached).

    Raises:
        ValueError: if ``weight`` is not a non-empty, finite 2-D real tensor.
    """
    _check_weight(weight)
    w = weight.detach()
    if not w.is_floating_point():
        w = w.to(torch.float64)
    return w.T @ w


def feature_capacity(weight: Tensor, eps: float = 1e-12) -> Tensor:
    """Per-input-feature capacity of Scherlis et al. (2022), shape ``(inputs,)``.

    With ``v_i = W[:, i]`` the hidden-space embedding of input feature ``i``::

        C_i = (v_i · v_i)^2 / Σ_j (v_i · v_j)^2

    By Cauchy-Schwarz ``C_i ∈ (0, 1]`` for a non-zero column: 1 when ``v_i``
    is orthogonal to every other column (the feature has a dimension to
    itself), ``1/m`` for each of ``m`` identical columns (they share one
    dimension).  The total ``Σ_i C_i`` is at most ``rank(W) <= hidden``.

    Zero columns: a feature that is not represented at all gets capacity
    **0** (the formula is 0/0 there).  A column counts as zero when its
    squared norm is ``<= eps * max_j ||v_j||^2``, i.e. ``eps`` is *relative*
    to the largest column so the result is invariant to rescaling ``W``.  An
    all-zero ``W`` gives all zeros.

    Computed in float64; returned in the weight's floating dtype (float64 for
    integer weights).

    Raises:
        ValueError: for a non-2-D / empty / non-finite weight or ``eps < 0``.
    """
    w = _check_weight(weight)
    eps_f = _check_finite_number(eps, "eps")
    if eps_f < 0:
        raise ValueError(f"eps must be >= 0, got {eps_f}")
    out_dtype = weight.dtype if weight.is_floating_point() else torch.float64

    sq_norms = (w * w).sum(dim=0)  # (inputs,) = diag(WᵀW)
    max_sq = float(sq_norms.max().item())
    live = sq_norms > eps_f * max_sq if max_sq > 0 else torch.zeros_like(sq_norms, dtype=torch.bool)

    n_in = w.shape[1]
    denom = torch.empty(n_in, dtype=torch.float64)
    w_live = w * live.to(torch.float64)  # zero columns must not contribute to others' sums
    for start in range(0, n_in, _BLOCK):
        g_block = w_live[:, start : start + _BLOCK].T @ w_live  # rows of WᵀW
        denom[start : start + _BLOCK] = (g_block * g_block).sum(dim=1)

    cap = torch.zeros(n_in, dtype=torch.float64)
    cap[live] = sq_norms[live] ** 2 / denom[live]
    # Guard rounding: Cauchy-Schwarz guarantees <= 1 mathematically.
    cap = cap.clamp_(max=1.0)
    return cap.to(out_dtype)


def capacity_summary(weight: Tensor) -> dict[str, float]:
    """Summarise :func:`feature_capacity` as ``{"mean": ..., "sum": ...}``.

    ``mean`` averages over *all* input features, zero columns included (they
    contribute 0); ``sum`` is the total capacity, the effective number of
    dimensions handed out to features (at most ``hidden``).
    """
    cap = feature_capacity(weight).to(torch.float64)
    return {"mean": float(cap.mean().item()), "sum": float(cap.sum().item())}


def mean_pairwise_cosine(weight: Tensor, *, absolute: bool = False) -> float:
    """Mean cosine similarity between hidden units' incoming weight vectors.

    Averages ``cos(W[r], W[s])`` over unordered pairs of rows ``r < s``
    (``|cos|`` when ``absolute=True``).  High values mean hidden units read
    the same directions of the input, i.e. redundancy / interference.

    Rows that are entirely zero (e.g. units whose incoming weights were all
    masked away) have no direction and are **excluded**.  If fewer than two
    non-zero rows remain the mean is undefined and ``float('nan')`` is
    returned (not an error, so sweeps over sparse layers keep going).

    Computed in float64, blockwise so memory stays ``O(block * hidden)``.

    Raises:
        ValueError: for a non-2-D / empty / non-finite weight.
    """
    w = _check_weight(weight)
    if not isinstance(absolute, bool):
        raise ValueError(f"absolute must be a bool, got {type(absolute).__name__}")
    rows = w[(w != 0).any(dim=1)]
    n = rows.shape[0]
    if n < 2:
        return float("nan")
    u = rows / rows.norm(dim=1, keepdim=True)
    total = 0.0
    for start in range(0, n, _BLOCK):
        block = (u[start : start + _BLOCK] @ u.T).clamp_(-1.0, 1.0)
        if absolute:
            block = block.abs_()
        # keep only columns j > global row index i
        total += float(torch.triu(block, diagonal=start + 1).sum().item())
    return total / (n * (n - 1) / 2)


def interference_metrics(weight: Tensor) -> dict[str, float]:
    """All interference metrics for one layer weight of shape ``(hidden, inputs)``.

    Returns ``{"capacity_mean", "capacity_sum", "cosine_mean",
    "cosine_abs_mean"}``: the :func:`capacity_summary` of the input features
    (columns) and the signed / absolute :func:`mean_pairwise_cosine` of the
    hidden units (rows; NaN when fewer than two non-zero rows).
    """
    cap = capacity_summary(weight)
    return {
        "capacity_mean": cap["mean"],
        "capacity_sum": cap["sum"],
        "cosine_mean": mean_pairwise_cosine(weight, absolute=False),
        "cosine_abs_mean": mean_pairwise_cosine(weight, absolute=True),
    }


def hidden_weights(model: nn.Module) -> list[tuple[str, Tensor]]:
    """``(name, effective weight)`` of every linear layer except the last.

    Layers are visited in ``model.named_modules()`` order (registration /
    depth-first order); the final one is treated as the read-out and
    dropped, since interference metrics concern hidden representations.

    An expanded layer of any layout (:class:`torchfpe.core.layouts.ExpandedLayer`)
    gives its ``effective_weight()``.  Otherwise a module counts as a linear
    layer if it is an ``nn.Linear`` (subclasses included), or if it has a 2-D ``weight`` tensor *and* a ``weight_mask``
    buffer (our masked layers).  The effective weight is
    ``weight * weight_mask`` when a ``weight_mask`` buffer is present, else
    ``weight``.  Exception: with ``torch.nn.utils.prune`` (which keeps
    ``weight_orig`` and already sets ``weight = weight_orig * weight_mask``)
    ``weight`` is used as is, so the mask is not applied twice.

    Returns detached clones (safe to modify).  Fewer than two linear layers
    gives ``[]``.

    Raises:
        ValueError: if ``model`` is not an ``nn.Module`` or a ``weight_mask``
            does not match its ``weight``'s shape.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    found: list[tuple[str, Tensor]] = []
    for name, module in model.named_modules():
        if isinstance(module, ExpandedLayer):  # any layout, through its interface
            found.append((name, module.effective_weight().detach().clone()))
            continue
        buffers = dict(module.named_buffers(recurse=False))
        mask = buffers.get("weight_mask")
        weight = getattr(module, "weight", None)
        is_linear = isinstance(module, nn.Linear) or (
            mask is not None and isinstance(weight, Tensor) and weight.ndim == 2
        )
        if not is_linear or not isinstance(weight, Tensor):
            continue
        eff = weight.detach()
        already_masked = hasattr(module, "weight_orig")
        if mask is not None and not already_masked:
            if mask.shape != weight.shape:
                raise ValueError(
                    f"module {name!r}: weight_mask shape {tuple(mask.shape)} does not match "
                    f"weight shape {tuple(weight.shape)}"
                )
            eff = eff * mask.detach().to(eff.dtype)
        found.append((name, eff.clone()))
    return found[:-1]


# --------------------------------------------------------------------------
# regression
# --------------------------------------------------------------------------


def linear_fit(x: ArrayLike, y: ArrayLike) -> dict[str, float]:
    """Ordinary least squares ``y ≈ slope * x + intercept``.

    Accepts lists, tuples or 1-D tensors of equal length.  Returns
    ``{"slope", "intercept", "r2", "n"}`` with ``r2 = 1 - SS_res / SS_tot``.
    When all ``y`` are equal (``SS_tot == 0``) the horizontal line fits
    exactly and ``r2`` is reported as 1.0.

    Raises:
        ValueError: for mismatched lengths, fewer than 2 points, non-finite
            values, or all ``x`` equal (the slope is undefined).
    """
    xt = _to_1d_float64(x, "x")
    yt = _to_1d_float64(y, "y")
    if xt.shape[0] != yt.shape[0]:
        raise ValueError(f"x and y must have the same length, got {xt.shape[0]} and {yt.shape[0]}")
    n = int(xt.shape[0])
    if n < 2:
        raise ValueError(f"linear_fit needs at least 2 points, got {n}")
    dx = xt - xt.mean()
    dy = yt - yt.mean()
    sxx = float((dx * dx).sum().item())
    if sxx == 0.0:
        raise ValueError("all x values are equal; the slope is undefined")
    slope = float((dx * dy).sum().item()) / sxx
    intercept = float(yt.mean().item()) - slope * float(xt.mean().item())
    resid = yt - (slope * xt + intercept)
    ss_res = float((resid * resid).sum().item())
    ss_tot = float((dy * dy).sum().item())
    r2 = 1.0 if ss_tot == 0.0 else 1.0 - ss_res / ss_tot
    return {"slope": slope, "intercept": intercept, "r2": r2, "n": n}


# --------------------------------------------------------------------------
# clause coverage / collision probabilities
# --------------------------------------------------------------------------


def clause_coverage_theory(k: int, alpha: int) -> float:
    """Probability ``alpha ** -(k - 1)`` that one k-literal clause lies wholly in one child.

    Assumes each variable is assigned independently and uniformly to one of
    ``alpha`` children: the first variable picks a child, the other ``k - 1``
    must follow it.  For a balanced split of ``n`` variables this is the
    large-``n`` limit (see :func:`clause_coverage_mc` with ``n_vars``).
    """
    _check_pos_int(k, "k")
    _check_pos_int(alpha, "alpha")
    return float(alpha) ** -(k - 1)


def collision_probability_theory(k: int, alpha: int) -> float:
    """Probability ``alpha ** -(2k - 1)`` that two disjoint k-literal clauses share one child.

    Under independent uniform assignment of the ``2k`` variables to
    ``alpha`` children, all ``2k`` must land in the child of the first.
    """
    _check_pos_int(k, "k")
    _check_pos_int(alpha, "alpha")
    return float(alpha) ** -(2 * k - 1)


def _same_child_fraction(
    m: int, alpha: int, trials: int, seed: int, n_vars: int | None
) -> float:
    """Fraction of trials in which variables ``0..m-1`` all land in the same child.

    Without ``n_vars`` each variable's child is drawn independently and
    uniformly.  With ``n_vars`` each trial draws a uniform random permutation
    of the ``n_vars`` variables and puts the variable at position ``p`` into
    child ``p % alpha`` (a balanced partition, child sizes differing by at
    most one).  Vectorised and chunked over trials.
    """
    gen = torch.Generator().manual_seed(int(seed))
    width = m if n_vars is None else n_vars
    chunk = max(1, _MC_CHUNK_ELEMS // width)
    hits = 0
    done = 0
    while done < trials:
        size = min(chunk, trials - done)
        if n_vars is None:
            children = torch.randint(0, alpha, (size, m), generator=gen)
        else:
            # argsort of iid uniforms = uniform random permutation per row.  The
            # inverse of a uniform permutation is uniform too, so the first m
            # entries are the (distinct) positions of variables 0..m-1.
            perm = torch.rand((size, n_vars), generator=gen, dtype=torch.float64).argsort(dim=1)
            children = perm[:, :m] % alpha
        hits += int((children == children[:, :1]).all(dim=1).sum().item())
        done += size
    return hits / trials


def _check_mc_args(
    k: int, alpha: int, trials: int, seed: int, n_vars: int | None, m_factor: int
) -> int:
    """Validate Monte-Carlo arguments; return the number of tracked variables."""
    _check_pos_int(k, "k")
    _check_pos_int(alpha, "alpha")
    _check_pos_int(trials, "trials")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an int, got {type(seed).__name__}")
    m = m_factor * k
    if n_vars is not None:
        _check_pos_int(n_vars, "n_vars")
        if n_vars < m:
            raise ValueError(f"n_vars must be >= {m} (the clause variables), got {n_vars}")
    return m


def clause_coverage_mc(
    k: int,
    alpha: int,
    *,
    n_vars: int | None = None,
    trials: int = 100_000,
    seed: int = 0,
) -> float:
    """Monte-Carlo estimate of the probability that one k-clause lies wholly in one child.

    Without ``n_vars``: every clause variable picks a child independently and
    uniformly (estimates :func:`clause_coverage_theory`).  With ``n_vars``: a
    real balanced random partition of ``n_vars`` variables into ``alpha``
    children (random permutation, position ``p`` -> child ``p % alpha``) with
    the clause on variables ``0..k-1``.  The balanced probability is slightly
    *below* the independent formula (e.g. for child size ``s = n/alpha`` it is
    ``prod_{i=1}^{k-1} (s - i) / (n - i)``), approaching it as ``n`` grows.

    Deterministic given ``seed``.  Standard error ``≈ sqrt(p (1 - p) / trials)``.
    """
    m = _check_mc_args(k, alpha, trials, seed, n_vars, 1)
    return _same_child_fraction(m, alpha, trials, seed, n_vars)


def collision_probability_mc(
    k: int,
    alpha: int,
    *,
    n_vars: int | None = None,
    trials: int = 100_000,
    seed: int = 0,
) -> float:
    """Monte-Carlo estimate of the probability that two disjoint k-clauses share one child.

    The two clauses are on variables ``0..k-1`` and ``k..2k-1``; a trial is a
    hit when all ``2k`` variables land in the same child.  Without
    ``n_vars`` each variable picks a child independently and uniformly
    (estimates :func:`collision_probability_theory`, the large-``n``
    approximation of a balanced split); with ``n_vars`` a real balanced random
    partition of ``n_vars`` variables is used, as in :func:`clause_coverage_mc`.

    Deterministic given ``seed``.
    """
    m = _check_mc_args(k, alpha, trials, seed, n_vars, 2)
    return _same_child_fraction(m, alpha, trials, seed, n_vars)


# --------------------------------------------------------------------------
# clause-level readings (symbolic tasks whose clause -> input map is known)
# --------------------------------------------------------------------------


def _check_clause_list(
    clauses: Sequence[Sequence[int]], inputs: int, signs: Sequence[Sequence[bool]] | None = None
) -> list[list[int]]:
    """Validate clauses (non-empty lists of input indices in ``[0, inputs)``) and optional signs."""
    if isinstance(clauses, Tensor):
        clauses = clauses.tolist()
    if not isinstance(clauses, Sequence) or isinstance(clauses, str) or len(clauses) == 0:
        raise ValueError("clauses must be a non-empty list of lists of input indices")
    checked = []
    for c, clause in enumerate(clauses):
        if isinstance(clause, Tensor):
            clause = clause.tolist()
        if not isinstance(clause, Sequence) or isinstance(clause, str) or len(clause) == 0:
            raise ValueError(f"clauses[{c}] must be a non-empty list of input indices")
        for j in clause:
            if isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < inputs:
                raise ValueError(f"clauses[{c}] holds {j!r}; input indices must be ints in [0, {inputs})")
        checked.append(list(clause))
    if signs is not None:
        if len(signs) != len(checked) or any(len(s) != len(c) for s, c in zip(signs, checked)):
            raise ValueError("signs must give one bool per literal of every clause (same shape as clauses)")
    return checked


def clause_relevant_inputs(clauses: Sequence[Sequence[int]]) -> list[int]:
    """Sorted input indices used by at least one clause (the distractors are the rest)."""
    return sorted({int(j) for clause in clauses for j in clause})


def clause_embeddings(
    weight: Tensor, clauses: Sequence[Sequence[int]], signs: Sequence[Sequence[bool]] | None = None
) -> Tensor:
    """Each clause's embedding in hidden space, shape ``(hidden, clauses)`` (float64).

    Column ``c`` is ``Σ_j s_j W[:, j]`` over the literals ``j`` of clause ``c``, with ``s_j = +1``
    for a positive literal and ``-1`` for a negated one (all ``+1`` without ``signs``): the
    pre-activation contributed by the clause's satisfying pattern under ±1 inputs.
    """
    w = _check_weight(weight)
    checked = _check_clause_list(clauses, w.shape[1], signs)
    columns = []
    for c, clause in enumerate(checked):
        sign = torch.tensor([1.0 if signs is None or signs[c][i] else -1.0 for i in range(len(clause))],
                            dtype=torch.float64)
        columns.append(w[:, clause] @ sign)
    return torch.stack(columns, dim=1)


def clause_interference(
    weight: Tensor, clauses: Sequence[Sequence[int]], signs: Sequence[Sequence[bool]] | None = None
) -> dict[str, float]:
    """Interference metrics read at the level of clauses and of clause-relevant inputs.

    Returns
    ``clause_capacity_mean``: mean :func:`feature_capacity` of the clause embeddings
    (:func:`clause_embeddings`), i.e. the features are the clauses;
    ``clause_cosine_abs_mean``: mean ``|cos|`` between hidden units' rows of the clause-embedding
    matrix (units compared by how they read the clauses);
    ``relevant_capacity_mean`` and ``relevant_cosine_abs_mean``: the input-level metrics on the
    clause-relevant inputs only (distractor columns removed before computing them).
    """
    w = _check_weight(weight)
    checked = _check_clause_list(clauses, w.shape[1], signs)
    embedded = clause_embeddings(w, checked, signs)
    relevant = w[:, clause_relevant_inputs(checked)]
    return {
        "clause_capacity_mean": float(feature_capacity(embedded).mean()),
        "clause_cosine_abs_mean": mean_pairwise_cosine(embedded, absolute=True),
        "relevant_capacity_mean": float(feature_capacity(relevant).mean()),
        "relevant_cosine_abs_mean": mean_pairwise_cosine(relevant, absolute=True),
    }


def whole_clause_cover(weight: Tensor, clauses: Sequence[Sequence[int]]) -> dict[str, float]:
    """How many hidden units still see a whole clause (by the non-zero pattern of ``weight``).

    A unit *holds* clause ``c`` when its incoming weights to every input of ``c`` are non-zero.
    Returns ``units_whole``: the fraction of units (non-zero rows) holding at least one whole
    clause; ``clauses_held``: the fraction of clauses held by at least one unit;
    ``pairs_held``: the fraction of (unit, clause) pairs held, over non-zero rows. A dense layer
    gives 1 for all three; FPE children lose clauses whose inputs went to their siblings.
    """
    w = _check_weight(weight)
    checked = _check_clause_list(clauses, w.shape[1])
    support = w != 0
    live = support.any(dim=1)
    if not bool(live.any()):
        return {"units_whole": 0.0, "clauses_held": 0.0, "pairs_held": 0.0}
    held = torch.stack([support[:, clause].all(dim=1) for clause in checked], dim=1)[live]  # (units, clauses)
    return {
        "units_whole": float(held.any(dim=1).double().mean()),
        "clauses_held": float(held.any(dim=0).double().mean()),
        "pairs_held": float(held.double().mean()),
    }


def _ranks(values: Tensor) -> Tensor:
    """Ranks 1..n with ties given their average rank."""
    order = torch.argsort(values, stable=True)
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(1, len(values) + 1, dtype=values.dtype)
    for value in torch.unique(values):
        tied = values == value
        if int(tied.sum()) > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def pearson_r(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson correlation of two equal-length sequences (NaN when either is constant)."""
    xt, yt = _to_1d_float64(x, "x"), _to_1d_float64(y, "y")
    if xt.shape[0] != yt.shape[0] or xt.shape[0] < 2:
        raise ValueError(f"x and y need the same length >= 2, got {xt.shape[0]} and {yt.shape[0]}")
    dx, dy = xt - xt.mean(), yt - yt.mean()
    denominator = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    return float("nan") if denominator == 0 else float((dx * dy).sum()) / denominator


def spearman_r(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman rank correlation (Pearson on average ranks; NaN when either is constant)."""
    xt, yt = _to_1d_float64(x, "x"), _to_1d_float64(y, "y")
    if xt.shape[0] != yt.shape[0] or xt.shape[0] < 2:
        raise ValueError(f"x and y need the same length >= 2, got {xt.shape[0]} and {yt.shape[0]}")
    return pearson_r(_ranks(xt), _ranks(yt))
