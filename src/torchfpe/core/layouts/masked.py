"""The reference layouts ``masked`` and ``dropconnect``: an ``nn.Linear`` with fixed boolean masks as buffers.

Like ``torch.nn.utils.prune``, the mask is a buffer beside an ordinary weight, so the module saves and
loads through ``state_dict``. Unlike it, the stored weight itself is kept at exactly 0.0 where the mask
is 0, so counting non-zeros of the parameters gives the true budget.

Why masked entries stay 0.0 under any optimizer: the forward pass uses ``weight * mask``, so the
gradient of a masked entry is exactly 0. An entry that is 0.0, has gradient 0.0 and fresh optimizer
state (all of torch.optim's optimizers start their state at zero) receives a zero update from SGD
(with momentum, Nesterov, weight decay), Adam, AdamW (decoupled decay multiplies 0.0), RMSprop,
Adagrad and the rest. ``apply_masks_`` re-zeroes stored weights for optimizers outside that class.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..validation import InvalidParameterError, check_param
from .base import ExpandedLayer, register_layout


@register_layout
class MaskedLinear(ExpandedLayer, nn.Linear):
    """``nn.Linear`` whose weight (and bias) are multiplied by fixed boolean masks: the reference layout.

    Buffers ``weight_mask`` (shape of ``weight``) and ``bias_mask`` (shape of ``bias``, or ``None``)
    are saved in ``state_dict``, with the layout's name and the parent's shape as extra state. Being a
    subclass of ``nn.Linear``, an expanded model can be expanded again. Every other layout is tested
    against this one.
    """

    layout = "masked"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.register_buffer("weight_mask", torch.ones(out_features, in_features, dtype=torch.bool, device=device))
        if bias:
            self.register_buffer("bias_mask", torch.ones(out_features, dtype=torch.bool, device=device))
        else:
            self.register_buffer("bias_mask", None)

    @classmethod
    def from_tensors(
        cls,
        weight: Tensor,
        bias: Tensor | None,
        weight_mask: Tensor,
        bias_mask: Tensor | None,
    ) -> "MaskedLinear":
        """Build a layer holding copies of the given tensors; stored values are masked.

        ``weight`` is a 2-D floating tensor, ``weight_mask`` a boolean tensor of its shape; ``bias``
        (or ``None``) has one entry per output and ``bias_mask`` (``None`` exactly when ``bias`` is)
        its shape. Anything else raises ``InvalidParameterError`` naming the argument.
        """
        _check_tensors(weight, bias, weight_mask, bias_mask)
        out_features, in_features = weight.shape
        layer = cls(in_features, out_features, bias=bias is not None, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            layer.weight_mask.copy_(weight_mask)
            layer.weight.copy_(weight * weight_mask)
            if bias is not None:
                layer.bias_mask.copy_(bias_mask)
                layer.bias.copy_(bias * bias_mask)
        return layer

    def masked_weight(self) -> Tensor:
        return self.weight * self.weight_mask

    def masked_bias(self) -> Tensor | None:
        return None if self.bias is None else self.bias * self.bias_mask

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 - nn.Linear's own name
        return F.linear(input, self.masked_weight(), self.masked_bias())

    # ExpandedLayer interface
    def effective_weight(self) -> Tensor:
        return self.masked_weight()

    def effective_bias(self) -> Tensor | None:
        return self.masked_bias()

    def dense_weight_mask(self) -> Tensor:
        return self.weight_mask

    def dense_bias_mask(self) -> Tensor | None:
        return None if self.bias is None else self.bias_mask

    def to_masked(self) -> "MaskedLinear":
        """A plain masked copy (a DropConnect layer loses its training-time drop)."""
        layer = MaskedLinear.from_tensors(self.weight.detach(), None if self.bias is None else self.bias.detach(),
                                          self.weight_mask, self.bias_mask)
        layer.parent_features = self.parent_features
        layer.train(self.training)
        layer.freeze_like(self)
        return layer

    def masked_out_nonzero(self) -> int:
        """Stored entries that are non-zero where the mask is off (0 for a healthy layer)."""
        count = int(torch.count_nonzero(self.weight.detach()[~self.weight_mask]))
        if self.bias is not None:
            count += int(torch.count_nonzero(self.bias.detach()[~self.bias_mask]))
        return count

    @classmethod
    def empty_from_state(cls, extra: dict, tensors: dict[str, Tensor], device=None) -> "MaskedLinear":
        """A layer of the saved shapes (values are loaded afterwards by ``load_state_dict``)."""
        weight = tensors["weight"]
        shape = (int(extra["out_features"]), int(extra["in_features"]))
        if tuple(weight.shape) != shape or tuple(tensors["weight_mask"].shape) != shape:
            raise ValueError(f"weight {tuple(weight.shape)} or weight_mask {tuple(tensors['weight_mask'].shape)} "
                             f"is not {shape}")
        layer = cls(shape[1], shape[0], bias="bias" in tensors, device=device or weight.device, dtype=weight.dtype)
        return layer.restored_from(extra)

    @torch.no_grad()
    def apply_mask_(self) -> None:
        """Set stored masked entries to exactly 0.0 (a no-op after any torch.optim step)."""
        self.weight.mul_(self.weight_mask)
        if self.bias is not None:
            self.bias.mul_(self.bias_mask)

    def density(self) -> float:
        return float(self.weight_mask.float().mean())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, density={self.density():.3f}"


@register_layout
class DropConnectLinear(MaskedLinear):
    """A masked linear layer that, in training mode, also drops each weight with probability ``p``.

    Kept weights are scaled by ``1 / (1 - p)`` so evaluation uses the plain weights. The random drop
    uses torch's global generator, so seed training with ``torch.manual_seed``. This is the
    DropConnect control: the parent's width and non-zero count, with random sparsity at train time.
    """

    layout = "dropconnect"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, p: float = 0.5, **kwargs) -> None:
        super().__init__(in_features, out_features, bias=bias, **kwargs)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"p must be in [0, 1), got {p!r}")
        self.p = float(p)

    def layout_state(self) -> dict:
        return {**super().layout_state(), "p": self.p}

    def refuses_packing(self) -> str:
        return ("is a DropConnect control: its training-time drop needs the dense masked weight, so it cannot "
                "be packed (it already has the parent's width)")

    def apply_layout_state(self, state: Mapping) -> None:
        super().apply_layout_state(state)
        p = state.get("p")
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p < 1.0:
            raise ValueError(f"it holds p={p!r}; a dropconnect layer's p is a number in [0, 1)")
        self.p = float(p)

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002
        weight = self.masked_weight()
        if self.training and self.p > 0:
            keep = torch.rand_like(weight) >= self.p
            weight = weight * keep / (1.0 - self.p)
        return F.linear(input, weight, self.masked_bias())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p}"


def _check_tensors(weight, bias, weight_mask, bias_mask) -> None:
    """``MaskedLinear.from_tensors``' arguments: the shapes and dtypes its docstring states."""
    def refuse(name: str, expected: str, value) -> InvalidParameterError:
        got = f"a {value.dtype} tensor of shape {tuple(value.shape)}" if isinstance(value, Tensor) else \
            type(value).__name__
        return InvalidParameterError(f"the {name!r} parameter of MaskedLinear.from_tensors must be {expected}; got {got}")

    if not isinstance(weight, Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise refuse("weight", "a 2-D floating tensor (out_features, in_features)", weight)
    shape = tuple(weight.shape)
    if not isinstance(weight_mask, Tensor) or weight_mask.dtype != torch.bool or tuple(weight_mask.shape) != shape:
        raise refuse("weight_mask", f"a torch.bool tensor of the weight's shape {shape}", weight_mask)
    if bias is None:
        if bias_mask is not None:
            raise refuse("bias_mask", "None when bias is None", bias_mask)
        return
    if not isinstance(bias, Tensor) or tuple(bias.shape) != shape[:1] or not bias.is_floating_point():
        raise refuse("bias", f"None or a floating tensor of shape {shape[:1]}", bias)
    if not isinstance(bias_mask, Tensor) or bias_mask.dtype != torch.bool or tuple(bias_mask.shape) != shape[:1]:
        raise refuse("bias_mask", f"a torch.bool tensor of shape {shape[:1]} (bias is given)", bias_mask)


def apply_masks_(model: nn.Module) -> None:
    """Re-zero the stored masked entries of every expanded layer in ``model`` (any layout)."""
    check_param("model", model, [nn.Module], "apply_masks_")
    for module in model.modules():
        if isinstance(module, ExpandedLayer):
            module.apply_mask_()
