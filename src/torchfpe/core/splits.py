"""Split strategies: which of a parent's inputs each of its α children receives, registered once.

A split is a function with the public split-callable contract::

    fn(weight, alpha, generator, **needs) -> child ids (parents, inputs) or (inputs,), or
                                             boolean masks (parents, alpha, inputs)

``weight`` is a detached copy of the layer's effective incoming weight ``(parents, inputs)`` (inputs
already expanded when the layer reads the children of an earlier expansion), ``generator`` the
expansion's seeded ``torch.Generator``, and ``needs`` the extra inputs the split declared: ``clauses``
(the task's clause map, in this layer's input index space) or ``data`` (examples of the layer's inputs,
``(examples, inputs)``). Entry ``[i, k, j]`` of the masks says whether child ``k`` of parent ``i`` keeps
input ``j``.

:func:`register_split` registers a function with its traits, and every reader (``expand``, ``pack``,
the protocol's variants, the report, the tests) asks :data:`SPLITS` for them instead of keeping a list:

- ``needs``: what ``expand`` must be given for it (``("clauses",)``, ``("data",)``); a task that cannot
  provide them does not offer the split as a variant;
- ``partition``: children are disjoint and cover every input (every FPE split); ``False`` for the
  ``overlap`` control. Masks of a partition split are checked to be one;
- ``control``: not FPE, a comparison the paper or its reviewers ask for (the report labels it);
- ``blocks``: parents share a few input partitions, so ``pack`` stores it as dense blocks at the parent's
  cost (``contiguous``, ``shared``, ``grouped``, ``feature``, ``clause_shared``, ``correlation``);
- ``at_init``: drawn at initialisation and trained from scratch for T1 + T2 epochs instead of being
  applied to the warmed-up model (``static_sparse``);
- ``description``: one line for listings.

Two controls change the expansion itself and are :class:`Split` subclasses with hooks the phases of
``expand`` call: ``static_sparse`` (the widened layers under one random fixed mask per layer at the
parent's count) and ``dropconnect`` (the parent's width with DropConnect on the incoming weights).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .validation import InvalidParameterError

#: What a split may ask ``expand`` for: the task's clause map, or examples of the layer's inputs.
NEEDS = ("clauses", "data")
#: Partitions drawn by ``grouped``: parent i uses partition i mod GROUPED_PARTITIONS.
GROUPED_PARTITIONS = 4

SplitFn = Callable[..., Tensor]


# ------------------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class Split:
    """A registered split strategy: its function and declared traits (see the module docstring)."""

    name: str
    fn: SplitFn
    needs: tuple[str, ...] = ()
    partition: bool = True
    control: bool = False
    blocks: bool = False
    at_init: bool = False
    description: str = ""
    #: Whether its children widen the layer (False: dropconnect keeps the parent's width).
    widens: ClassVar[bool] = True
    #: ``expand`` options only this split reads (others refuse them when given).
    options: ClassVar[tuple[str, ...]] = ()
    #: Applies to every expanded layer of the model at once (cannot be mixed with other splits per layer).
    whole_model: ClassVar[bool] = False

    def child_masks(self, layer: str, weight: Tensor, alpha: int, generator: torch.Generator,
                    **needs) -> Tensor:
        """Masks ``(parents, alpha, inputs)`` of one layer, checked against the contract."""
        missing = [need for need in self.needs if needs.get(need) is None]
        if missing:
            raise InvalidParameterError(f"split={self.name!r} needs {missing[0]}=... (layer {layer!r}); "
                                        f"pass it to expand")
        return checked_masks(self.fn(weight.detach().clone(), alpha, generator, **needs), layer, weight.shape,
                             alpha, partition=self.partition, name=self.name)

    # Hooks of the expansion phases (see torchfpe.core.expand); the defaults are FPE's.
    def refine_(self, plans: Sequence, generator: torch.Generator) -> None:
        """After the copy phase, before the budget: change the layers' masks in place (default: none)."""

    def build_layer(self, plan, options: Mapping):
        """The expanded layer of one plan (default: the masked reference layout)."""
        from .layouts.masked import MaskedLinear

        return MaskedLinear.from_tensors(plan.weight, plan.bias, plan.mask, plan.bias_mask)


class SplitRegistry(Mapping[str, Split]):
    """Name -> :class:`Split`, in registration order (the report's variant order follows it)."""

    def __init__(self) -> None:
        self._splits: dict[str, Split] = {}

    def __getitem__(self, name: str) -> Split:
        return self._splits[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._splits)

    def __len__(self) -> int:
        return len(self._splits)

    def __repr__(self) -> str:
        return f"SplitRegistry({', '.join(self._splits)})"

    def add(self, split: Split, *, replace: bool = False) -> Split:
        if not replace and split.name in self._splits:
            raise InvalidParameterError(f"a split named {split.name!r} is already registered; pass replace=True "
                                        "to register_split to replace it")
        self._splits[split.name] = split
        return split

    def remove(self, name: str) -> None:
        """Forget a split (tests register temporary ones)."""
        self._splits.pop(name, None)

    def where(self, **traits) -> tuple[str, ...]:
        """Names of the splits whose traits equal ``traits``, e.g. ``SPLITS.where(control=False)``; a name that
        is no trait (:data:`TRAITS`) is an error listing them."""
        unknown = [trait for trait in traits if trait not in TRAITS]
        if unknown:
            raise InvalidParameterError(f"the {unknown[0]!r} parameter of SPLITS.where must be a split trait, one of "
                                        f"{', '.join(TRAITS)}; got {unknown[0]}={traits[unknown[0]]!r}")
        return tuple(name for name, split in self._splits.items()
                     if all(getattr(split, trait) == value for trait, value in traits.items()))


#: The traits :meth:`SplitRegistry.where` selects on (the declared ones and the subclass hooks' flags).
TRAITS = ("needs", "partition", "control", "blocks", "at_init", "description", "widens", "options", "whole_model")

#: Every registered split; ``expand``, ``pack``, the protocol and the report read it.
SPLITS = SplitRegistry()

#: Names that are not splits: the protocol's dense baseline and wider dense models.
RESERVED = ("dense",)


def register_split(name: str, fn: SplitFn, *, needs: Sequence[str] = (), partition: bool = True,
                   control: bool = False, blocks: bool = False, at_init: bool = False, description: str = "",
                   replace: bool = False) -> Split:
    """Register ``fn`` (the split-callable contract, see the module docstring) as ``split=name``.

    The split then works in ``torchfpe.expand``, in ``torchfpe.pack`` and as a variant of every study
    whose task provides its ``needs``, in this process. Returns the :class:`Split`.
    """
    from .validation import check_param

    check_param("name", name, [str], "register_split")
    if not name.isidentifier() or name in RESERVED or name.startswith("wide"):
        raise InvalidParameterError(f"the 'name' parameter of register_split must be an identifier that is not "
                                    f"'dense' and does not start with 'wide'; got {name!r}")
    check_param("fn", fn, [callable], "register_split")
    unknown = [need for need in needs if need not in NEEDS] if not isinstance(needs, str) else [needs]
    if unknown:
        raise InvalidParameterError(f"the 'needs' parameter of register_split must be a list drawn from "
                                    f"{', '.join(map(repr, NEEDS))}; got {needs!r}")
    for trait, value in (("partition", partition), ("control", control), ("blocks", blocks),
                         ("at_init", at_init), ("replace", replace)):
        check_param(trait, value, [bool], "register_split")
    check_param("description", description, [str], "register_split")
    _check_signature(fn, tuple(needs))
    return SPLITS.add(Split(name, fn, tuple(needs), partition, control, blocks, at_init, description),
                      replace=replace)


def _check_signature(fn: SplitFn, needs: tuple[str, ...]) -> None:
    """Refuse at registration a function that ``expand`` could not call as ``fn(weight, alpha, generator, **needs)``."""
    import inspect

    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: its first call will tell
        return
    try:
        signature.bind(None, None, None, **{need: None for need in needs})
    except TypeError as error:
        takes = "".join(f", {need}=..." for need in needs)
        raise InvalidParameterError(
            f"the 'fn' parameter of register_split must be callable as fn(weight, alpha, generator{takes}); got "
            f"{getattr(fn, '__name__', type(fn).__name__)}{signature} ({error})") from None


def get_split(name: str, where: str = "split") -> Split:
    """The registered split ``name``; an unknown name is an error listing the registered ones."""
    try:
        return SPLITS[name]
    except KeyError:
        raise InvalidParameterError(f"{where}: unknown split {name!r}; registered splits: {', '.join(SPLITS)} "
                                    "(or a tensor of child ids, or a callable)") from None


# ------------------------------------------------------------------------------------- the contract
def assignment_to_masks(assignment: Tensor, alpha: int) -> Tensor:
    """Turn child ids ``(parents, inputs)`` with values in ``[0, alpha)`` into masks ``(parents, alpha, inputs)``."""
    return torch.nn.functional.one_hot(assignment.long(), alpha).permute(0, 2, 1).bool()


def checked_masks(result, layer: str, shape: Sequence[int], alpha: int, *, partition: bool = True,
                  name: str = "callable") -> Tensor:
    """A split function's result as masks ``(parents, alpha, inputs)``, or an error naming the layer."""
    parents, inputs = int(shape[0]), int(shape[1])
    where = f"split {name!r} for layer {layer!r}"
    if isinstance(result, (str, bytes)) or result is None:
        raise InvalidParameterError(f"{where} returned {type(result).__name__} {result!r}; a split returns child "
                                    f"ids (parents, inputs) or boolean masks (parents, alpha, inputs)")
    if not isinstance(result, Tensor):
        try:
            result = torch.as_tensor(result)
        except (TypeError, ValueError, RuntimeError):
            raise InvalidParameterError(f"{where} returned a {type(result).__name__}, not a tensor of child ids "
                                        "or boolean masks") from None
    if result.dtype == torch.bool:
        if tuple(result.shape) != (parents, alpha, inputs):
            raise InvalidParameterError(f"{where}: boolean masks must have shape {(parents, alpha, inputs)}, got "
                                        f"{tuple(result.shape)}")
        if partition:
            per_input = result.sum(dim=1)
            if not bool((per_input == 1).all()):
                parent, j = (int(v) for v in torch.nonzero(per_input != 1)[0])
                raise InvalidParameterError(
                    f"{where}: the masks must partition each parent's inputs (every input in exactly one child), "
                    f"but input {j} of parent {parent} is in {int(per_input[parent, j])} children; use "
                    "split='overlap' for the overlapping control")
        return result.cpu()
    if result.is_floating_point() or result.is_complex():
        raise InvalidParameterError(f"{where}: child ids must be an integer tensor, got {result.dtype}")
    if result.dim() == 1:
        result = result.expand(parents, -1)
    if tuple(result.shape) != (parents, inputs):
        raise InvalidParameterError(f"{where}: child ids must have shape {(parents, inputs)} or {(inputs,)}, got "
                                    f"{tuple(result.shape)}")
    if result.numel() and (int(result.min()) < 0 or int(result.max()) >= alpha):
        raise InvalidParameterError(f"{where}: child ids must lie in [0, {alpha}), got "
                                    f"[{int(result.min())}, {int(result.max())}]")
    return assignment_to_masks(result.cpu(), alpha)


def user_split(spec: Tensor | Callable) -> Split:
    """A one-off :class:`Split` for a tensor of child ids or an unregistered callable (a partition)."""
    if isinstance(spec, Tensor):
        return Split("assignment", lambda weight, alpha, generator: spec)
    return Split("callable", spec)


# ------------------------------------------------------------------------------------ the built-ins
def balanced_positions(inputs: int, alpha: int) -> Tensor:
    """Child id of each position in a balanced deal: position p goes to child p mod alpha."""
    return torch.arange(inputs) % alpha


def _one_deal(inputs: int, alpha: int, generator: torch.Generator) -> Tensor:
    """One balanced random partition of ``inputs`` positions: child id per input."""
    order = torch.argsort(torch.rand(inputs, generator=generator))
    assignment = torch.empty(inputs, dtype=torch.long)
    assignment[order] = balanced_positions(inputs, alpha)
    return assignment


def random_split(weight: Tensor, alpha: int, generator: torch.Generator) -> Tensor:
    """A balanced random partition per parent: group sizes differ by at most one, independent per parent."""
    parents, inputs = weight.shape
    order = torch.argsort(torch.rand(parents, inputs, generator=generator), dim=1)
    assignment = torch.empty(parents, inputs, dtype=torch.long)
    assignment.scatter_(1, order, balanced_positions(inputs, alpha).expand(parents, inputs).contiguous())
    return assignment


def shared_split(weight: Tensor, alpha: int, generator: torch.Generator) -> Tensor:
    """One balanced random partition per layer, shared by all parents (packs into dense blocks).

    The random split's draw, made once: child k of every parent reads the same inputs, so the packed
    layout does the layer in one batched product at the parent's cost.
    """
    return _one_deal(weight.shape[1], alpha, generator)


def grouped_split(weight: Tensor, alpha: int, generator: torch.Generator) -> Tensor:
    """``GROUPED_PARTITIONS`` balanced random partitions; parent i uses partition i mod that number.

    Between ``random`` (one partition per parent) and ``shared`` (one for all): it packs into that
    many groups of dense blocks. On the Boolean headline it matched ``random``'s accuracy while
    ``shared`` lost most of FPE's gain (docs/benchmarks.md).
    """
    parents, inputs = weight.shape
    deals = [_one_deal(inputs, alpha, generator) for _ in range(GROUPED_PARTITIONS)]
    return torch.stack([deals[i % GROUPED_PARTITIONS] for i in range(parents)])


def contiguous_split(weight: Tensor, alpha: int, generator: torch.Generator) -> Tensor:
    """Index-order chunks: input j goes to child floor(j * alpha / inputs), the same for every parent."""
    inputs = weight.shape[1]
    return (torch.arange(inputs) * alpha) // inputs


def deal_clauses(clauses: Sequence[Sequence[int]], inputs: int, alpha: int, order: Sequence[int]) -> list[int]:
    """Child id of every input when the clauses are dealt in ``order`` (one parent's row).

    Each clause goes whole to the child with the fewest inputs so far (ties: lowest child index), so
    children get balanced numbers of inputs. An input used by several clauses goes with the first of
    its clauses to be dealt (later clauses that share it lose it in the other children). Inputs in no
    clause are then dealt one by one, in index order, to the child with the fewest inputs.
    """
    row = [-1] * inputs
    sizes = [0] * alpha
    for clause_index in order:
        members = [j for j in dict.fromkeys(clauses[clause_index]) if row[j] < 0]
        child = min(range(alpha), key=lambda k: (sizes[k], k))
        for j in members:
            row[j] = child
        sizes[child] += len(members)
    for j in range(inputs):
        if row[j] < 0:
            child = min(range(alpha), key=lambda k: (sizes[k], k))
            row[j] = child
            sizes[child] += 1
    return row


def clause_split(weight: Tensor, alpha: int, generator: torch.Generator, clauses: Sequence[Sequence[int]]) -> Tensor:
    """Whole clauses per child, dealt in a fresh shuffled order for every parent.

    Per parent, the clauses are shuffled (seeded) and dealt by :func:`deal_clauses`, so child k of
    two parents usually holds different clauses. Children are disjoint and cover every input.
    """
    parents, inputs = weight.shape
    rows = [deal_clauses(clauses, inputs, alpha, torch.randperm(len(clauses), generator=generator).tolist())
            for _ in range(parents)]
    return torch.tensor(rows, dtype=torch.long)


def clause_shared_split(weight: Tensor, alpha: int, generator: torch.Generator,
                        clauses: Sequence[Sequence[int]]) -> Tensor:
    """Whole clauses per child with one clause-to-child map shared by all parents.

    The clauses are shuffled once (seeded) and dealt by :func:`deal_clauses`; every parent's child k
    then holds the same clauses (and the same distractor inputs). Disjoint and covering.
    """
    order = torch.randperm(len(clauses), generator=generator).tolist()
    return torch.tensor(deal_clauses(clauses, weight.shape[1], alpha, order), dtype=torch.long)


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


def feature_split(weight: Tensor, alpha: int, generator: torch.Generator) -> Tensor:
    """Cluster the inputs by the layer's Gram matrix G = WᵀW, then give each child one balanced cluster.

    Each input j is described by its normalised row of G (how it co-varies with every other input in
    the trained layer). Balanced k-means with ``alpha`` clusters gives groups of equal size (±1); the
    same input partition is used for every parent (the structure lives in input space).
    """
    weight = weight.double()
    gram = weight.T @ weight
    points = gram / gram.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return balanced_cluster_assignment(points, alpha, generator)


def correlation_split(weight: Tensor, alpha: int, generator: torch.Generator, data: Tensor) -> Tensor:
    """Balanced clusters of the inputs' absolute correlation over ``data`` (examples of the layer's inputs).

    Beyond the paper (its "future work"): each child sees a group of inputs that co-vary in the data;
    balanced k-means on the rows of the absolute correlation matrix; the same partition for every parent.
    """
    x = data.double()
    x = (x - x.mean(dim=0)) / x.std(dim=0).clamp_min(1e-12)
    correlation = (x.T @ x / max(1, len(x) - 1)).abs()
    points = correlation / correlation.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return balanced_cluster_assignment(points, alpha, generator)


def overlap_split(weight: Tensor, alpha: int, generator: torch.Generator) -> Tensor:
    """Control, not FPE: each child independently draws ceil(inputs / alpha) random inputs.

    Same number of children and of inputs per child as a disjoint split, but children of one parent
    overlap and some inputs may be left out.
    """
    parents, inputs = weight.shape
    size = -(-inputs // alpha)
    scores = torch.rand(parents, alpha, inputs, generator=generator)
    chosen = torch.topk(scores, size, dim=2).indices
    masks = torch.zeros(parents, alpha, inputs, dtype=torch.bool)
    masks.scatter_(2, chosen, True)
    return masks


def _every_input(weight: Tensor, alpha: int, generator: torch.Generator) -> Tensor:
    """Every child keeps every input (no split): the widened layer is dense before its own mask is drawn."""
    parents, inputs = weight.shape
    return torch.ones(parents, alpha, inputs, dtype=torch.bool)


class StaticSparseSplit(Split):
    """Control (Golubeva et al. 2021): the width alpha·h under one random fixed mask per layer.

    Each widened layer keeps as many weights as its parent, drawn uniformly at random over the layer
    (no children structure); the budget then prunes copied biases as for any split.
    """

    whole_model = True

    def child_masks(self, layer, weight, alpha, generator, **needs) -> Tensor:
        return _every_input(weight, alpha, generator)  # draws nothing: refine_ draws the layer's mask

    def refine_(self, plans, generator) -> None:
        for plan in plans:
            live = torch.nonzero(plan.mask.reshape(-1).cpu()).squeeze(1)
            chosen = live[torch.randperm(live.numel(), generator=generator)[:plan.weight_before]]
            mask = torch.zeros(plan.mask.numel(), dtype=torch.bool)
            mask[chosen] = True
            plan.mask = mask.reshape(plan.mask.shape).to(plan.mask.device)


class DropConnectSplit(Split):
    """Control: the parent's width and non-zero count, each incoming weight dropped with probability p
    in training (``dropconnect_p``, default ``1 - 1/alpha``)."""

    widens = False
    whole_model = True
    options = ("dropconnect_p",)

    def child_masks(self, layer, weight, alpha, generator, **needs) -> Tensor:
        raise AssertionError("dropconnect draws no children")  # widens=False: expand never asks

    def build_layer(self, plan, options):
        from .layouts.masked import DropConnectLinear

        layer = DropConnectLinear.from_tensors(plan.weight, plan.bias, plan.mask, plan.bias_mask)
        p = options.get("dropconnect_p")
        layer.p = 1.0 - 1.0 / options["alpha"] if p is None else float(p)
        return layer


# Registration order is the report's variant order.
for _split in (
    Split("random", random_split, description="balanced random partition, independent per parent (the default)"),
    Split("clause", clause_split, needs=("clauses",),
          description="whole clauses per child, dealt in a shuffled order per parent"),
    Split("clause_shared", clause_shared_split, needs=("clauses",), blocks=True,
          description="whole clauses per child, one clause-to-child map for every parent"),
    Split("feature", feature_split, blocks=True,
          description="balanced k-means clusters of the Gram matrix WᵀW, one partition for every parent"),
    Split("correlation", correlation_split, needs=("data",), blocks=True,
          description="balanced clusters of the inputs' correlation over training data"),
    Split("contiguous", contiguous_split, blocks=True, description="index-order chunks, the same for every parent"),
    Split("shared", shared_split, blocks=True, description="one balanced random partition for every parent"),
    Split("grouped", grouped_split, blocks=True,
          description=f"{GROUPED_PARTITIONS} balanced random partitions shared by groups of parents"),
    Split("overlap", overlap_split, partition=False, control=True,
          description="control: children draw overlapping random inputs"),
    DropConnectSplit("dropconnect", _every_input, partition=False, control=True,
                     description="control: parent width, DropConnect on the incoming weights"),
    StaticSparseSplit("static_sparse", _every_input, partition=False, control=True, at_init=True,
                      description="control: the expanded width under one random fixed mask per layer, from init"),
):
    SPLITS.add(_split)
del _split
