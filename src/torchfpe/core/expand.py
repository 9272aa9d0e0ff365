"""``expand()``: Fixed Parameter Expansion of any PyTorch model's hidden layers.

A *pair* is (incoming layer, outgoing layer): two ``nn.Linear`` modules with only element-wise
modules between them. Expanding a pair replaces each of the incoming layer's ``h`` units (parents) by
``alpha`` children at indices ``alpha * i + k``. Child k's incoming row is the parent's row under
child k's mask; the parent's outgoing column is copied to every child. Then the budget step prunes
the smallest-magnitude weights until the model's trainable positions (entries no mask fixes at zero,
:func:`~torchfpe.core.budget.trainable_positions`) are back at its parent's: positions, not current
values, so a bias that starts at 0 counts before and after training alike.

``expand`` runs in phases over one :class:`LayerPlan` per touched layer: *prepare* (every argument
checked, targets resolved in :mod:`~torchfpe.core.targets`, the splits looked up in the registry of
:mod:`~torchfpe.core.splits`), *split* (child masks per incoming layer), *copy* (rows per child,
columns per input child, biases by policy), *budget*, and *build* (the layers and the report). What
varies between splits lives with the split (its traits and hooks), not here.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .budget import BUDGETS, nonzero_parameters, prune_smallest_, trainable_positions
from .config import ATTRIBUTE, FPEConfig, recorded
from .layouts.base import LAYOUTS, ExpandedLayer, effective_parameters, expanded_layers, layout_of
from .layouts.metadata import (LAYOUT_KEY, LEGACY_KEY, check_stored, encode_layout_state, is_layout_key,
                               saved_layout_state)
from .layouts.masked import MaskedLinear
from .splits import SPLITS, Split, get_split, user_split
from .targets import as_linear, check_not_shared, features, is_conv1d, resolve_pairs, set_submodule
from .validation import (SEED, Interval, InvalidParameterError, Options, Sequences, check_param, invalid,
                         plain_number, validate_params)

BIAS_POLICIES = ("copy", "divide", "zero")

SplitSpec = str | Tensor | Callable


# ----------------------------------------------------------------------------------------- report
@dataclass
class LayerChange:
    """Non-zero counts of one expanded layer (weights and bias together)."""

    name: str
    role: str  # "in" (units split), "out" (columns copied) or "in+out"
    shape_before: tuple[int, int]
    shape_after: tuple[int, int]
    nonzero_before: int
    nonzero_split: int  # after splitting/copying, before the budget
    nonzero_after: int
    frozen: bool = False  # the parent layer had requires_grad=False; the expanded layer keeps it


@dataclass
class ExpansionReport:
    """What ``expand`` did: per-layer non-zero counts before, after splitting, and after the budget.

    ``model_positions_before``/``_after`` are the trainable positions the budget holds (see
    :func:`torchfpe.trainable_positions`; exact-zero weights of an expanded layer's parent are read as
    pruned, so they are not in ``_before``); ``model_nonzero_before``/``_after`` the current non-zero values.
    """

    alpha: int
    split: str
    budget: str
    bias: str
    seed: int
    layers: list[LayerChange] = field(default_factory=list)
    model_nonzero_before: int = 0
    model_nonzero_after: int = 0
    model_positions_before: int = 0
    model_positions_after: int = 0
    config: FPEConfig | None = None  # the arguments, as expand records them on the model

    @property
    def excess(self) -> int:
        """Trainable positions above the parent's (0 under any pruning budget)."""
        return self.model_positions_after - self.model_positions_before

    def rows(self) -> list[dict]:
        return [vars(change).copy() for change in self.layers]

    def to_dict(self) -> dict:
        return {
            "alpha": self.alpha, "split": self.split, "budget": self.budget, "bias": self.bias, "seed": self.seed,
            "model_nonzero_before": self.model_nonzero_before, "model_nonzero_after": self.model_nonzero_after,
            "model_positions_before": self.model_positions_before,
            "model_positions_after": self.model_positions_after, "excess": self.excess, "layers": self.rows(),
        }

    def __str__(self) -> str:
        header = ["layer", "role", "shape before", "shape after", "non-zero before", "after split", "after budget"]
        body = [
            [c.name, c.role, "x".join(map(str, c.shape_before)), "x".join(map(str, c.shape_after)),
             str(c.nonzero_before), str(c.nonzero_split), str(c.nonzero_after)]
            for c in self.layers
        ]
        body.append(["model", "", "", "", str(self.model_nonzero_before), "", str(self.model_nonzero_after)])
        body.append(["positions", "", "", "", str(self.model_positions_before), "", str(self.model_positions_after)])
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
        line = lambda row: "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()  # noqa: E731
        title = (f"FPE alpha={self.alpha} split={self.split} budget={self.budget} bias={self.bias} "
                 f"seed={self.seed} excess={self.excess}")
        frozen = [c.name for c in self.layers if c.frozen]
        if frozen:
            title += f" frozen={','.join(frozen)}"
        return "\n".join([title, line(header), line(["-" * w for w in widths]), *map(line, body)])


# ------------------------------------------------------------------------------------------ the plan
@dataclass
class LayerPlan:
    """What ``expand`` does to one layer; the phases fill it in (see :func:`expand`)."""

    name: str
    parent: nn.Module  # the parent layer (a GPT-2 Conv1D read as nn.Linear)
    role: str  # "in" (its units split), "out" (its columns copied) or "in+out"
    rows: int  # children per unit: alpha where its units are split, else 1
    cols: int  # copies per input column: alpha where it reads an expanded layer's children, else 1
    split: Split | None  # how its units split; None for an outgoing-only layer
    leader: str | None = None  # a gated companion takes the child masks drawn for this layer
    # filled by the copy phase
    weight: Tensor | None = None
    mask: Tensor | None = None
    bias: Tensor | None = None
    bias_mask: Tensor | None = None
    nonzero_before: int = 0  # weights and bias of the parent
    weight_before: int = 0  # weights only
    nonzero_split: int = 0  # after splitting and copying, before the budget
    positions_before: int = 0  # what the budget counts of the parent: live entries of requires_grad tensors
    positions_split: int = 0
    read_as_pruned: int = 0  # the parent's trainable zero weights, which expand masks (not in positions_before)

    @property
    def weight_trainable(self) -> bool:
        """False for a frozen weight: the budget neither prunes it nor counts it (as trainable_positions)."""
        return bool(self.parent.weight.requires_grad)

    def trainable_positions(self) -> int:
        """Entries of the current weight and bias masks, of the trainable ones (values do not matter)."""
        weight = int(torch.count_nonzero(self.mask)) if self.weight_trainable else 0
        bias = self.parent.bias
        live_bias = bias is not None and bias.requires_grad and self.bias_mask is not None
        return weight + (int(torch.count_nonzero(self.bias_mask)) if live_bias else 0)


#: Each parameter of ``expand`` and its constraint, declared once (see :mod:`torchfpe.core.validation`).
EXPAND_PARAMETERS = {
    "model": [nn.Module],
    "alpha": [Interval(int, 2)],
    "seed": [SEED, None],
    "layers": [Sequences((str,), 1, "layer path"), None],
    "bias": [Options(BIAS_POLICIES)],
    "budget": [Options(BUDGETS)],
    "dropconnect_p": [Interval(float, 0.0, 1.0, closed="left"), None],
    "return_report": [bool],
}


def _resolve_splits(split, incoming_names: list[str]) -> dict[str, Split]:
    """The :class:`Split` of every incoming layer (a name, child ids, a callable, or a dict of these)."""
    def resolve(spec, where: str) -> Split:
        if isinstance(spec, str):
            return get_split(spec, where)
        if isinstance(spec, Tensor) or callable(spec):
            return user_split(spec)
        raise InvalidParameterError(f"{where}: split must be a registered name ({', '.join(SPLITS)}), a tensor of "
                                    f"child ids or a callable; got {type(spec).__name__}")

    if isinstance(split, Mapping):
        missing = [name for name in incoming_names if name not in split]
        extra = [name for name in split if name not in incoming_names]
        if missing or extra:
            raise InvalidParameterError(f"split mapping must name exactly the expanded layers {incoming_names}; "
                                        f"missing {missing}, unknown {extra}")
        splits = {name: resolve(split[name], f"split[{name!r}]") for name in incoming_names}
    else:
        one = resolve(split, "split")
        splits = {name: one for name in incoming_names}
    for whole in {s.name: s for s in splits.values() if s.whole_model}.values():
        if any(s is not whole for s in splits.values()):
            raise InvalidParameterError(f"split={whole.name!r} applies to the whole model; it cannot be mixed with "
                                        "other splits")
    return splits


def _plan(model: nn.Module, alpha: int, splits: Mapping[str, Split], pairs: Sequence[tuple[str, str]],
          companions: Mapping[str, str]) -> list[LayerPlan]:
    """One plan per touched layer, in the order of the pairs (incoming, its gated companions, outgoing)."""
    widens = all(s.widens for s in splits.values())
    order: list[str] = []
    for incoming, outgoing in pairs:
        group = [incoming, *[up for up, gate in companions.items() if gate == incoming]]
        order.extend(name for name in [*group, *([outgoing] if widens else [])] if name not in order)
    incoming_names = {incoming for incoming, _ in pairs}
    outgoing_names = {outgoing for _, outgoing in pairs} if widens else set()
    source = _linearised(model, order)  # GPT-2 Conv1D read as nn.Linear (weights transposed)
    plans = []
    for name in order:
        leader = companions.get(name)
        split_in = name in incoming_names or leader is not None
        reads_children = name in outgoing_names
        role = "in+out" if split_in and reads_children else ("in" if split_in else "out")
        plans.append(LayerPlan(
            name=name, parent=source[name], role=role, rows=alpha if split_in and widens else 1,
            cols=alpha if reads_children else 1, split=splits[leader or name] if split_in else None,
            leader=leader))
    return plans


def _check_data(data, plans: Sequence[LayerPlan]) -> Tensor | None:
    users = [p for p in plans if p.split is not None and "data" in p.split.needs and p.leader is None]
    if data is None:
        if users:
            raise InvalidParameterError(f"split={users[0].split.name!r} needs data=<examples of layer "
                                        f"{users[0].name!r}'s inputs, (examples, inputs)>")
        return None
    if not users:
        raise InvalidParameterError("the 'data' parameter of expand is only read by splits that need data "
                                    f"({', '.join(n for n, s in SPLITS.items() if 'data' in s.needs) or 'none registered'}); this "
                                    "expansion uses none, so pass data=None")
    if not isinstance(data, Tensor) or data.dim() != 2 or not data.is_floating_point() or len(data) < 2:
        raise invalid("data", "expand", "a float tensor (examples, inputs) with at least 2 examples", data)
    if not bool(torch.isfinite(data).all()):
        raise InvalidParameterError("the 'data' parameter of expand holds NaN or inf")
    for plan in users:
        width = features(plan.parent)[0] * plan.cols
        if data.shape[1] != width:
            raise InvalidParameterError(f"data has {data.shape[1]} input features but layer {plan.name!r} "
                                        f"(split {plan.split.name!r}) has {width} inputs")
    return data.detach().cpu()


def _check_options(plans: Sequence[LayerPlan], clauses, dropconnect_p) -> None:
    """Refuse arguments that no split of this expansion reads (they would be silently ignored)."""
    used = {p.split.name: p.split for p in plans if p.split is not None}.values()
    if clauses is not None and not any("clauses" in s.needs for s in used):
        readers = ", ".join(name for name, split in SPLITS.items() if "clauses" in split.needs)
        raise InvalidParameterError(f"the 'clauses' parameter of expand is only read by splits that need clauses "
                                    f"({readers}); split {_split_label(plans)!r} does not, so pass clauses=None")
    if dropconnect_p is not None and not any("dropconnect_p" in s.options for s in used):
        raise InvalidParameterError(f"the 'dropconnect_p' parameter of expand is only read by split='dropconnect'; "
                                    f"split {_split_label(plans)!r} does not, so pass dropconnect_p=None")


def _check_budget(plans: Sequence[LayerPlan], budget: str) -> None:
    if budget != "structured":
        return
    for plan in plans:
        if plan.split is not None and not (plan.split.partition and plan.split.widens and not plan.split.whole_model):
            raise InvalidParameterError(
                f"budget='structured' keeps each layer at its parent's count by giving every child a disjoint share "
                f"of its parent's weights; split {plan.split.name!r} (layer {plan.name!r}) is not a partition, so "
                "use budget='global' with it")


# ------------------------------------------------------------------------------------------ expand
def expand(
    model: nn.Module,
    alpha: int | None = None,
    split: SplitSpec | Mapping[str, SplitSpec] = "random",
    *,
    config: FPEConfig | None = None,
    seed: int | None = None,
    pairs: Sequence[tuple[str, ...]] | None = None,
    clauses: Sequence[Sequence[int]] | None = None,
    data: Tensor | None = None,
    layers: Sequence[str] | None = None,
    bias: str = "copy",
    budget: str = "global",
    dropconnect_p: float | None = None,
    return_report: bool = False,
) -> nn.Module | tuple[nn.Module, ExpansionReport]:
    """Return an expanded copy of ``model``; ``model`` itself is never modified.

    Args:
        model: any module. An ``nn.Sequential`` MLP has its hidden layers found automatically.
        alpha: children per parent unit, an int from 2 to the smallest fan-in being split.
        split: a registered split's name (``torchfpe.SPLITS`` lists them with their traits):
            ``"random"`` (balanced, independent per parent; the default), ``"clause"`` (whole clauses
            per child, shuffled per parent; needs ``clauses``), ``"clause_shared"`` (one clause-to-child
            map for every parent; needs ``clauses``), ``"feature"`` (balanced clusters of the Gram matrix
            WᵀW), ``"correlation"`` (balanced clusters of the inputs' correlation; needs ``data``),
            ``"contiguous"`` (index-order chunks), ``"shared"``/``"grouped"`` (one / a few random
            partitions shared by the parents); or a tensor of child ids ``(parents, inputs)`` or
            ``(inputs,)``; or a callable ``fn(weight, alpha, generator)``; or a dict naming one of these
            per incoming layer. Controls that are not FPE: ``"overlap"`` (children draw overlapping
            inputs), ``"static_sparse"`` (width alpha·h under one random fixed mask per layer with the
            parent's count), ``"dropconnect"`` (parent width, DropConnect on incoming weights).
            :func:`torchfpe.register_split` adds one.
        seed: seeds every random choice; ``None`` draws a fresh one (the report records it). Torch's
            global generator is neither read nor advanced.
        pairs: (incoming, outgoing) or gated (gate, up, down) module paths to expand; required for
            models that are not ``nn.Sequential``. Consecutive pairs may share a layer.
        clauses: input indices of each clause, for splits that need clauses.
        data: examples of the layer's inputs ``(examples, inputs)``, for splits that need data.
        layers: for ``nn.Sequential``, the incoming-layer paths to expand (default: all hidden).
        bias: children's biases: ``"copy"`` the parent's, ``"divide"`` it by alpha, or ``"zero"``
            (children carry no bias: fixed at 0 by the mask).
        budget: ``"global"`` (prune smallest magnitudes across expanded layers' weights),
            ``"outgoing"`` (prune only copied outgoing weights), ``"layerwise"`` (each layer back
            to its own count), ``"structured"`` (each copy of a parent's outgoing column keeps a
            disjoint 1/alpha share of its rows, so every layer keeps its parent's count by
            construction; copied biases are then pruned within their layer), or ``"none"``.
        dropconnect_p: drop probability for ``split="dropconnect"`` (default ``1 - 1/alpha``).
        return_report: also return an :class:`ExpansionReport`.
        config: an :class:`~torchfpe.core.config.FPEConfig` (e.g. read from a saved directory) in
            place of ``alpha`` .. ``dropconnect_p``; ``data`` and ``return_report`` may be given beside it.

    The returned model carries the arguments as ``model.fpe_config`` (an ``FPEConfig``; also
    ``report.config``), which :func:`torchfpe.save_pretrained` writes.
    """
    if config is not None:
        given = {"alpha": alpha, "split": split, "seed": seed, "pairs": pairs, "clauses": clauses, "layers": layers,
                 "bias": bias, "budget": budget, "dropconnect_p": dropconnect_p}
        defaults = {"split": "random", "bias": "copy", "budget": "global"}
        both = [name for name, value in given.items()
                if not (value is None or (isinstance(value, str) and value == defaults.get(name)))]
        if not isinstance(config, FPEConfig):
            raise invalid("config", "expand", "an FPEConfig or None", config)
        if both:
            raise InvalidParameterError(f"expand got config and {both[0]!r}; pass the expansion's arguments either "
                                        "in config or one by one")
        return expand(model, **config.expand_kwargs(), data=data, return_report=return_report)
    if alpha is None:
        raise InvalidParameterError("expand needs alpha (children per parent unit, an int >= 2) or config")
    given_pairs = pairs  # recorded as passed (resolving turns gated triples into pairs and companions)
    # ---------------------------------------------------------------- prepare: every check first
    params = dict(model=model, alpha=alpha, seed=seed, layers=layers, bias=bias, budget=budget,
                  dropconnect_p=dropconnect_p, return_report=return_report)
    validate_params(params, EXPAND_PARAMETERS, "expand")
    alpha, seed = plain_number(alpha), plain_number(seed)
    packed = [name for name, module in expanded_layers(model) if not isinstance(module, MaskedLinear)]
    if packed:
        raise InvalidParameterError(f"layer {packed[0]!r} is in a packed layout; call torchfpe.unpack(model) "
                                    "before expanding it again")
    pairs, companions = resolve_pairs(model, pairs, layers)
    incoming_names = [incoming for incoming, _ in pairs]
    splits = _resolve_splits(split, incoming_names)
    fan_in = {name: features(model.get_submodule(name))[0] for name in incoming_names}
    smallest = min(fan_in.values())
    if alpha > smallest:
        layer = min(fan_in, key=fan_in.get)
        raise invalid("alpha", "expand", f"an int in [2, {smallest}] (at most the fan-in {smallest} of layer "
                      f"{layer!r})", alpha)
    plans = _plan(model, alpha, splits, pairs, companions)
    check_not_shared(model, [plan.name for plan in plans])
    for plan in plans:
        for pname, param in model.get_submodule(plan.name).named_parameters(recurse=False):
            if not torch.isfinite(param.detach()).all():
                raise InvalidParameterError(f"layer {plan.name!r} has NaN or inf in its {pname}; expand needs "
                                            "finite weights")
    _check_options(plans, clauses, dropconnect_p)
    _check_budget(plans, budget)
    clause_layers = {p.name: fan_in[p.name] for p in plans
                     if p.split is not None and "clauses" in p.split.needs and p.leader is None}
    checked_clauses = _check_clauses(clauses, clause_layers) if clause_layers else None
    checked_data = _check_data(data, plans)
    if seed is None:  # a fresh seed (the report records it): torch's global generator is left alone
        seed = torch.Generator().seed() % 2**62
    generator = torch.Generator().manual_seed(seed)
    options = {"alpha": alpha, "dropconnect_p": dropconnect_p}

    # ---------------------------------------------------------------- split: child masks per layer
    for plan in plans:
        plan.weight, plan.bias, plan.mask, plan.bias_mask = _effective(plan.parent)
        # exact-zero weights are read as pruned (see _effective): the budget does not give them back
        plan.read_as_pruned = trainable_positions(model.get_submodule(plan.name)) - plan.trainable_positions()
    structured = budget == "structured"
    drawn: dict[str, Tensor] = {}  # child masks per incoming layer; a gated companion reuses its leader's
    for plan in plans:
        if plan.rows > 1 and plan.leader is None:
            space = 1 if structured else plan.cols  # structured: split the parent's own inputs, one copy each
            needs = {}
            if "clauses" in plan.split.needs:
                needs["clauses"] = [[j * space + c for j in clause for c in range(space)] for clause in checked_clauses]
            if "data" in plan.split.needs:
                needs["data"] = checked_data
            weight = plan.weight.repeat_interleave(space, 1).cpu()
            drawn[plan.name] = plan.split.child_masks(plan.name, weight, alpha, generator, **needs)
    shares = {plan.name: _one_deal(plan.weight.shape[0] * plan.rows, alpha, generator)
              for plan in plans if structured and plan.cols > 1 and plan.weight_trainable}  # frozen: unpruned

    # ---------------------------------------------------------------- copy: rows split, columns copied
    for plan in plans:
        _copy(plan, alpha, bias, drawn.get(plan.leader or plan.name), shares.get(plan.name))
    whole = next((s for s in splits.values() if s.whole_model), None)
    if whole is not None:
        whole.refine_(plans, generator)
    for plan in plans:
        plan.weight = plan.weight * plan.mask
        if plan.bias is not None:
            plan.bias = plan.bias * plan.bias_mask
        plan.nonzero_split = _layer_nonzero(plan.weight, plan.bias)
        plan.positions_split = plan.trainable_positions()

    # ---------------------------------------------------------------- budget
    unmet = _apply_budget(plans, budget)
    if unmet > 0:
        frozen = [plan.name for plan in plans if not plan.weight_trainable]
        warnings.warn(
            f"expand keeps frozen layers ({', '.join(map(repr, frozen))}) unpruned and outside the budget, and "
            f"budget={budget!r} finds no trainable weight to prune for the rest: the expanded model has {unmet} "
            "trainable non-zero parameters above its parent's (unfreeze those layers, or use budget='global')",
            UserWarning, stacklevel=2)

    # ---------------------------------------------------------------- build layers, report
    report = ExpansionReport(alpha=alpha, split=_split_label(plans), budget=budget, bias=bias, seed=seed)
    report.model_nonzero_before = nonzero_parameters(model)
    report.model_positions_before = trainable_positions(model) - sum(plan.read_as_pruned for plan in plans)
    expanded = copy.deepcopy(model)
    for plan in plans:
        with torch.random.fork_rng(devices=[]):  # a layer's constructor initialises from the global generator
            layer = (plan.split or _OUTGOING).build_layer(plan, options)
        parent = plan.parent
        layer.parent_features = getattr(parent, "parent_features", None) or (parent.in_features, parent.out_features)
        layer.train(parent.training)
        frozen = _keep_requires_grad(parent, layer)
        set_submodule(expanded, plan.name, layer)
        report.layers.append(LayerChange(
            name=plan.name, role=plan.role, shape_before=tuple(parent.weight.shape),
            shape_after=tuple(plan.weight.shape), nonzero_before=plan.nonzero_before,
            nonzero_split=plan.nonzero_split, nonzero_after=_layer_nonzero(plan.weight, plan.bias), frozen=frozen))
    report.model_nonzero_after = nonzero_parameters(expanded)
    report.model_positions_after = trainable_positions(expanded)
    report.config = recorded(alpha, split, seed, given_pairs, layers, checked_clauses if clauses is not None else None,
                             bias, budget, dropconnect_p, {name: s.name for name, s in splits.items()})
    setattr(expanded, ATTRIBUTE, report.config)
    if budget != "none" and report.excess < 0:
        warnings.warn(
            f"expand ends {-report.excess} trainable positions below the parent's {report.model_positions_before} "
            f"(bias={bias!r}, budget={budget!r} removes more than the copies add); the budget cannot add "
            "weights back, so the expanded model is smaller than its parent", UserWarning, stacklevel=2)
    return (expanded, report) if return_report else expanded


#: Builds the layers whose units are not split (outgoing-only layers): the masked reference layout.
_OUTGOING = Split("outgoing", lambda weight, alpha, generator: None)


def _copy(plan: LayerPlan, alpha: int, bias: str, masks: Tensor | None, share: Tensor | None) -> None:
    """Rows repeated per child under the child masks, columns copied per child of the inputs, biases by policy.

    ``share`` (budget='structured'): output row r keeps only copy ``share[r]`` of each input column.
    """
    weight, bias_t, weight_mask, bias_mask = plan.weight, plan.bias, plan.mask, plan.bias_mask
    plan.nonzero_before = _layer_nonzero(weight, bias_t)
    plan.weight_before = int(torch.count_nonzero(weight))
    plan.positions_before = plan.trainable_positions()
    rows, cols = plan.rows, plan.cols
    plan.weight = weight.repeat_interleave(rows, 0).repeat_interleave(cols, 1)
    plan.mask = weight_mask.repeat_interleave(rows, 0).repeat_interleave(cols, 1)
    plan.bias = None if bias_t is None else bias_t.repeat_interleave(rows)
    plan.bias_mask = None if bias_mask is None else bias_mask.repeat_interleave(rows)
    if rows > 1 and plan.bias is not None:
        if bias == "divide":
            plan.bias = plan.bias / alpha
        elif bias == "zero":
            plan.bias_mask = torch.zeros_like(plan.bias_mask)
    if masks is not None:
        children = masks.reshape(weight.shape[0] * alpha, -1)
        if children.shape[1] != plan.mask.shape[1]:  # structured: children of the parent's own inputs
            children = children.repeat_interleave(cols, 1)
        plan.mask &= children.to(plan.mask.device)
    if share is not None:
        copy_of_column = torch.arange(plan.mask.shape[1]) % cols
        plan.mask &= (share.view(-1, 1) == copy_of_column.view(1, -1)).to(plan.mask.device)


def _one_deal(items: int, alpha: int, generator: torch.Generator) -> Tensor:
    """A balanced random assignment of ``items`` positions to ``alpha`` groups."""
    order = torch.argsort(torch.rand(items, generator=generator))
    assignment = torch.empty(items, dtype=torch.long)
    assignment[order] = torch.arange(items) % alpha
    return assignment


def _split_label(plans: Sequence[LayerPlan]) -> str:
    labels = {plan.split.name for plan in plans if plan.split is not None}
    return labels.pop() if len(labels) == 1 else "mixed"


def _apply_budget(plans: Sequence[LayerPlan], budget: str) -> int:
    """Prune the smallest-magnitude weights until the trainable positions are back at their parent's.

    Positions are mask entries, not values: a copied bias that is 0 now (an untrained GPT-2's) still
    takes a position, since training will move it. Frozen weights (``requires_grad=False``) stay
    unpruned and outside the count, as in :func:`trainable_positions`: pruning them would change what the user froze, and counting them would
    make the trainable layers pay for them. Returns the excess that no trainable weight could absorb.
    """
    if budget == "none":
        return 0
    trainable = [plan for plan in plans if plan.weight_trainable]
    if budget in ("layerwise", "structured"):  # structured: only the copied biases are left over
        for plan in trainable:
            prune_smallest_({plan.name: plan.weight}, {plan.name: plan.mask},
                            plan.positions_split - plan.positions_before)
        return sum(plan.positions_split - plan.positions_before for plan in plans if not plan.weight_trainable)
    prunable = trainable if budget == "global" else [plan for plan in trainable if plan.cols > 1]
    excess = sum(plan.positions_split - plan.positions_before for plan in plans)
    if not prunable:
        return max(excess, 0)
    prune_smallest_({p.name: p.weight for p in prunable}, {p.name: p.mask for p in prunable}, excess)
    return 0


def _check_clauses(clauses, fan_ins: dict[str, int]) -> list[list[int]]:
    if clauses is None:
        raise InvalidParameterError("split='clause' needs clauses=[[input indices of clause 0], [of clause 1], ...]")
    if isinstance(clauses, Tensor):
        clauses = clauses.tolist()
    if not isinstance(clauses, Sequence) or len(clauses) == 0:
        raise InvalidParameterError("clauses must be a non-empty list of lists of input indices")
    checked = []
    for index, clause in enumerate(clauses):
        if isinstance(clause, Tensor):
            clause = clause.tolist()
        if not isinstance(clause, Sequence) or len(clause) == 0:
            raise InvalidParameterError(f"clauses[{index}] is empty; every clause needs at least one input index")
        for j in clause:
            if isinstance(j, bool) or not isinstance(j, int):
                raise InvalidParameterError(f"clauses[{index}] holds {j!r}; input indices must be ints")
            for layer, fan_in in fan_ins.items():
                if not 0 <= j < fan_in:
                    raise InvalidParameterError(f"clauses[{index}] holds input index {j}, out of range for layer "
                                     f"{layer!r} with {fan_in} inputs (allowed 0..{fan_in - 1})")
        checked.append(sorted(set(clause)))
    return checked


def _effective(module: nn.Module) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
    """(weight, bias, weight mask, bias mask) of a parent layer in any layout, zero where masked.

    Exact zeros in a weight count as pruned (a pruned parent, or entries an earlier expansion masked):
    they are masked, so they stay zero in training and the non-zero count cannot grow. Biases are
    exempt: a zero bias is usually an initialisation, not a pruning, and masking it would freeze it.
    """
    weight, bias, weight_mask, bias_mask = effective_parameters(module)
    weight_mask = weight_mask & (weight != 0)
    weight = weight * weight_mask
    if bias is not None:
        bias = bias * bias_mask
    return weight, bias, weight_mask, bias_mask


def _layer_nonzero(weight: Tensor, bias: Tensor | None) -> int:
    return int(torch.count_nonzero(weight)) + (0 if bias is None else int(torch.count_nonzero(bias)))


def _linearised(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """The named layers, each GPT-2 ``Conv1D`` read as an equivalent ``nn.Linear`` (weights transposed).

    Only those layers are converted: the rest of the model is never copied for this.
    """
    layers = {name: model.get_submodule(name) for name in names}
    return {name: as_linear(layer) if is_conv1d(layer) else layer for name, layer in layers.items()}


def _keep_requires_grad(old: nn.Module, new: nn.Module) -> bool:
    """Give ``new``'s weight and bias the ``requires_grad`` of ``old``'s; True where the layer is frozen."""
    for pname in ("weight", "bias"):
        before, after = getattr(old, pname, None), getattr(new, pname, None)
        if isinstance(before, nn.Parameter) and isinstance(after, nn.Parameter):
            after.requires_grad_(before.requires_grad)
    return not any(p.requires_grad for p in old.parameters(recurse=False))


def _keep_frozen(old: nn.Module, layer: ExpandedLayer) -> None:
    """Freeze the roles of ``layer`` that are frozen in the model's layer ``old`` (the model's flags win)."""
    if isinstance(old, ExpandedLayer):
        frozen = set(old.frozen_roles())
    else:
        frozen = {role for role in ("weight", "bias")
                  if isinstance(getattr(old, role, None), nn.Parameter) and not getattr(old, role).requires_grad}
    for role, param in layer.role_parameters().items():
        if role in frozen:
            param.requires_grad_(False)


def load_expanded(model: nn.Module, state_dict: Mapping[str, Tensor], *, strict: bool = True) -> nn.Module:
    """Load a saved expanded ``state_dict`` into a fresh copy of the *parent* architecture.

    Every layer whose entries in ``state_dict`` describe an expanded layer (its ``fpe_layout`` tensor,
    or in older files its ``_extra_state`` dict, names a layout: ``masked``, ``dropconnect`` or a
    packed one; or, in files saved before layouts were recorded, it has a ``weight_mask``) is rebuilt
    in that layout with the saved shapes, then the whole state is loaded. A DropConnect layer gets its ``p`` back. Checked before anything is
    returned: each such layer exists in ``model`` as an ``nn.Linear``, a GPT-2 ``Conv1D`` (read as the
    linear layer it computes, as ``expand`` reads it) or an expanded layer whose shape fits the saved one
    (the parent's shape recorded at expansion, or the saved shape itself), and no stored weight is
    non-zero outside its mask. Floating tensors take ``model``'s dtype (as ``load_state_dict`` does), so
    a float32 file loads into a float64 parent. ``requires_grad``: a weight or bias is frozen when the
    file records it frozen or the model's layer has it frozen (a frozen parent stays frozen). Every
    value is a torch tensor (``_extra_state`` dicts of older files aside). ``model`` itself is never
    modified; the loaded copy is returned.
    """
    check_param("model", model, [nn.Module], "load_expanded")
    check_param("state_dict", state_dict, [Mapping], "load_expanded")
    for key, value in state_dict.items():
        if not isinstance(value, Tensor) and not str(key).endswith(LEGACY_KEY):
            kind = f"{type(value).__module__}.{type(value).__name__}".removeprefix("builtins.")
            raise InvalidParameterError(f"state_dict key {key!r} holds a {kind}, not a torch tensor; load_expanded "
                                        "reads what model.state_dict() returns (convert arrays with torch.from_numpy)")
    state = dict(state_dict)
    extras: dict[str, dict] = {}
    for key, value in state_dict.items():
        if is_layout_key(key) or key.endswith(LEGACY_KEY):
            suffix = LAYOUT_KEY if is_layout_key(key) else LEGACY_KEY
            path = key[: -len(suffix)].rstrip(".")
            extra = saved_layout_state(state_dict, f"{path}." if path else "")
            if extra is None:
                continue  # another module's own extra state
            if layout_of(extra) is None:
                raise InvalidParameterError(f"state_dict key {key!r} names the layout {extra['layout']!r}, which is not "
                                            f"registered ({', '.join(LAYOUTS)}); import the module that registers it")
            extras[path] = extra
    for key, mask in state_dict.items():
        path = key[: -len("weight_mask")].rstrip(".")
        if key.endswith("weight_mask") and path not in extras and isinstance(mask, Tensor) and mask.dim() == 2:
            # saved before layouts were recorded: a masked layer of unknown parent
            extras[path] = {"layout": "masked", "in_features": mask.shape[1], "out_features": mask.shape[0],
                            "parent_features": None}
            state[f"{path}.{LAYOUT_KEY}" if path else LAYOUT_KEY] = encode_layout_state(extras[path])

    loaded = copy.deepcopy(model)
    for path, extra in extras.items():
        prefix = f"{path}." if path else ""
        tensors = {key[len(prefix):]: value for key, value in state_dict.items()
                   if key.startswith(prefix) and "." not in key[len(prefix):] and isinstance(value, Tensor)}
        where = f"layer {path!r}" if path else "the model's top-level layer"
        try:
            old = loaded.get_submodule(path) if path else loaded
        except AttributeError:
            raise InvalidParameterError(f"state_dict holds an expanded layer {path!r}, which is not a submodule of the model") from None
        if not (isinstance(old, (nn.Linear, ExpandedLayer)) or is_conv1d(old)):
            raise InvalidParameterError(f"state_dict holds an expanded layer for {path!r}, which is a {type(old).__name__}, "
                                        "not nn.Linear (or a GPT-2 Conv1D)")
        saved = (int(extra["in_features"]), int(extra["out_features"]))
        here = (old.in_features, old.out_features) if isinstance(old, ExpandedLayer) else features(old)
        parent = extra.get("parent_features")
        if isinstance(old, ExpandedLayer):
            fits = here == saved
        elif parent is not None:
            fits = here == (int(parent[0]), int(parent[1]))
        else:  # an expansion multiplies a layer's inputs and/or outputs by alpha
            fits = saved[0] % here[0] == 0 and saved[1] % here[1] == 0
        if not fits:
            expected = f"{parent[1]}x{parent[0]}" if parent is not None and not isinstance(old, ExpandedLayer) else \
                f"{saved[1]}x{saved[0]}"
            raise InvalidParameterError(
                f"{where}: the model's layer has {here[0]} inputs and {here[1]} outputs but the state_dict was "
                f"saved from an expansion of a {expected} (outputs x inputs) layer; load it into the parent "
                "architecture it was expanded from"
            )
        check_stored(extra, state_dict, prefix, where)
        try:
            layer = LAYOUTS[extra["layout"]].empty_from_state(extra, tensors, device=old.weight.device
                                                              if isinstance(getattr(old, "weight", None), Tensor)
                                                              else None)
        except (KeyError, ValueError, TypeError, RuntimeError) as error:
            raise InvalidParameterError(f"{where}: the saved {extra['layout']!r} layer is inconsistent: {error}") from None
        _keep_frozen(old, layer)
        dtype = next((t.dtype for t in old.parameters(recurse=False) if t.is_floating_point()), None)
        if dtype is not None:  # as load_state_dict does: the model's dtype, the checkpoint's values
            layer.to(dtype=dtype)
        layer.train(old.training)
        if path:
            set_submodule(loaded, path, layer)
        else:
            loaded = layer
    try:
        loaded.load_state_dict(state, strict=strict)
    except RuntimeError as error:
        raise InvalidParameterError(f"state_dict does not fit the model: {error}") from None
    for path, _ in extras.items():
        layer = loaded.get_submodule(path) if path else loaded
        outside = layer.masked_out_nonzero()
        if outside:
            raise InvalidParameterError(f"layer {path!r}: the state_dict holds {outside} non-zero weights outside the layer's "
                             "mask; an expanded layer keeps masked entries at exactly zero")
    return loaded
