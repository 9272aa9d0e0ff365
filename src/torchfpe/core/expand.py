"""``expand()``: Fixed Parameter Expansion of any PyTorch model's hidden layers.

A *pair* is (incoming layer, outgoing layer): two ``nn.Linear`` modules with only element-wise
modules between them. Expanding a pair replaces each of the incoming layer's ``h`` units (parents) by
``alpha`` children at indices ``alpha * i + k``. Child k's incoming row is the parent's row under
child k's mask; the parent's outgoing column is copied to every child. Then the budget step prunes
the smallest-magnitude weights until the model's non-zero count equals its parent's.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .budget import BUDGETS, nonzero_parameters, prune_smallest_
from .layouts.base import LAYOUTS, ExpandedLayer, effective_parameters, expanded_layers, layout_of
from .layouts.masked import DropConnectLinear, MaskedLinear
from .splits import CLAUSE_SPLITS, SPLITS, SplitContext, child_masks
from .targets import as_linear, check_not_shared, features, is_conv1d, resolve_pairs, set_submodule
from .validation import (SEED, Interval, InvalidParameterError, Options, Sequences, check_param, invalid,
                         validate_params)

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
    """What ``expand`` did: per-layer non-zero counts before, after splitting, and after the budget."""

    alpha: int
    split: str
    budget: str
    bias: str
    seed: int
    layers: list[LayerChange] = field(default_factory=list)
    model_nonzero_before: int = 0
    model_nonzero_after: int = 0

    @property
    def excess(self) -> int:
        """Non-zero parameters above the parent's (0 under any pruning budget)."""
        return self.model_nonzero_after - self.model_nonzero_before

    def rows(self) -> list[dict]:
        return [vars(change).copy() for change in self.layers]

    def to_dict(self) -> dict:
        return {
            "alpha": self.alpha, "split": self.split, "budget": self.budget, "bias": self.bias, "seed": self.seed,
            "model_nonzero_before": self.model_nonzero_before, "model_nonzero_after": self.model_nonzero_after,
            "excess": self.excess, "layers": self.rows(),
        }

    def __str__(self) -> str:
        header = ["layer", "role", "shape before", "shape after", "non-zero before", "after split", "after budget"]
        body = [
            [c.name, c.role, "x".join(map(str, c.shape_before)), "x".join(map(str, c.shape_after)),
             str(c.nonzero_before), str(c.nonzero_split), str(c.nonzero_after)]
            for c in self.layers
        ]
        body.append(["model", "", "", "", str(self.model_nonzero_before), "", str(self.model_nonzero_after)])
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
        line = lambda row: "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()  # noqa: E731
        title = (f"FPE alpha={self.alpha} split={self.split} budget={self.budget} bias={self.bias} "
                 f"seed={self.seed} excess={self.excess}")
        frozen = [c.name for c in self.layers if c.frozen]
        if frozen:
            title += f" frozen={','.join(frozen)}"
        return "\n".join([title, line(header), line(["-" * w for w in widths]), *map(line, body)])


# ------------------------------------------------------------------------------------ validation
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


def _resolve_splits(split, incoming_names: list[str]) -> dict[str, SplitSpec]:
    def check(spec, where: str):
        if isinstance(spec, str):
            if spec not in SPLITS:
                raise InvalidParameterError(f"{where}: unknown split {spec!r}; allowed: {', '.join(SPLITS)}, "
                                 "a tensor of child ids, or a callable")
        elif not (isinstance(spec, Tensor) or callable(spec)):
            raise InvalidParameterError(f"{where}: split must be a name, a tensor of child ids or a callable, got {type(spec).__name__}")
        return spec

    if isinstance(split, Mapping):
        missing = [name for name in incoming_names if name not in split]
        extra = [name for name in split if name not in incoming_names]
        if missing or extra:
            raise InvalidParameterError(f"split mapping must name exactly the expanded layers {incoming_names}; "
                             f"missing {missing}, unknown {extra}")
        specs = {name: check(split[name], f"split[{name!r}]") for name in incoming_names}
    else:
        specs = {name: check(split, "split") for name in incoming_names}
    for control in ("dropconnect", "static_sparse"):
        uses = [isinstance(spec, str) and spec == control for spec in specs.values()]
        if any(uses) and not all(uses):
            raise InvalidParameterError(f"split={control!r} applies to the whole model; it cannot be mixed with other splits")
    return specs


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


# ------------------------------------------------------------------------------------------ expand
def expand(
    model: nn.Module,
    alpha: int,
    split: SplitSpec | Mapping[str, SplitSpec] = "random",
    *,
    seed: int | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    clauses: Sequence[Sequence[int]] | None = None,
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
        split: ``"random"`` (balanced, independent per parent), ``"clause"`` (whole clauses per
            child, shuffled per parent; needs ``clauses``), ``"clause_shared"`` (one clause-to-child map for
            every parent; needs ``clauses``), ``"feature"`` (balanced clusters of the Gram matrix WᵀW),
            ``"contiguous"`` (index-order chunks), a tensor of child ids ``(parents, inputs)`` or
            ``(inputs,)``, a callable ``fn(weight, alpha, generator)``, or a dict naming one of these
            per incoming layer. Controls that are not FPE: ``"overlap"`` (children draw overlapping
            inputs), ``"static_sparse"`` (width alpha·h under one random fixed mask per layer with the
            parent's count), ``"dropconnect"`` (parent width, DropConnect on incoming weights).
        seed: seeds every random choice; ``None`` draws one from torch's global generator (the
            report records it).
        pairs: (incoming, outgoing) module paths to expand; required for models that are not
            ``nn.Sequential``. Consecutive pairs may share a layer.
        clauses: input indices of each clause, for ``split="clause"``.
        layers: for ``nn.Sequential``, the incoming-layer paths to expand (default: all hidden).
        bias: children's biases: ``"copy"`` the parent's, ``"divide"`` it by alpha, or ``"zero"``
            (children carry no bias: fixed at 0 by the mask).
        budget: ``"global"`` (prune smallest magnitudes across expanded layers' weights),
            ``"outgoing"`` (prune only copied outgoing weights), ``"layerwise"`` (each layer back
            to its own count), or ``"none"``.
        dropconnect_p: drop probability for ``split="dropconnect"`` (default ``1 - 1/alpha``).
        return_report: also return an :class:`ExpansionReport`.
    """
    params = dict(model=model, alpha=alpha, seed=seed, layers=layers, bias=bias, budget=budget,
                  dropconnect_p=dropconnect_p, return_report=return_report)
    validate_params(params, EXPAND_PARAMETERS, "expand")
    packed = [name for name, module in expanded_layers(model) if not isinstance(module, MaskedLinear)]
    if packed:
        raise InvalidParameterError(f"layer {packed[0]!r} is in a packed layout; call torchfpe.unpack(model) "
                                    "before expanding it again")
    pairs, companions = resolve_pairs(model, pairs, layers)
    incoming_names = [incoming for incoming, _ in pairs]
    specs = _resolve_splits(split, incoming_names)
    leader_of = {**{name: name for name in incoming_names}, **companions}

    fan_in = {name: features(model.get_submodule(name))[0] for name in incoming_names}
    smallest = min(fan_in.values())
    if alpha > smallest:
        layer = min(fan_in, key=fan_in.get)
        raise invalid("alpha", "expand", f"an int in [2, {smallest}] (at most the fan-in {smallest} of layer "
                      f"{layer!r})", alpha)

    touched: list[str] = []
    for incoming, outgoing in pairs:
        group = [incoming, *[up for up, gate in companions.items() if gate == incoming], outgoing]
        touched.extend(name for name in group if name not in touched)
    check_not_shared(model, touched)
    for name in touched:
        for pname, param in model.get_submodule(name).named_parameters(recurse=False):
            if not torch.isfinite(param.detach()).all():
                raise InvalidParameterError(f"layer {name!r} has NaN or inf in its {pname}; expand needs finite weights")

    clause_layers = {name: fan_in[name] for name, spec in specs.items() if isinstance(spec, str) and spec in CLAUSE_SPLITS}
    checked_clauses = _check_clauses(clauses, clause_layers) if clause_layers else None

    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)))
    generator = torch.Generator().manual_seed(seed)
    split_label = _split_label(specs)
    report = ExpansionReport(alpha=alpha, split=split_label, budget=budget, bias=bias, seed=seed)
    report.model_nonzero_before = nonzero_parameters(model)
    expanded = copy.deepcopy(model)
    source = _linearised(model, touched)  # GPT-2 Conv1D read as nn.Linear (weights transposed)

    if all(isinstance(spec, str) and spec == "dropconnect" for spec in specs.values()):
        p = 1.0 - 1.0 / alpha if dropconnect_p is None else dropconnect_p
        for name in leader_of:
            module = source[name]
            weight, bias_t, weight_mask, bias_mask = _effective(module)
            layer = DropConnectLinear.from_tensors(weight, bias_t, weight_mask, bias_mask)
            layer.p = p
            layer.parent_features = (module.in_features, module.out_features)
            layer.train(module.training)
            frozen = _keep_requires_grad(module, layer)
            set_submodule(expanded, name, layer)
            count = _layer_nonzero(weight, bias_t)
            shape = tuple(weight.shape)
            report.layers.append(LayerChange(name, "in", shape, shape, count, count, count, frozen=frozen))
        report.model_nonzero_after = nonzero_parameters(expanded)
        return (expanded, report) if return_report else expanded

    row_factor = {name: alpha for name in leader_of}
    col_factor = {outgoing: alpha for _, outgoing in pairs}
    state: dict[str, dict] = {}
    drawn: dict[str, Tensor] = {}  # child masks per incoming layer; a gated companion reuses its leader's
    for name in touched:
        module = source[name]
        weight, bias_t, weight_mask, bias_mask = _effective(module)
        rows, cols = row_factor.get(name, 1), col_factor.get(name, 1)
        new_weight = weight.repeat_interleave(rows, 0).repeat_interleave(cols, 1)
        new_mask = weight_mask.repeat_interleave(rows, 0).repeat_interleave(cols, 1)
        new_bias = None if bias_t is None else bias_t.repeat_interleave(rows)
        new_bias_mask = None if bias_mask is None else bias_mask.repeat_interleave(rows)
        if rows > 1 and new_bias is not None:
            if bias == "divide":
                new_bias = new_bias / alpha
            elif bias == "zero":
                new_bias_mask = torch.zeros_like(new_bias_mask)
        spec = specs.get(leader_of.get(name, name))
        if rows > 1 and not (isinstance(spec, str) and spec == "static_sparse"):
            if name in companions:
                masks = drawn[companions[name]]
            else:
                lifted = None
                if checked_clauses is not None and isinstance(spec, str) and spec in CLAUSE_SPLITS:
                    lifted = [[j * cols + c for j in clause for c in range(cols)] for clause in checked_clauses]
                context = SplitContext(
                    layer=name, weight=weight.repeat_interleave(cols, 1).cpu(), alpha=alpha,
                    generator=generator, clauses=lifted,
                )
                masks = drawn[name] = child_masks(spec, context)
            new_mask &= masks.reshape(weight.shape[0] * alpha, -1).to(new_mask.device)
        state[name] = {
            "module": module, "role": "in+out" if rows > 1 and cols > 1 else ("in" if rows > 1 else "out"),
            "weight": new_weight, "mask": new_mask, "bias": new_bias, "bias_mask": new_bias_mask,
            "before": _layer_nonzero(weight, bias_t), "weight_before": int(torch.count_nonzero(weight)),
            "shape_before": tuple(weight.shape),
        }

    if any(isinstance(s, str) and s == "static_sparse" for s in specs.values()):
        for name in touched:
            entry = state[name]
            keep = entry["weight_before"]
            live = torch.nonzero(entry["mask"].reshape(-1).cpu()).squeeze(1)
            chosen = live[torch.randperm(live.numel(), generator=generator)[:keep]]
            mask = torch.zeros(entry["mask"].numel(), dtype=torch.bool)
            mask[chosen] = True
            entry["mask"] = mask.reshape(entry["mask"].shape).to(entry["mask"].device)

    for entry in state.values():
        entry["weight"] = entry["weight"] * entry["mask"]
        if entry["bias"] is not None:
            entry["bias"] = entry["bias"] * entry["bias_mask"]
        entry["split"] = _layer_nonzero(entry["weight"], entry["bias"])

    _apply_budget(state, budget)

    for name, entry in state.items():
        layer = MaskedLinear.from_tensors(entry["weight"], entry["bias"], entry["mask"], entry["bias_mask"])
        parent = entry["module"]
        layer.parent_features = getattr(parent, "parent_features", None) or (parent.in_features, parent.out_features)
        layer.train(parent.training)
        entry["frozen"] = _keep_requires_grad(parent, layer)
        set_submodule(expanded, name, layer)
        report.layers.append(LayerChange(
            name=name, role=entry["role"], shape_before=entry["shape_before"],
            shape_after=tuple(entry["weight"].shape), nonzero_before=entry["before"],
            nonzero_split=entry["split"], nonzero_after=_layer_nonzero(entry["weight"], entry["bias"]),
            frozen=entry["frozen"],
        ))
    report.model_nonzero_after = nonzero_parameters(expanded)
    if budget != "none" and report.excess < 0:
        warnings.warn(
            f"expand ends {-report.excess} non-zero parameters below the parent's {report.model_nonzero_before} "
            f"(bias={bias!r}, budget={budget!r} removes more than the copies add); the budget cannot add "
            "weights back, so the expanded model is smaller than its parent", UserWarning, stacklevel=2)
    return (expanded, report) if return_report else expanded


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


def _split_label(specs: Mapping[str, SplitSpec]) -> str:
    labels = {spec if isinstance(spec, str) else ("assignment" if isinstance(spec, Tensor) else "callable")
              for spec in specs.values()}
    return labels.pop() if len(labels) == 1 else "mixed"


def _apply_budget(state: dict[str, dict], budget: str) -> None:
    if budget == "none":
        return
    if budget == "layerwise":
        for name, entry in state.items():
            prune_smallest_({name: entry["weight"]}, {name: entry["mask"]}, entry["split"] - entry["before"])
        return
    names = list(state) if budget == "global" else [n for n, e in state.items() if e["role"] != "in"]
    excess = sum(e["split"] for e in state.values()) - sum(e["before"] for e in state.values())
    prune_smallest_({n: state[n]["weight"] for n in names}, {n: state[n]["mask"] for n in names}, excess)


def load_expanded(model: nn.Module, state_dict: Mapping[str, Tensor], *, strict: bool = True) -> nn.Module:
    """Load a saved expanded ``state_dict`` into a fresh copy of the *parent* architecture.

    Every layer whose entries in ``state_dict`` describe an expanded layer (its extra state names a
    layout: ``masked``, ``dropconnect`` or a packed one; or, in files saved before layouts were
    recorded, it has a ``weight_mask``) is rebuilt in that layout with the saved shapes, then the
    whole state is loaded. A DropConnect layer gets its ``p`` back. Checked before anything is
    returned: each such layer exists in ``model`` as an ``nn.Linear`` (or expanded layer) whose
    shape fits the saved one (the parent's shape recorded at expansion, or the saved shape itself),
    and no stored weight is non-zero outside its mask. ``model`` itself is never modified; the
    loaded copy is returned.
    """
    check_param("model", model, [nn.Module], "load_expanded")
    check_param("state_dict", state_dict, [Mapping], "load_expanded")
    state = dict(state_dict)
    extras: dict[str, dict] = {}
    for key, value in state_dict.items():
        if key.endswith("_extra_state") and layout_of(value) is not None:
            extras[key[: -len("_extra_state")].rstrip(".")] = dict(value)
    for key, mask in state_dict.items():
        path = key[: -len("weight_mask")].rstrip(".")
        if key.endswith("weight_mask") and path not in extras and isinstance(mask, Tensor) and mask.dim() == 2:
            # saved before layouts were recorded: a masked layer of unknown parent
            extras[path] = {"layout": "masked", "in_features": mask.shape[1], "out_features": mask.shape[0],
                            "parent_features": None}
            state[f"{path}._extra_state" if path else "_extra_state"] = extras[path]

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
        if not isinstance(old, (nn.Linear, ExpandedLayer)):
            raise InvalidParameterError(f"state_dict holds an expanded layer for {path!r}, which is a {type(old).__name__}, "
                            "not nn.Linear")
        saved = (int(extra["in_features"]), int(extra["out_features"]))
        here = (old.in_features, old.out_features)
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
        try:
            layer = LAYOUTS[extra["layout"]].empty_from_state(extra, tensors, device=old.weight.device
                                                              if isinstance(getattr(old, "weight", None), Tensor)
                                                              else None)
        except (KeyError, ValueError, TypeError, RuntimeError) as error:
            raise InvalidParameterError(f"{where}: the saved {extra['layout']!r} layer is inconsistent: {error}") from None
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
