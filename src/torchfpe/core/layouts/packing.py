"""``pack`` and ``unpack``: a model's expanded layers into packed layouts and back, through the registry.

``pack`` works in phases: check every argument and layer; plan which producer in an ``nn.Sequential``
chain may emit its own order (its consumer is packed into layouts that read any order); build each
packed layer once, producers first, from the masked layer with its input order known; copy the model
around the built layers. Which layouts exist, which ``pack`` accepts and in which order ``auto`` tries
them is read from :data:`~torchfpe.core.layouts.base.LAYOUTS`; no layout is named here.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

from torch import Tensor, nn

from ..targets import find_hidden_pairs
from ..validation import Interval, InvalidParameterError, check_param, validate_params
from .base import LAYOUTS, ExpandedLayer, LayoutError, auto_layouts, expanded_layers, packable_layouts
from .block import MAX_GROUPS
from .masked import MaskedLinear
from .packed import row_factor

#: pack's parameters and their constraints, declared once (torchfpe.core.validation).
PACK_PARAMETERS = {"model": [nn.Module], "max_groups": [Interval(int, 1)]}


def _candidates(choice: str) -> list[type]:
    return auto_layouts() if choice == "auto" else [LAYOUTS[choice]]


def _refusal(layer: nn.Module, name: str) -> InvalidParameterError | None:
    if not isinstance(layer, ExpandedLayer):
        return InvalidParameterError(f"layer {name!r} is a {type(layer).__name__}, not an expanded layer")
    reason = layer.refuses_packing()
    return None if reason is None else InvalidParameterError(f"layer {name!r} {reason}")


def pack_layer(layer: nn.Module, layout: str = "auto", *, name: str = "layer", max_groups: int = MAX_GROUPS,
               input_order: Tensor | None = None, natural_output: bool = True) -> ExpandedLayer:
    """One expanded layer in a packed layout: ``layout`` names one, or ``"auto"`` tries auto's order.

    ``input_order``: the natural unit at each input position when the previous layer emits its own
    order; ``natural_output=False``: the next layer reads any order, so this one may emit its own.
    Training mode, the parent's shape and ``requires_grad`` are carried over whatever the layout.
    """
    refused = _refusal(layer, name)
    if refused is not None:
        raise refused
    masked = layer if isinstance(layer, MaskedLinear) else layer.to_masked()
    alpha = row_factor(masked.out_features, masked.parent_features)
    options = {"max_groups": max_groups, "natural_output": natural_output}
    if input_order is not None:
        options["input_order"] = input_order
    if layout == "auto":
        packed, errors = None, []
        for cls in auto_layouts():
            try:
                packed = cls.from_masked(masked, alpha, auto=True, **options)
                break
            except LayoutError as error:
                errors.append(f"{cls.layout}: {error}")
        if packed is None:
            raise InvalidParameterError(f"layer {name!r} fits no layout auto tries ({'; '.join(errors)})")
    else:
        cls = LAYOUTS[layout]
        try:
            packed = cls.from_masked(masked, alpha, auto=False, **options)
        except LayoutError as error:
            words = getattr(cls, "in_words", "") or f"as {layout!r}"
            raise InvalidParameterError(f"layer {name!r} cannot be packed {words}: {error}") from None
    packed.parent_features = masked.parent_features
    packed.train(layer.training)
    packed.freeze_like(layer)
    return packed


def pack(model: nn.Module, layout: str | Mapping[str, str] = "auto", *, max_groups: int = MAX_GROUPS) -> nn.Module:
    """A copy of ``model`` with every expanded layer in a packed layout; ``model`` is not modified.

    Args:
        model: a model returned by :func:`torchfpe.expand` (or loaded by :func:`torchfpe.load_expanded`).
        layout: ``"auto"`` (per layer, the first layout in auto's order whose masks fit: ``block``
            where the children of at most ``max_groups`` groups of parents share input partitions, or
            rows reading copied columns share their inputs (``budget="structured"``); else ``parent``
            where every parent entry is held by one child (the default ``random`` split); else
            ``ell``), a packable layout's name (``"block"``, ``"parent"``, ``"ell"``, or one registered
            with :func:`~torchfpe.core.layouts.register_layout`), or a dict naming one per expanded layer.
        max_groups: the most parent groups ``auto`` puts into blocks.

    Raises ``InvalidParameterError`` naming the layer for: no expanded layer, a DropConnect control,
    an already packed layer, an unknown layout, or a forced layout the layer's masks do not fit. The
    result is exact: outputs and gradients equal the masked model's up to float rounding, and each
    weight and bias keeps its ``requires_grad``.
    """
    # -- check
    validate_params({"model": model, "max_groups": max_groups}, PACK_PARAMETERS, "pack")
    layers = dict(expanded_layers(model))
    names = list(layers)
    if not names:
        raise InvalidParameterError("pack: the model has no expanded layer (torchfpe.expand it first)")
    if isinstance(layout, Mapping):
        unknown = [name for name in layout if name not in layers]
        if unknown:
            raise InvalidParameterError(f"layout names {unknown}, which are not expanded layers; expanded layers: {names}")
        choices = {name: layout.get(name, "auto") for name in names}
    else:
        choices = {name: layout for name in names}
    allowed = ["auto", *packable_layouts()]
    for name, choice in choices.items():
        if not isinstance(choice, str) or choice not in allowed:
            raise InvalidParameterError(f"layout for layer {name!r} is {choice!r}; allowed: {', '.join(allowed)}")
        refused = _refusal(layers[name], name)
        if refused is not None:
            raise refused

    # -- plan: in a Sequential chain a producer may emit its own order when its consumer reads any order
    producer_of: dict[str, str] = {}
    if isinstance(model, nn.Sequential):
        for producer, consumer in find_hidden_pairs(model, (nn.Linear, ExpandedLayer)):
            if producer in layers and consumer in layers and all(
                    getattr(cls, "reads_input_order", False) for cls in _candidates(choices[consumer])):
                producer_of[consumer] = producer
    consumers = set(producer_of.values())

    # -- build each layer once, producers first
    built: dict[str, ExpandedLayer] = {}

    def build(name: str) -> ExpandedLayer:
        if name not in built:
            producer = producer_of.get(name)
            input_order = None if producer is None else build(producer).output_order()
            built[name] = pack_layer(layers[name], choices[name], name=name, max_groups=max_groups,
                                     input_order=input_order, natural_output=name not in consumers)
        return built[name]

    for name in names:
        build(name)

    # -- copy the rest of the model around the built layers (the memo stands them in for the originals)
    packed = copy.deepcopy(model, {id(layers[name]): built[name] for name in names})
    mark_fixed_buffers(packed)
    return packed


def unpack(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every packed layer back in the masked reference layout."""
    check_param("model", model, [nn.Module], "unpack")
    packed = [module for _, module in expanded_layers(model) if module.packable]
    if not packed:
        raise InvalidParameterError("unpack: the model has no packed layer (torchfpe.pack returns packed models)")
    masked = {}
    for module in packed:
        layer = module.to_masked()
        layer.freeze_like(module)
        layer.train(module.training)
        masked[id(module)] = layer
    unpacked = copy.deepcopy(model, masked)
    mark_fixed_buffers(unpacked)
    return unpacked


#: the attribute DistributedDataParallel reads on the module it wraps: names it neither broadcasts nor reduces
DDP_IGNORE = "_ddp_params_and_buffers_to_ignore"
#: the names :func:`mark_fixed_buffers` added there (so a later call replaces them, not a user's own)
_MARKED = "_torchfpe_fixed_buffers"


def fixed_buffer_names(model: nn.Module) -> list[str]:
    """The full names of the buffers of ``model``'s packed layers: index, hole and order tensors that
    never change while the values train, built from the same masks on every rank."""
    names = []
    for prefix, layer in expanded_layers(model):
        if layer.packable:
            names += [f"{prefix}.{name}" if prefix else name for name, _ in layer.named_buffers()]
    return names


def mark_fixed_buffers(model: nn.Module) -> nn.Module:
    """Tell ``DistributedDataParallel`` wrapping ``model`` to leave its packed layers' buffers alone.

    Why not broadcast them: they are fixed (the masks do not train), so DDP's broadcast before every
    forward (``broadcast_buffers=True``, its default) would copy megabytes of indices per step for
    nothing; and gloo refuses int16, which the narrow indices use. Each rank must build the same
    model (the same ``expand`` seed, or the same file), as it must for the masks of the masked layout.
    :func:`pack` and :func:`unpack` call this on the model they return; call it on a wrapper that holds
    a packed model before wrapping it in DDP. Returns ``model``, marked (the DDP attribute
    ``_ddp_params_and_buffers_to_ignore``; names the user put there stay).
    """
    previous = set(getattr(model, _MARKED, ()))
    names = fixed_buffer_names(model)
    kept = [name for name in getattr(model, DDP_IGNORE, ()) if name not in previous]
    setattr(model, DDP_IGNORE, kept + [name for name in names if name not in kept])
    setattr(model, _MARKED, names)
    return model


def stored_bytes(model: nn.Module) -> int:
    """Bytes of every tensor in ``model.state_dict()`` (what saving the model stores)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, Tensor))
