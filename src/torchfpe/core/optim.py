"""``carry_optimizer``: expansion in the middle of training, with the optimizer's state carried over.

The paper's protocol trains the expanded model with a fresh optimizer. A run that expands in the
middle of training may instead keep what the optimizer has learnt about each weight. Which expanded
entry came from which parent entry follows from the shapes alone, because ``expand`` builds every
layer the same way: the parent's rows are repeated ``rows = out_wide / out_parent`` times (child
``k`` of unit ``i`` at ``rows * i + k``) and its columns ``cols = in_wide / in_parent`` times (one
copy per child of the input unit), then the layer's mask keeps a child's share and the budget
prunes. So a state tensor is carried exactly as the weight was: repeated the same way, then
multiplied by the mask. Every other parameter keeps its state as it is.

Why the masks keep holding: a pruned entry gets state 0, its gradient is 0 (the forward pass
multiplies by the mask) and its weight is 0, so Adam's moments stay 0 and its update is
0 / (sqrt(0) + eps) = 0, AdamW's decoupled decay multiplies 0, and SGD's momentum buffer stays 0.

**The optimizer registry.** :data:`OPTIMIZERS` holds one :class:`OptimizerSpec` per optimizer name:
its torch class, a builder from the training settings (``lr``, ``weight_decay``, ``momentum`` …) and
whether :func:`carry_optimizer` carries its state (``carried``: per-parameter state that is
element-wise plus a step count). The training loop, the config check (``<split>@carry`` is refused at
config time for an optimizer that is not carried) and :func:`carry_optimizer` all read it; a new
optimizer is one :func:`register_optimizer` call, in the package or in a user's module.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .layouts.base import ExpandedLayer, expanded_layers
from .layouts.masked import MaskedLinear
from .targets import features, is_conv1d
from .validation import InvalidParameterError, check_param, invalid

# ------------------------------------------------------------------------------------- the registry
#: What a builder is given: the training settings by name (``lr``, ``weight_decay``, ``momentum`` …);
#: a builder reads the ones its optimizer takes and ignores the rest.
Settings = Mapping[str, object]
Builder = Callable[[Iterable, Settings], torch.optim.Optimizer]


@dataclass(frozen=True)
class OptimizerSpec:
    """A registered optimizer: its name, torch class, builder and declared traits.

    ``build(parameters, settings)`` returns a new optimizer over ``parameters`` from the settings
    mapping; ``carried``: :func:`carry_optimizer` carries its state (it must then be element-wise per
    parameter, plus ``step``); ``settings``: the settings names it reads (documentation, and what the
    config check may mention).
    """

    name: str
    cls: type
    build: Builder
    carried: bool = False
    settings: tuple[str, ...] = ("lr", "weight_decay")
    description: str = ""


class OptimizerRegistry(Mapping[str, OptimizerSpec]):
    """Name -> :class:`OptimizerSpec`, in registration order."""

    def __init__(self) -> None:
        self._specs: dict[str, OptimizerSpec] = {}

    def __getitem__(self, name: str) -> OptimizerSpec:
        return self._specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __repr__(self) -> str:
        return f"OptimizerRegistry({', '.join(self._specs)})"

    def add(self, spec: OptimizerSpec, *, replace: bool = False) -> OptimizerSpec:
        if not replace and spec.name in self._specs:
            raise InvalidParameterError(f"an optimizer named {spec.name!r} is already registered; pass replace=True "
                                        "to register_optimizer to replace it")
        self._specs[spec.name] = spec
        return spec

    def remove(self, name: str) -> None:
        """Forget an optimizer (tests register temporary ones)."""
        self._specs.pop(name, None)

    def where(self, **traits) -> tuple[str, ...]:
        """Names of the optimizers whose traits equal ``traits``, e.g. ``OPTIMIZERS.where(carried=True)``."""
        return tuple(name for name, spec in self._specs.items()
                     if all(getattr(spec, trait) == value for trait, value in traits.items()))

    def of_class(self, cls: type) -> OptimizerSpec | None:
        """The spec registered for exactly this torch class (the first one), or None."""
        return next((spec for spec in self._specs.values() if spec.cls is cls), None)

    def build(self, name: str, parameters: Iterable, settings: Settings) -> torch.optim.Optimizer:
        """A new optimizer ``name`` over ``parameters``; an unknown name is an error listing the registered ones."""
        return get_optimizer(name).build(parameters, settings)


#: Every registered optimizer; the training loop, the config check and :func:`carry_optimizer` read it.
OPTIMIZERS = OptimizerRegistry()


def register_optimizer(name: str, cls: type, build: Builder | None = None, *, carried: bool = False,
                       settings: Iterable[str] = ("lr", "weight_decay"), description: str = "",
                       replace: bool = False) -> OptimizerSpec:
    """Register the optimizer ``name`` (a ``torch.optim.Optimizer`` subclass ``cls``); returns its spec.

    ``build(parameters, settings)`` makes one from the settings mapping; without it the optimizer is
    ``cls(parameters, **{s: settings[s] for s in settings_names})``. ``carried=True`` declares that its
    state is element-wise per parameter plus ``step`` (what :func:`carry_optimizer` can map). The name
    then works wherever a config names an optimizer, in this process.
    """
    owner = "register_optimizer"
    check_param("name", name, [str], owner)
    if not name.isidentifier():
        raise InvalidParameterError(f"the 'name' parameter of {owner} must be an identifier; got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise InvalidParameterError(f"the 'cls' parameter of {owner} must be a subclass of torch.optim.Optimizer; "
                                    f"got {cls!r}")
    if build is not None:
        check_param("build", build, [callable], owner)
    for trait, value in (("carried", carried), ("replace", replace)):
        check_param(trait, value, [bool], owner)
    names = (settings,) if isinstance(settings, str) else tuple(settings)
    if not all(isinstance(n, str) for n in names):
        raise InvalidParameterError(f"the 'settings' parameter of {owner} must be a list of names; got {settings!r}")
    check_param("description", description, [str], owner)
    if build is None:
        def build(parameters: Iterable, values: Settings, _cls=cls, _names=names) -> torch.optim.Optimizer:
            return _cls(parameters, **{n: values[n] for n in _names if n in values})
    return OPTIMIZERS.add(OptimizerSpec(name, cls, build, carried, names, description), replace=replace)


def get_optimizer(name: str, where: str = "optimizer") -> OptimizerSpec:
    """The registered optimizer ``name``; an unknown name is an error listing the registered ones."""
    try:
        return OPTIMIZERS[name]
    except (KeyError, TypeError):
        raise InvalidParameterError(f"{where}: unknown optimizer {name!r}; registered optimizers: "
                                    f"{', '.join(OPTIMIZERS)}") from None


register_optimizer("adam", torch.optim.Adam, carried=True, description="Adam (Kingma & Ba 2015)")
register_optimizer("adamw", torch.optim.AdamW, carried=True, description="Adam with decoupled weight decay")
register_optimizer("sgd", torch.optim.SGD, carried=True, settings=("lr", "momentum", "weight_decay"),
                   description="SGD with (heavy-ball) momentum")


def carried_classes() -> tuple[type, ...]:
    """The torch classes whose state :func:`carry_optimizer` carries (read from the registry)."""
    return tuple(OPTIMIZERS[name].cls for name in OPTIMIZERS.where(carried=True))


def __getattr__(name: str):
    if name == "CARRIED":  # the old constant, now read from the registry each time
        return carried_classes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def carry_optimizer(optimizer: torch.optim.Optimizer, parent: nn.Module, wide: nn.Module, *,
                    in_place: bool = False, scheduler: object | None = None) -> torch.optim.Optimizer:
    """The optimizer's state carried from ``parent``'s parameters to ``wide``'s: a new optimizer, or ``optimizer`` itself.

    Args:
        optimizer: an optimizer of a class registered with ``carried=True`` in :data:`OPTIMIZERS`
            (``torch.optim.Adam``, ``AdamW``, ``SGD`` with or without momentum) over ``parent``'s
            parameters (any subset, any parameter groups), or a wrapper that holds one as ``.optimizer``
            (accelerate's ``AcceleratedOptimizer``, which the ``transformers.Trainer`` steps).
        parent: the model the optimizer trains.
        wide: ``torch.expand(parent, ...)``'s result, in the masked layout (carry before ``pack``).
        in_place: re-bind ``optimizer`` itself to ``wide``'s parameters (its ``param_groups`` and
            ``state``, through any wrapper) and return it, so whatever steps that object (a learning-rate
            scheduler, a Trainer) keeps stepping it, on the wide model. Default: a new optimizer, and
            ``optimizer`` is not modified.
        scheduler: the learning-rate scheduler that steps ``optimizer`` (a ``torch.optim.lr_scheduler``
            one, or a wrapper holding one as ``.scheduler``). Without ``in_place`` it is re-bound to the
            returned optimizer, its position in the schedule kept; with ``in_place`` it needs nothing.

    An expanded layer's moments are the parent's repeated as its weights were (each child's are the
    parent's under the child's mask; a copied outgoing column gets its parent column's state) and 0
    where pruned; every other parameter's state is copied; ``step`` and each group's hyperparameters
    (learning rate included) are kept. ``parent`` is not modified.
    """
    owner = "carry_optimizer"
    check_param("optimizer", optimizer, [torch.optim.Optimizer], owner)
    check_param("parent", parent, [nn.Module], owner)
    check_param("wide", wide, [nn.Module], owner)
    check_param("in_place", in_place, [bool], owner)
    inner = unwrap_optimizer(optimizer)
    schedulers = _schedulers_of(scheduler, optimizer, inner)
    names = {id(p): name for name, p in parent.named_parameters()}
    groups, carried = _carried(inner, names, parent.get_submodule, wide)
    if in_place:
        rebind_optimizer_(inner, groups, carried)
        return optimizer
    accepted = inspect.signature(type(inner).__init__).parameters
    fresh = type(inner)([{**{key: value for key, value in group.items() if key != "params"}, "params": params}
                         for group, params in zip(inner.param_groups, groups)],
                        **{k: v for k, v in inner.defaults.items() if k in accepted})
    for param, state in carried:
        if state:
            fresh.state[param] = state
    for one in schedulers:
        one.optimizer = fresh
    return fresh


def unwrap_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside wrappers that hold it as ``.optimizer`` (accelerate's, the Trainer's).

    Raises :class:`InvalidParameterError` unless it is one whose state ``carry_optimizer`` can map.
    """
    inner, wrappers = optimizer, []
    carried_types = carried_classes()
    while type(inner) not in carried_types and isinstance(getattr(inner, "optimizer", None), torch.optim.Optimizer):
        wrappers.append(type(inner).__name__)
        inner = inner.optimizer
    if type(inner) not in carried_types:
        inside = f" (inside {' > '.join(wrappers)})" if wrappers else ""
        raise InvalidParameterError(
            f"carry_optimizer carries the state of the optimizers registered with carried=True "
            f"({', '.join(cls.__name__ for cls in carried_types)}); got "
            f"{type(inner).__module__}.{type(inner).__name__}{inside}: build a fresh optimizer over the wide "
            "model's parameters instead")
    return inner


def rebind_optimizer_(optimizer: torch.optim.Optimizer, groups: list[list[nn.Parameter]],
                      carried: list[tuple[nn.Parameter, dict]]) -> None:
    """Point ``optimizer``'s groups at new parameters and replace its state (the object stays the same)."""
    for group, params in zip(optimizer.param_groups, groups):
        group["params"] = params
    optimizer.state.clear()
    for param, state in carried:
        if state:
            optimizer.state[param] = state


def _schedulers_of(scheduler: object | None, optimizer: torch.optim.Optimizer, inner: torch.optim.Optimizer) -> list:
    """The torch schedulers inside ``scheduler`` (wrappers, SequentialLR), each checked to step ``optimizer``."""
    if scheduler is None:
        return []
    found, todo = [], [scheduler]
    while todo:
        one = todo.pop()
        while not hasattr(one, "optimizer") and hasattr(one, "scheduler"):
            one = one.scheduler  # accelerate's AcceleratedScheduler
        if not hasattr(one, "optimizer"):
            raise invalid("scheduler", "carry_optimizer", "a learning-rate scheduler (it has .optimizer)", scheduler)
        if one.optimizer is not optimizer and one.optimizer is not inner:
            raise InvalidParameterError("the scheduler steps another optimizer than the one passed to "
                                        "carry_optimizer; pass the scheduler built on that optimizer")
        found.append(one)
        todo.extend(getattr(one, "_schedulers", []))  # SequentialLR, ChainedScheduler
    return found


def _carried(optimizer: torch.optim.Optimizer, names: dict[int, str], parent_layer, wide: nn.Module):
    """Each group's parameters in ``wide`` and each one's carried state; ``names``: id of a parent parameter -> name.

    ``parent_layer(path)`` returns the parent's module at ``path`` (its expanded layers' sources).
    """
    packed = [(path, layer) for path, layer in expanded_layers(wide) if not isinstance(layer, MaskedLinear)]
    if packed:
        raise InvalidParameterError(f"layer {packed[0][0]!r} of wide is in the packed {packed[0][1].layout!r} layout; "
                                    "carry the optimizer on the model torchfpe.expand returns (masked), before "
                                    "torchfpe.pack")
    wide_parameters = dict(wide.named_parameters())
    groups, carried, seen = [], [], set()
    for index, group in enumerate(optimizer.param_groups):
        params = []
        for param in group["params"]:
            name = names.get(id(param))
            if name is None:
                raise InvalidParameterError(f"param_groups[{index}] of the optimizer holds a parameter of shape "
                                            f"{tuple(param.shape)} that is not one of parent's parameters; pass the "
                                            "model the optimizer trains as parent")
            if name not in wide_parameters:
                raise InvalidParameterError(f"wide has no parameter {name!r}; pass the model torchfpe.expand returned "
                                            "for parent")
            new = wide_parameters[name]
            if id(new) in seen:
                raise InvalidParameterError(f"parameter {name!r} is in the optimizer twice")
            seen.add(id(new))
            state = optimizer.state.get(param, {})
            carried.append((new, _carried_state(state, name, param, new, parent_layer, wide)))
            params.append(new)
        groups.append(params)
    return groups, carried


def _carried_state(state: dict, name: str, old: Tensor, new: Tensor, parent_layer, wide: nn.Module) -> dict:
    """One parameter's state in ``wide``: mapped like the weights of an expanded layer, else copied."""
    path, _, role = name.rpartition(".")
    layer = wide.get_submodule(path)
    source = parent_layer(path)
    mapping = _expansion_map(path, role, layer, source, old, new)
    out = {}
    for key, value in state.items():
        if key == "step" or value is None:
            out[key] = value.clone() if isinstance(value, Tensor) else value
        elif isinstance(value, Tensor) and value.shape == old.shape:
            out[key] = mapping(value.detach()).to(new.dtype).clone()
        else:
            raise InvalidParameterError(f"the optimizer's state {key!r} of parameter {name!r} is not element-wise "
                                        f"(shape {tuple(getattr(value, 'shape', ()))}, the parameter's is "
                                        f"{tuple(old.shape)}); carry_optimizer cannot map it")
    return out


def _expansion_map(path: str, role: str, layer: nn.Module, source: nn.Module, old: Tensor, new: Tensor):
    """How a state tensor of parent parameter ``old`` becomes one of ``new`` (a function of the tensor)."""
    if not isinstance(layer, ExpandedLayer):
        if new.shape != old.shape:
            raise InvalidParameterError(f"parameter {path + '.' + role!r} has shape {tuple(new.shape)} in wide but "
                                        f"{tuple(old.shape)} in parent and is not in an expanded layer")
        return lambda value: value
    if not (isinstance(source, nn.Linear) or is_conv1d(source)):
        raise InvalidParameterError(f"layer {path!r} of parent is a {type(source).__name__}; an expanded layer comes "
                                    "from an nn.Linear (or a GPT-2 Conv1D)")
    (in_parent, out_parent), (in_wide, out_wide) = features(source), (layer.in_features, layer.out_features)
    if in_wide % in_parent or out_wide % out_parent:
        raise InvalidParameterError(f"layer {path!r} is {out_wide}x{in_wide} in wide, not an expansion of parent's "
                                    f"{out_parent}x{in_parent} (outputs x inputs)")
    rows, cols = out_wide // out_parent, in_wide // in_parent
    transposed = is_conv1d(source) and role == "weight"  # Conv1D stores (in, out)
    mask = layer.weight_mask if role == "weight" else layer.bias_mask
    if role == "weight":
        return lambda value: ((value.t() if transposed else value)
                              .repeat_interleave(rows, 0).repeat_interleave(cols, 1) * mask)
    return lambda value: value.repeat_interleave(rows) * mask
