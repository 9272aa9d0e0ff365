"""Split strategies: which of a parent's inputs each of its α children receives.

Every strategy returns boolean child masks of shape ``(parents, alpha, inputs)``: entry
``[i, k, j]`` says whether child ``k`` of parent ``i`` keeps input ``j``. The FPE strategies
(``random``, ``clause``, ``feature``, ``contiguous``, a user assignment) give masks that are disjoint
and cover every input; the ``overlap`` control does not. ``static_sparse`` and ``dropconnect`` are
layer-level controls handled in :mod:`torchfpe.core.expand`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .validation import InvalidParameterError

#: Strategies whose children partition the parent's inputs (disjoint and covering).
PARTITION_SPLITS = ("random", "clause", "feature", "contiguous")
#: Non-FPE controls the paper and its reviewers compare against.
CONTROL_SPLITS = ("overlap", "static_sparse", "dropconnect")
SPLITS = PARTITION_SPLITS + CONTROL_SPLITS


@dataclass(frozen=True)
class SplitContext:
    """What a split strategy may look at for one layer."""

    layer: str
    weight: Tensor  # (parents, inputs): the parent's effective incoming weight, inputs already expanded
    alpha: int
    generator: torch.Generator
    clauses: Sequence[Sequence[int]] | None = None  # in this layer's (expanded) input index space


SplitFn = Callable[[SplitContext], Tensor]


def assignment_to_masks(assignment: Tensor, alpha: int) -> Tensor:
    """Turn child ids ``(parents, inputs)`` with values in ``[0, alpha)`` into masks ``(parents, alpha, inputs)``."""
    return torch.nn.functional.one_hot(assignment.long(), alpha).permute(0, 2, 1).bool()


def balanced_positions(inputs: int, alpha: int) -> Tensor:
    """Child id of each position in a balanced deal: position p goes to child p mod alpha."""
    return torch.arange(inputs) % alpha


def random_split(ctx: SplitContext) -> Tensor:
    """A balanced random partition per parent: group sizes differ by at most one, independent per parent."""
    parents, inputs = ctx.weight.shape
    order = torch.argsort(torch.rand(parents, inputs, generator=ctx.generator), dim=1)
    assignment = torch.empty(parents, inputs, dtype=torch.long)
    assignment.scatter_(1, order, balanced_positions(inputs, ctx.alpha).expand(parents, inputs).contiguous())
    return assignment_to_masks(assignment, ctx.alpha)


def contiguous_split(ctx: SplitContext) -> Tensor:
    """Index-order chunks: input j goes to child floor(j * alpha / inputs), the same for every parent."""
    parents, inputs = ctx.weight.shape
    assignment = (torch.arange(inputs) * ctx.alpha) // inputs
    return assignment_to_masks(assignment.expand(parents, inputs), ctx.alpha)


def clause_split(ctx: SplitContext) -> Tensor:
    """Whole clauses per child.

    Per parent, the clauses are shuffled (seeded) and each is dealt to the child with the fewest
    inputs so far (ties: lowest child index), so children get balanced numbers of inputs. An input
    used by several clauses goes with the first of its clauses to be dealt (later clauses that share
    it lose it in the other children). Inputs in no clause are dealt one by one, in index order, to
    the child with the fewest inputs. Children are disjoint and cover every input.
    """
    if ctx.clauses is None:
        raise ValueError("split='clause' needs clauses=[[input indices of clause 0], ...]")
    parents, inputs = ctx.weight.shape
    rows = []
    for _ in range(parents):
        row = [-1] * inputs
        sizes = [0] * ctx.alpha
        for clause_index in torch.randperm(len(ctx.clauses), generator=ctx.generator).tolist():
            members = [j for j in ctx.clauses[clause_index] if row[j] < 0]
            child = min(range(ctx.alpha), key=lambda k: (sizes[k], k))
            for j in members:
                row[j] = child
            sizes[child] += len(members)
        for j in range(inputs):
            if row[j] < 0:
                child = min(range(ctx.alpha), key=lambda k: (sizes[k], k))
                row[j] = child
                sizes[child] += 1
        rows.append(row)
    assignment = torch.tensor(rows, dtype=torch.long)
    return assignment_to_masks(assignment, ctx.alpha)


def _kmeans(points: Tensor, clusters: int, generator: torch.Generator, iterations: int = 50) -> Tensor:
    """Plain k-means with k-means++ seeding; returns centres ``(clusters, dim)``."""
    first = int(torch.randint(points.shape[0], (1,), generator=generator))
    centres = [points[first]]
    for _ in range(1, clusters):
        dist = torch.cdist(points, torch.stack(centres)).min(dim=1).values ** 2
        if float(dist.sum()) <= 0:
            index = int(torch.randint(points.shape[0], (1,), generator=generator))
        else:
            index = int(torch.multinomial(dist / dist.sum(), 1, generator=generator))
        centres.append(points[index])
    centre_tensor = torch.stack(centres)
    for _ in range(iterations):
        labels = torch.cdist(points, centre_tensor).argmin(dim=1)
        updated = centre_tensor.clone()
        for k in range(clusters):
            chosen = points[labels == k]
            if len(chosen):
                updated[k] = chosen.mean(dim=0)
        if torch.allclose(updated, centre_tensor):
            break
        centre_tensor = updated
    return centre_tensor


def balanced_cluster_assignment(points: Tensor, clusters: int, generator: torch.Generator) -> Tensor:
    """Cluster ``points`` (rows) into ``clusters`` groups whose sizes differ by at most one.

    k-means finds centres; then (point, centre) pairs are taken in order of increasing distance and a
    point joins a centre while that centre has room (capacity floor or ceil of n / clusters).
    """
    n = points.shape[0]
    centres = _kmeans(points, clusters, generator)
    distances = torch.cdist(points, centres)
    capacity = torch.bincount(balanced_positions(n, clusters), minlength=clusters).tolist()
    assignment = torch.full((n,), -1, dtype=torch.long)
    for flat in torch.argsort(distances.flatten(), stable=True).tolist():
        point, cluster = divmod(flat, clusters)
        if assignment[point] < 0 and capacity[cluster] > 0:
            assignment[point] = cluster
            capacity[cluster] -= 1
    return assignment


def feature_split(ctx: SplitContext) -> Tensor:
    """Cluster the inputs by the layer's Gram matrix G = WᵀW, then give each child one balanced cluster.

    Each input j is described by its normalised row of G (how it co-varies with every other input in
    the trained layer). Balanced k-means with ``alpha`` clusters gives groups of equal size (±1); the
    same input partition is used for every parent (the structure lives in input space).
    """
    weight = ctx.weight.detach().double()
    gram = weight.T @ weight
    points = gram / gram.norm(dim=1, keepdim=True).clamp_min(1e-12)
    assignment = balanced_cluster_assignment(points, ctx.alpha, ctx.generator)
    parents = ctx.weight.shape[0]
    return assignment_to_masks(assignment.expand(parents, -1), ctx.alpha)


def overlap_split(ctx: SplitContext) -> Tensor:
    """Control, not FPE: each child independently draws ceil(inputs / alpha) random inputs.

    Same number of children and of inputs per child as a disjoint split, but children of one parent
    overlap and some inputs may be left out.
    """
    parents, inputs = ctx.weight.shape
    size = -(-inputs // ctx.alpha)
    scores = torch.rand(parents, ctx.alpha, inputs, generator=ctx.generator)
    chosen = torch.topk(scores, size, dim=2).indices
    masks = torch.zeros(parents, ctx.alpha, inputs, dtype=torch.bool)
    masks.scatter_(2, chosen, True)
    return masks


def user_split(assignment: Tensor | Callable, ctx: SplitContext) -> Tensor:
    """A user-supplied assignment: child ids ``(parents, inputs)`` or ``(inputs,)``, or a callable.

    A callable is called as ``fn(weight, alpha, generator)`` and returns child ids as above or
    boolean masks ``(parents, alpha, inputs)``.
    """
    parents, inputs = ctx.weight.shape
    result = assignment(ctx.weight.detach().clone(), ctx.alpha, ctx.generator) if callable(assignment) else assignment
    if not isinstance(result, Tensor):
        result = torch.as_tensor(result)
    if result.dtype == torch.bool:
        if tuple(result.shape) != (parents, ctx.alpha, inputs):
            raise ValueError(
                f"split for layer {ctx.layer!r}: boolean masks must have shape "
                f"{(parents, ctx.alpha, inputs)}, got {tuple(result.shape)}"
            )
        per_input = result.sum(dim=1)
        if not bool((per_input == 1).all()):
            parent, j = (int(v) for v in torch.nonzero(per_input != 1)[0])
            raise InvalidParameterError(
                f"split for layer {ctx.layer!r}: the masks must partition each parent's inputs (every input in "
                f"exactly one child), but input {j} of parent {parent} is in {int(per_input[parent, j])} children; "
                "use split='overlap' for the overlapping control")
        return result.cpu()
    if result.is_floating_point() or result.is_complex():
        raise TypeError(f"split for layer {ctx.layer!r}: child ids must be an integer tensor, got {result.dtype}")
    if result.dim() == 1:
        result = result.expand(parents, -1)
    if tuple(result.shape) != (parents, inputs):
        raise ValueError(
            f"split for layer {ctx.layer!r}: child ids must have shape {(parents, inputs)} or {(inputs,)}, "
            f"got {tuple(result.shape)}"
        )
    if int(result.min()) < 0 or int(result.max()) >= ctx.alpha:
        raise ValueError(f"split for layer {ctx.layer!r}: child ids must lie in [0, {ctx.alpha}), got "
                         f"[{int(result.min())}, {int(result.max())}]")
    return assignment_to_masks(result.cpu(), ctx.alpha)


BUILTIN_SPLITS: dict[str, SplitFn] = {
    "random": random_split,
    "clause": clause_split,
    "feature": feature_split,
    "contiguous": contiguous_split,
    "overlap": overlap_split,
}


def child_masks(split: str | Tensor | Callable, ctx: SplitContext) -> Tensor:
    """Masks ``(parents, alpha, inputs)`` for ``split`` (a built-in name, child ids, or a callable)."""
    if isinstance(split, str):
        return BUILTIN_SPLITS[split](ctx)
    return user_split(split, ctx)
