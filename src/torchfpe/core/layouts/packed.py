"""What the packed layouts share: the base class :class:`PackedLinear` and its helpers.

A packed layout stores only what the parent stored (values, bias, compact indices), so its time and
bytes follow the parent's non-zero count; see :mod:`torchfpe.core.layouts` for the layouts and how to
add one. Besides the contract of :class:`~torchfpe.core.layouts.base.ExpandedLayer`, a packed layout
provides the classmethod ``from_masked`` and checks its saved index tensors before loading them
(``check_saved``), so a tampered ``state_dict`` is refused with the key named.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..validation import InvalidParameterError
from .base import ExpandedLayer
from .masked import MaskedLinear


class MaskGrad(torch.autograd.Function):
    """Identity in the forward pass; multiplies the gradient by a fixed mask in the backward pass."""

    @staticmethod
    def forward(ctx, tensor: Tensor, mask: Tensor) -> Tensor:  # noqa: D102
        ctx.save_for_backward(mask)
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        (mask,) = ctx.saved_tensors
        return grad * mask, None


def autocast_operands(device: torch.device, *tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """The floating ``tensors`` in autocast's dtype where autocast is on for ``device``, else unchanged.

    What ``cast_inputs`` of :func:`torch.amp.custom_fwd` does, for whichever device the layer is on (the
    decorator fixes one device type). A custom autograd Function fed these runs its forward and its
    backward in one dtype, as autocast's own ``F.linear`` would; gradients reach the float32 weights
    through the cast, in float32.
    """
    if not torch.is_autocast_enabled(device.type):
        return tensors
    dtype = torch.get_autocast_dtype(device.type)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != dtype else t for t in tensors)



class PaddedRowsBias:
    """The bias accessors of a layout whose output positions include padding rows: ``out_index`` holds
    the natural unit of each output position, -1 for padding (``block``, ``nested``); the bias is stored
    per output position, ``bias_live`` its live entries (``None``: all live)."""

    def _bias_natural(self) -> tuple[Tensor, Tensor]:
        natural = self.out_index.long()
        real = natural >= 0
        return natural[real], torch.nonzero(real).squeeze(1)

    def effective_bias(self) -> Tensor | None:
        if self.bias is None:
            return None
        natural, positions = self._bias_natural()
        bias = self.bias if self.bias_live is None else self.bias * self.bias_live
        return bias.new_zeros(self.out_features).index_put((natural,), bias[positions])

    def dense_bias_mask(self) -> Tensor | None:
        if self.bias is None:
            return None
        natural, positions = self._bias_natural()
        live = torch.ones_like(self.bias, dtype=torch.bool) if self.bias_live is None else self.bias_live
        mask = torch.zeros(self.out_features, dtype=torch.bool, device=self.bias.device)
        mask[natural] = live[positions]
        return mask

    def store_bias_(self, bias: Tensor, bias_live: Tensor, out_flat: Tensor) -> None:
        """Fill the stored bias from the natural ``bias`` (``from_masked``): each output position takes its
        unit's value, 0 at padding rows and holes; ``bias_holes`` (when stored) the dead positions."""
        device = self.bias.device
        real = out_flat >= 0
        stored = bias.new_zeros(out_flat.numel())
        stored[real.to(device)] = bias[out_flat[real].to(device)]
        self.bias.copy_(stored * bias_live.to(device))
        if self.bias_holes is not None:
            self.bias_holes.copy_(~bias_live)


def pack_bits(mask: Tensor) -> Tensor:
    """A boolean tensor as bytes, 8 entries a byte (the first entry in the lowest bit)."""
    flat = mask.reshape(-1).to(torch.uint8)
    flat = F.pad(flat, (0, (-flat.numel()) % 8))
    weights = (2 ** torch.arange(8, device=flat.device)).to(torch.uint8)
    return (flat.view(-1, 8) * weights).sum(dim=1).to(torch.uint8)


def unpack_bits(bits: Tensor, count: int) -> Tensor:
    """The first ``count`` entries of :func:`pack_bits`' bytes, as booleans (computed in uint8: a byte
    an entry while it runs, so layers unpack their holes per call instead of keeping them)."""
    shifts = torch.arange(8, device=bits.device, dtype=torch.uint8)
    entries = (bits.unsqueeze(1) >> shifts).bitwise_and_(1)  # 0 or 1: one uint8 tensor, viewed as bool
    if torch.compiler.is_compiling():  # inductor's C++ code cannot convert a viewed bool vector to float
        return (entries != 0).reshape(-1)[:count]
    return entries.view(torch.bool).reshape(-1)[:count]


def compact(index: Tensor, limit: int) -> Tensor:
    """Indices in the smallest integer type that holds ``limit`` (int16 or int32)."""
    return index.to(torch.int16 if limit < 2**15 else torch.int32)


def stored_bias(layer: MaskedLinear) -> tuple[Tensor | None, Tensor | None]:
    if layer.bias is None:
        return None, None
    return layer.bias.detach() * layer.bias_mask, layer.bias_mask.clone()


def row_factor(out_features: int, parent_features) -> int:
    """Children per parent unit of a layer: its outputs over the parent's (1 when unknown)."""
    if parent_features is None or out_features % int(parent_features[1]):
        return 1
    return out_features // int(parent_features[1])


def positions_of(natural_of_position: Tensor) -> Tensor:
    """The inverse permutation: the position of each natural unit."""
    inverse = torch.empty_like(natural_of_position)
    inverse[natural_of_position] = torch.arange(len(natural_of_position), device=natural_of_position.device)
    return inverse


class SavedTensors:
    """The tensors one packed layer is about to load, read for checks; errors name the full key."""

    def __init__(self, state_dict: Mapping, prefix: str, layer: nn.Module, saved: Mapping | None = None) -> None:
        self.state_dict, self.prefix, self.layer, self.saved = state_dict, prefix, layer, saved
        self.where = f"layer {prefix[:-1]!r}" if prefix else "the model's top-level layer"

    def error(self, name: str, message: str) -> InvalidParameterError:
        return InvalidParameterError(f"{self.where}: state_dict key {self.prefix + name!r} {message}")

    def extra(self) -> Mapping:
        """The saved metadata when it is there, else the layer's."""
        return self.saved if self.saved is not None else self.layer.layout_state()

    def raw(self, name: str) -> Tensor | None:
        value = self.state_dict.get(self.prefix + name)
        return value if isinstance(value, Tensor) and getattr(self.layer, name, None) is not None else None

    def indices(self, name: str) -> Tensor | None:
        """The saved index tensor ``name`` as int64 on the CPU, when the layer has it and the shape fits
        (a wrong shape is left to ``load_state_dict``'s own size check)."""
        value = self.raw(name)
        if value is None or value.shape != getattr(self.layer, name).shape:
            return None
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise self.error(name, f"holds {value.dtype} values; indices are integers")
        return value.detach().cpu().long()

    def check_permutation(self, name: str) -> None:
        natural = self.indices(name)
        if natural is None:
            return
        size = natural.numel()
        outside = natural[(natural < 0) | (natural >= size)]
        if outside.numel():
            raise self.error(name, f"is not a permutation of 0..{size - 1}: it holds {int(outside[0])}")
        counts = torch.bincount(natural, minlength=size)
        if (counts != 1).any():
            raise self.error(name, f"is not a permutation of 0..{size - 1}: it holds "
                                   f"{int(torch.nonzero(counts > 1)[0])} twice")


def _refresh_after_load(module: nn.Module, incompatible_keys) -> None:
    module._refresh()


class PackedLinear(ExpandedLayer, nn.Module):
    """Shared parts of the packed layouts: bias handling, checks and refresh around loading.

    A subclass stores a ``values`` parameter, an optional ``bias`` and index buffers, and provides
    (besides the :class:`ExpandedLayer` contract) ``from_masked``, ``_value_live`` (which stored values
    are real), ``_refresh`` (rebuild derived tensors after loading) and ``check_saved``.
    """

    packable: ClassVar[bool] = True
    weight_parameter: ClassVar[str] = "values"
    #: ``from_masked`` accepts ``input_order`` (the producer emits its own order; see ``output_order``).
    reads_input_order: ClassVar[bool] = False
    #: how refusals of ``pack(layout=...)`` name the layout: "layer 'x' cannot be packed <in_words>: ..."
    in_words: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self.register_load_state_dict_post_hook(_refresh_after_load)

    @property
    def weight(self) -> Tensor:
        """The stored weight parameter (``values``): packed, not the dense (out, in) matrix, which
        ``effective_weight()`` gives. It is there for models that read ``layer.weight.dtype`` or
        ``.device`` in their forward pass (T5's ``wo``), as they do for quantised layers."""
        return nn.Module.__getattr__(self, self.weight_parameter)  # the registered parameter, never this property

    @classmethod
    @abstractmethod
    def from_masked(cls, layer: MaskedLinear, alpha: int, **options) -> PackedLinear:
        """The masked ``layer`` (``alpha`` children per parent) in this layout; raises :class:`LayoutError`
        when its masks do not fit. Options ``pack`` passes (a layout ignores those it has no use for):

        - ``auto`` (bool): ``pack`` is choosing; refuse (``LayoutError``) masks the layout can hold but
          would run slower than the next layout in ``auto``'s order;
        - ``max_groups`` (int): ``pack``'s ``max_groups``;
        - ``input_order`` (Tensor or None): the natural input unit at each input position, when the
          previous layer emits another order (passed only to layouts with ``reads_input_order``);
        - ``natural_output`` (bool): False when the next layer reads any order: the layer may emit its
          own (reported by ``output_order()``) to save a copy.
        """

    @abstractmethod
    def _refresh(self) -> None:
        """Rebuild the derived (non-saved) tensors from the saved ones."""

    @abstractmethod
    def _value_live(self) -> Tensor:
        """Boolean, shape of ``values``: the stored values that are real weights (not holes or padding)."""

    @abstractmethod
    def check_saved(self, saved: SavedTensors) -> None:
        """Refuse (``raise saved.error(name, ...)``) saved index tensors that do not describe a layer."""

    def _check_saved_state(self, state_dict: Mapping, prefix: str, saved: dict | None) -> None:
        self.check_saved(SavedTensors(state_dict, prefix, self, saved))  # before any tensor of this layer is copied

    def cached_weight(self, build) -> Tensor:
        """``build()`` (a dense weight), kept until the values change: for calls without gradients on
        small layers, where building it each call costs more than the product (see the layouts'
        ``*_MIN_SIZE`` constants). Kept outside the module's buffers: never saved, rebuilt after a
        move, a load or an optimizer step (the values' version or storage changes)."""
        values = self.values
        key = (values.data_ptr(), values._version, values.device, values.dtype)
        cache = self.__dict__.get("_weight_cache")
        if cache is None or cache[0] != key:
            cache = (key, build())
            self.__dict__["_weight_cache"] = cache
        return cache[1]

    def _masked_bias(self) -> Tensor | None:
        if self.bias is None or self.bias_live is None or not (torch.is_grad_enabled() and self.bias.requires_grad):
            return self.bias
        return MaskGrad.apply(self.bias, self.bias_live)

    def effective_bias(self) -> Tensor | None:  # a layout whose bias has its own layout overrides both
        if self.bias is None:
            return None
        return self.bias if self.bias_live is None else self.bias * self.bias_live

    def dense_bias_mask(self) -> Tensor | None:
        if self.bias is None:
            return None
        return torch.ones_like(self.bias, dtype=torch.bool) if self.bias_live is None else self.bias_live.clone()

    def apply_mask_(self) -> None:
        with torch.no_grad():
            self.values.mul_(self._value_live())
            if self.bias is not None and self.bias_live is not None:
                self.bias.mul_(self.bias_live)

    def masked_out_nonzero(self) -> int:
        count = int(torch.count_nonzero(self.values.detach()[~self._value_live()]))
        if self.bias is not None and self.bias_live is not None:
            count += int(torch.count_nonzero(self.bias.detach()[~self.bias_live]))
        return count

    def nonzero_count(self) -> int:
        count = int(torch.count_nonzero(self.values.detach() * self._value_live()))
        bias = self.effective_bias()
        return count + (0 if bias is None else int(torch.count_nonzero(bias.detach())))

    def to_masked(self) -> MaskedLinear:
        with torch.no_grad():
            bias = self.effective_bias()
            layer = MaskedLinear.from_tensors(self.effective_weight().detach(), None if bias is None else bias.detach(),
                                              self.dense_weight_mask(), self.dense_bias_mask())
        layer.parent_features = self.parent_features
        layer.train(self.training)
        layer.freeze_like(self)
        return layer
