"""The contract every layout meets (:class:`ExpandedLayer`) and the registry that finds layouts by name.

Every reader (``expand`` expanding again, ``load_expanded``, ``pack``, the batched trainer, the
metrics) asks an expanded layer for the same few things, never for buffer names:

- ``effective_weight()`` / ``effective_bias()``: the dense ``(out_features, in_features)`` weight and
  the bias, in the natural unit order (child ``k`` of parent ``i`` at ``alpha * i + k``), zero where
  masked; differentiable with respect to the layer's parameters;
- ``dense_weight_mask()`` / ``dense_bias_mask()``: the fixed masks as dense boolean views;
- ``nonzero_count()``: the non-zero entries of weight and bias that the layer stores;
- ``to_masked()``: the same layer in the reference layout (``MaskedLinear``), requires_grad kept;
- ``masked_out_nonzero()``: stored entries that are non-zero where the mask is off (0 when healthy);
- ``apply_mask_()``: re-zero stored masked entries (for optimizers outside torch.optim's zero-state
  class);
- ``empty_from_state(extra, tensors, device)``: a layer of the saved shapes, built from its saved
  metadata and tensors (values are loaded afterwards by ``load_state_dict``);
- ``layout``: the layout's name, written to the ``state_dict`` with the rest of the metadata
  (``layout_state``) as the uint8 tensor ``<layer>.fpe_layout`` (see :mod:`.metadata`), so
  :func:`torchfpe.load_expanded` finds the class in :data:`LAYOUTS`. A layer's ``state_dict`` holds
  tensors only; a layout must not define ``get_extra_state`` (it would put a Python object back).
  A layout with options of its own adds them in ``layout_state`` and checks them in
  ``apply_layout_state``.

Traits declared beside each layout class and read by the registry's readers: ``packable`` (``pack``
may convert a masked layer to it: the class provides ``from_masked``), ``auto_order`` (its place in
``pack(layout="auto")``'s order of tries, ``None``: never tried by ``auto``) and ``weight_parameter``
(the name of the parameter that holds the weights, for ``requires_grad``).
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..validation import InvalidParameterError
from .metadata import LAYOUT_KEY, check_stored, encode_layout_state, saved_layout_state

#: layout name -> class; filled by :func:`register_layout`, read by ``pack`` and ``load_expanded``.
LAYOUTS: dict[str, type[ExpandedLayer]] = {}

#: the parameter roles a layout's ``requires_grad`` is saved and carried under
ROLES = ("weight", "bias")


class LayoutError(ValueError):
    """The masks of a layer do not fit the requested layout (raised by ``from_masked``)."""


def register_layout(cls: type) -> type:
    """Class decorator: make a layout known to ``pack`` and ``load_expanded`` by its ``layout`` name.

    Refuses a class that is not an :class:`ExpandedLayer`, leaves a method of the contract abstract,
    declares ``packable`` without ``from_masked``, or takes a name another class holds (re-registering
    the same class, as a module reload does, is allowed).
    """
    name = getattr(cls, "layout", None)
    if not (isinstance(cls, type) and issubclass(cls, ExpandedLayer)):
        raise TypeError(f"register_layout expects a subclass of ExpandedLayer, got {cls!r}")
    if not isinstance(name, str) or not name or name == "auto":
        raise ValueError(f"{cls.__name__}.layout must be a non-empty name other than 'auto', got {name!r}")
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise TypeError(f"layout {name!r} ({cls.__name__}) does not provide {', '.join(missing)}")
    if getattr(cls, "get_extra_state", nn.Module.get_extra_state) is not nn.Module.get_extra_state:
        raise TypeError(f"layout {name!r} ({cls.__name__}) defines get_extra_state; a layer's state_dict holds "
                        "tensors only: put its options in layout_state and apply_layout_state")
    if cls.packable and not callable(getattr(cls, "from_masked", None)):
        raise TypeError(f"layout {name!r} ({cls.__name__}) is packable but has no from_masked")
    if cls.auto_order is not None and not cls.packable:
        raise ValueError(f"layout {name!r} has an auto_order but is not packable")
    held = LAYOUTS.get(name)
    if held is not None and (held.__module__, held.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"layout name {name!r} is taken by {held.__module__}.{held.__qualname__}")
    LAYOUTS[name] = cls
    return cls


def packable_layouts() -> list[str]:
    """Names ``pack`` accepts besides ``auto``: auto's tries first (in order), then the rest by name."""
    packable = [(cls.auto_order is None, cls.auto_order or 0, name) for name, cls in LAYOUTS.items() if cls.packable]
    return [name for *_, name in sorted(packable)]


def auto_layouts() -> list[type[ExpandedLayer]]:
    """The classes ``pack(layout="auto")`` tries, in order (the first whose ``from_masked`` fits wins)."""
    return [LAYOUTS[name] for name in packable_layouts() if LAYOUTS[name].auto_order is not None]


def layout_of(extra: object) -> str | None:
    """The registered layout name in saved metadata (a decoded dict), or ``None`` if it names none."""
    if isinstance(extra, Mapping) and isinstance(extra.get("layout"), str) and extra["layout"] in LAYOUTS:
        return extra["layout"]
    return None


class ExpandedLayer(metaclass=ABCMeta):
    """Mixin marking an expanded layer and stating the contract every layout meets (see module doc).

    A metaclass, not ``ABC`` as a base: ``ABC`` (``__slots__ = ()``) as the first base made the layout
    classes' C-level base differ from ``FSDPModule``'s, so FSDP2's ``fully_shard`` (which sets
    ``module.__class__`` to ``FSDP<Name>(FSDPModule, <Name>)``) failed with "object layout differs".

    A layout is ``class MyLinear(ExpandedLayer, nn.Module)`` (or a subclass of a packed base) that
    implements the abstract methods below and is decorated with :func:`register_layout`.
    """

    layout: ClassVar[str] = ""
    #: ``pack`` may convert a masked layer to this layout (the class provides ``from_masked``).
    packable: ClassVar[bool] = False
    #: place in ``pack(layout="auto")``'s order of tries; ``None``: auto never picks this layout.
    auto_order: ClassVar[int | None] = None
    #: the parameter holding the weights (``requires_grad`` is carried per role: weight, bias).
    weight_parameter: ClassVar[str] = "weight"
    in_features: int
    out_features: int
    #: (in_features, out_features) of the parent layer this one was expanded from, when known.
    parent_features: tuple[int, int] | None = None

    # -- the contract
    @abstractmethod
    def effective_weight(self) -> Tensor:
        """The dense (out_features, in_features) weight in natural unit order, zero where masked."""

    @abstractmethod
    def effective_bias(self) -> Tensor | None:
        """The bias in natural unit order, zero where masked (``None`` without bias)."""

    @abstractmethod
    def dense_weight_mask(self) -> Tensor:
        """The fixed weight mask as a dense boolean (out_features, in_features) tensor."""

    @abstractmethod
    def dense_bias_mask(self) -> Tensor | None:
        """The fixed bias mask as a dense boolean tensor (``None`` without bias)."""

    @abstractmethod
    def to_masked(self) -> nn.Module:
        """The same layer in the reference layout, ``MaskedLinear`` (training mode and requires_grad kept)."""

    @abstractmethod
    def masked_out_nonzero(self) -> int:
        """Stored entries that are non-zero where the mask is off (0 for a healthy layer)."""

    @abstractmethod
    def apply_mask_(self) -> None:
        """Set the stored masked entries to exactly 0.0."""

    @classmethod
    @abstractmethod
    def empty_from_state(cls, extra: dict, tensors: Mapping[str, Tensor], device=None) -> ExpandedLayer:
        """A layer of the saved shapes; end with ``return layer.restored_from(extra)``."""

    # -- shared behaviour
    def nonzero_count(self) -> int:
        weight = self.effective_weight().detach()
        bias = self.effective_bias()
        return int(torch.count_nonzero(weight)) + (0 if bias is None else int(torch.count_nonzero(bias.detach())))

    def refuses_packing(self) -> str | None:
        """Why ``pack`` must leave this layer alone (completing "layer 'x' ..."), or ``None``."""
        if self.packable:
            return f"is already packed ({self.layout!r}); unpack the model first"
        return None

    def output_order(self) -> Tensor | None:
        """The natural unit of each output position when the layer emits another order, else ``None``."""
        return None

    def role_parameters(self) -> dict[str, nn.Parameter]:
        """``{"weight": ..., "bias": ...}``: the parameters that ``requires_grad`` is carried for."""
        found = {"weight": getattr(self, self.weight_parameter, None), "bias": getattr(self, "bias", None)}
        return {role: param for role, param in found.items() if isinstance(param, nn.Parameter)}

    def frozen_roles(self) -> list[str]:
        return [role for role, param in self.role_parameters().items() if not param.requires_grad]

    def freeze_like(self, other: ExpandedLayer) -> None:
        """Give this layer's weight and bias the ``requires_grad`` of ``other``'s (any layouts)."""
        frozen = set(other.frozen_roles())
        for role, param in self.role_parameters().items():
            param.requires_grad_(role not in frozen)

    def restored_from(self, extra: Mapping) -> ExpandedLayer:
        """Apply saved metadata to a freshly built layer: the layout's fields and the frozen roles.

        ``requires_grad`` is restored only here (by ``empty_from_state``, i.e. by ``load_expanded``);
        ``load_state_dict`` into an existing layer keeps that layer's flags, as torch does.
        """
        self.apply_layout_state(extra)
        frozen = extra.get("frozen", [])
        params = self.role_parameters()
        if not isinstance(frozen, (list, tuple)) or any(role not in params for role in frozen):
            raise ValueError(f"frozen={frozen!r} names parameters this layer lacks (it has {sorted(params)})")
        for role in frozen:
            params[role].requires_grad_(False)
        return self

    def stored_names(self) -> list[str]:
        """The parameters and persistent buffers this layer saves (those that are not ``None``), in order."""
        params = [name for name, value in self._parameters.items() if value is not None]
        buffers = [name for name, value in self._buffers.items()
                   if value is not None and name not in self._non_persistent_buffers_set]
        return params + buffers

    def layout_state(self) -> dict:
        """The layer's metadata, saved as the ``fpe_layout`` tensor (see :mod:`.metadata`); JSON-able.

        ``stored`` lists the tensors the layer saves, so loading refuses a state missing one (a packed
        layer without its ``hole_bits`` would otherwise load with its pruned entries trainable).
        ``frozen`` (the roles with ``requires_grad=False``) is written only when there are any.
        """
        state = {"layout": self.layout, "in_features": self.in_features, "out_features": self.out_features,
                 "parent_features": None if self.parent_features is None else list(self.parent_features),
                 "stored": self.stored_names()}
        frozen = self.frozen_roles()
        if frozen:
            state["frozen"] = frozen
        return state

    def apply_layout_state(self, state: Mapping) -> None:
        """Check saved metadata against this layer and take its fields; ``ValueError`` when it does not fit.

        A layout with options of its own extends this (call ``super()`` first) and ``layout_state``.
        """
        if not isinstance(state, Mapping) or state.get("layout") != self.layout:
            got = state.get("layout") if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"it holds a {got!r} layer, not a {self.layout!r} one")
        if (state.get("in_features"), state.get("out_features")) != (self.in_features, self.out_features):
            raise ValueError(f"its shape {state.get('out_features')}x{state.get('in_features')} (outputs x inputs) "
                             f"is not this layer's {self.out_features}x{self.in_features}")
        parent = state.get("parent_features")
        self.parent_features = None if parent is None else (int(parent[0]), int(parent[1]))

    def register_parameter(self, name: str, param) -> None:
        """Refuse ``torch.nn.utils.prune`` (its first step registers ``<name>_orig``): it would replace
        the layer's fixed masks by its own and change the non-zero count behind FPE's back."""
        if name.endswith("_orig") and getattr(self, "_parameters", None) is not None \
                and name[: -len("_orig")] in ("weight", "bias", self.weight_parameter):
            raise InvalidParameterError(
                f"a {self.layout!r} layer's masks are fixed by FPE; torch.nn.utils.prune would replace them (it "
                f"registers {name!r}): prune the parent before torchfpe.expand, or torchfpe.bake(model) first")
        super().register_parameter(name, param)

    # -- saving and loading: metadata as the tensor ``fpe_layout`` (format 2); dicts of format 1 still load
    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + LAYOUT_KEY] = encode_layout_state(self.layout_state())

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        key = prefix + LAYOUT_KEY
        where = f"layer {prefix[:-1]!r}" if prefix else "the model's top-level layer"
        saved = saved_layout_state(state_dict, prefix, pop=True)
        if saved is None:
            if strict:
                missing_keys.append(key)
        else:
            try:
                self.apply_layout_state(saved)
            except ValueError as error:
                raise InvalidParameterError(
                    f"{where}: state_dict key {key!r} does not fit this layer: {error}; a saved expanded model "
                    "loads with torchfpe.load_expanded(parent, state_dict), which rebuilds each layer to the saved "
                    "shapes") from None
            check_stored(saved, state_dict, prefix, where)
        self._check_saved_state(state_dict, prefix, saved)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _check_saved_state(self, state_dict: Mapping, prefix: str, saved: dict | None) -> None:
        """Refuse saved tensors that do not describe a layer before any is copied (packed layouts do)."""


def expanded_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(path, layer)`` of every expanded layer in ``model`` (any layout), in ``named_modules`` order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, ExpandedLayer)]


def effective_parameters(module: nn.Module) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
    """Detached copies of (weight, bias, weight mask, bias mask) of an ``nn.Linear`` or expanded layer.

    A plain ``nn.Linear`` has all-true masks. Weights are returned zero where masked.
    """
    if isinstance(module, ExpandedLayer):
        weight = module.effective_weight().detach().clone()
        bias = module.effective_bias()
        bias = None if bias is None else bias.detach().clone()
        weight_mask = module.dense_weight_mask().clone()
        bias_mask = module.dense_bias_mask()
        bias_mask = None if bias_mask is None else bias_mask.clone()
        return weight, bias, weight_mask, bias_mask
    if isinstance(module, nn.Linear):
        weight = module.weight.detach().clone()
        bias = None if module.bias is None else module.bias.detach().clone()
        return (weight, bias, torch.ones_like(weight, dtype=torch.bool),
                None if bias is None else torch.ones_like(bias, dtype=torch.bool))
    raise TypeError(f"expected an nn.Linear or an expanded layer, got {type(module).__name__}")
