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
from .validation import InvalidParameterError, check_param

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


def carry_optimizer(optimizer: torch.optim.Optimizer, parent: nn.Module, wide: nn.Module) -> torch.optim.Optimizer:
    """A new optimizer of ``optimizer``'s class and hyperparameters over ``wide``'s parameters, state carried.

    Args:
        optimizer: an optimizer of a class registered with ``carried=True`` in :data:`OPTIMIZERS`
            (``torch.optim.Adam``, ``AdamW``, ``SGD`` with or without momentum) over
            ``parent``'s parameters (any subset, any parameter groups).
        parent: the model the optimizer trains.
        wide: ``torch.expand(parent, ...)``'s result, in the masked layout (carry before ``pack``).

    Returns an optimizer with the same parameter groups (each group's hyperparameters kept) over the
    matching parameters of ``wide``: an expanded layer's moments are the parent's repeated as its
    weights were (each child's are the parent's under the child's mask; a copied outgoing column gets
    its parent column's state) and 0 where pruned; every other parameter's state is copied; ``step``
    is kept. ``optimizer`` and ``parent`` are not modified. Build a new learning-rate scheduler on
    the returned optimizer.
    """
    owner = "carry_optimizer"
    check_param("optimizer", optimizer, [torch.optim.Optimizer], owner)
    check_param("parent", parent, [nn.Module], owner)
    check_param("wide", wide, [nn.Module], owner)
    if type(optimizer) not in carried_classes():
        shown = ", ".join(cls.__name__ for cls in carried_classes())
        raise InvalidParameterError(
            f"carry_optimizer carries the state of the optimizers registered with carried=True ({shown}); got "
            f"{type(optimizer).__module__}.{type(optimizer).__name__}: build a fresh optimizer over the wide model's "
            "parameters instead")
    packed = [(path, layer) for path, layer in expanded_layers(wide) if not isinstance(layer, MaskedLinear)]
    if packed:
        raise InvalidParameterError(f"layer {packed[0][0]!r} of wide is in the packed {packed[0][1].layout!r} layout; "
                                    "carry the optimizer on the model torchfpe.expand returns (masked), before "
                                    "torchfpe.pack")
    names = {id(p): name for name, p in parent.named_parameters()}
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
            carried.append((new, _carried_state(optimizer.state.get(param, {}), name, param, new, parent, wide)))
            params.append(new)
        groups.append({**{key: value for key, value in group.items() if key != "params"}, "params": params})
    accepted = inspect.signature(type(optimizer).__init__).parameters
    fresh = type(optimizer)(groups, **{k: v for k, v in optimizer.defaults.items() if k in accepted})
    for param, state in carried:
        if state:
            fresh.state[param] = state
    return fresh


def _carried_state(state: dict, name: str, old: Tensor, new: Tensor, parent: nn.Module, wide: nn.Module) -> dict:
    """One parameter's state in ``wide``: mapped like the weights of an expanded layer, else copied."""
    path, _, role = name.rpartition(".")
    layer = wide.get_submodule(path) if path else wide
    source = parent.get_submodule(path) if path else parent
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
