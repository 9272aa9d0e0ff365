"""One interface for expanded layers, whatever their storage layout.

Every reader (``expand`` expanding again, ``load_expanded``, the batched trainer, the metrics) asks an
expanded layer for the same few things through :class:`ExpandedLayer`, never for buffer names:

- ``effective_weight()`` / ``effective_bias()``: the dense ``(out_features, in_features)`` weight and
  the bias, in the natural unit order (child ``k`` of parent ``i`` at ``alpha * i + k``), zero where
  masked; differentiable with respect to the layer's parameters;
- ``dense_weight_mask()`` / ``dense_bias_mask()``: the fixed masks as dense boolean views;
- ``nonzero_count()``: the non-zero entries of weight and bias that the layer stores;
- ``to_masked()``: the same layer in the reference layout, :class:`~torchfpe.core.masked.MaskedLinear`;
- ``apply_mask_()``: re-zero stored masked entries (for optimizers outside torch.optim's zero-state
  class);
- ``layout``: the layout's name, also written to the ``state_dict`` (``get_extra_state``) together with
  the rest of the non-tensor state, so :func:`torchfpe.load_expanded` can rebuild the layer.

A new layout subclasses :class:`ExpandedLayer`, registers itself with :func:`register_layout`, and
provides ``empty_from_state(extra, tensors)``: a layer of the right shapes built from its saved extra
state and tensors (values are loaded afterwards by ``load_state_dict``). Its tests compare it with
``MaskedLinear`` (outputs, gradients, training).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

#: layout name -> class; filled by :func:`register_layout`.
LAYOUTS: dict[str, type] = {}


def register_layout(cls: type) -> type:
    """Class decorator: make a layout known to :func:`torchfpe.load_expanded` by its ``layout`` name."""
    LAYOUTS[cls.layout] = cls
    return cls


class ExpandedLayer:
    """Mixin marking an expanded layer and stating the contract every layout meets (see module doc)."""

    layout: str = ""
    in_features: int
    out_features: int
    #: (in_features, out_features) of the parent layer this one was expanded from, when known.
    parent_features: tuple[int, int] | None = None

    def effective_weight(self) -> Tensor:
        raise NotImplementedError

    def effective_bias(self) -> Tensor | None:
        raise NotImplementedError

    def dense_weight_mask(self) -> Tensor:
        raise NotImplementedError

    def dense_bias_mask(self) -> Tensor | None:
        raise NotImplementedError

    def nonzero_count(self) -> int:
        weight = self.effective_weight().detach()
        bias = self.effective_bias()
        return int(torch.count_nonzero(weight)) + (0 if bias is None else int(torch.count_nonzero(bias.detach())))

    def to_masked(self) -> nn.Module:
        raise NotImplementedError

    def masked_out_nonzero(self) -> int:
        """Stored entries that are non-zero where the mask is off (0 for a healthy layer)."""
        raise NotImplementedError

    def apply_mask_(self) -> None:
        raise NotImplementedError

    def layout_state(self) -> dict:
        """Non-tensor state saved in the ``state_dict`` (layout name first)."""
        return {"layout": self.layout, "in_features": self.in_features, "out_features": self.out_features,
                "parent_features": None if self.parent_features is None else list(self.parent_features)}

    def get_extra_state(self) -> dict:
        return self.layout_state()

    def set_extra_state(self, state: dict) -> None:
        if not isinstance(state, Mapping) or state.get("layout") != self.layout:
            got = state.get("layout") if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"state for a {self.layout!r} layer holds layout {got!r}")
        if (state.get("in_features"), state.get("out_features")) != (self.in_features, self.out_features):
            raise ValueError(
                f"state for a {self.layout!r} layer of shape {self.out_features}x{self.in_features} has shape "
                f"{state.get('out_features')}x{state.get('in_features')}"
            )
        parent = state.get("parent_features")
        self.parent_features = None if parent is None else (int(parent[0]), int(parent[1]))


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


def layout_of(extra: object) -> str | None:
    """The layout name in a saved extra state, or ``None`` if it is not an expanded layer's."""
    if isinstance(extra, Mapping) and isinstance(extra.get("layout"), str) and extra["layout"] in LAYOUTS:
        return extra["layout"]
    return None
