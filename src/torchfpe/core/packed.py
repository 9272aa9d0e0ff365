"""Packed layouts: expanded layers whose time and stored bytes follow the parent's non-zero count.

An expanded layer stored as a dense weight times a mask (:class:`~torchfpe.core.masked.MaskedLinear`)
costs alpha times its parent (alpha squared for a middle layer of a deep expansion). FPE's structure
allows better, and :func:`pack` picks per layer, from the layer's masks:

- ``block`` (:class:`BlockLinear`): where the children of a *group of parents* read one shared
  partition of the inputs (``contiguous``, ``feature``, ``clause`` with one clause map, ``grouped``
  random, or any split whose parents fall into a few groups), each (group, child) pair is one dense
  block of ``c`` shared inputs by ``r`` parents. One batched product ``(blocks, N, c) @ (blocks, c, r)``
  does exactly the parent's multiply-adds (plus padding where chunks differ in size). Entries the
  budget pruned inside a block are *holes*: stored as 0.0, their gradient masked to 0.0.
- ``ell`` (:class:`EllLinear`): anything else (an independent partition per parent, copied columns
  pruned by the global budget, the ``overlap`` and ``static_sparse`` controls): each output row keeps
  only its live values plus their input indices, padded to the longest row (ELLPACK). Small batches
  gather inputs (cost follows the non-zeros); large batches scatter the values into a dense weight
  and call one matrix product (the masked layout's cost, which is the best measured option there).

Outputs and gradients equal the masked layout's up to float rounding (tests compare every split and
control). Pruned entries stay at exactly 0.0 under any torch.optim optimizer for the reason given in
:mod:`torchfpe.core.masked`: their gradient is 0.0. In an ``nn.Sequential`` a block layer may emit its
units in block order, and the next packed layer reads them in that order (its input indices are
renumbered at pack time), which saves one copy per layer; ``effective_weight()`` and ``to_masked()``
always speak the natural order. Derived tensors (long indices, hole masks) are rebuilt after loading
and are not saved: the ``state_dict`` holds values, biases, compact indices and bit-packed holes.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .targets import find_hidden_pairs, set_submodule
from .layers import ExpandedLayer, expanded_layers, register_layout
from .masked import DropConnectLinear, MaskedLinear
from .validation import Interval, InvalidParameterError, check_param, validate_params


#: ``auto`` picks per layer; ``block`` and ``ell`` force one (``block`` refuses masks it cannot hold).
PACK_LAYOUTS = ("auto", "block", "ell")

#: Without gradients and up to this many examples, an ELL layer multiplies as a sparse CSR matrix
#: built on its values (no copy); above, it scatters its values into a dense weight and calls one
#: matrix product. Measured on one CPU thread (4096 x 1024 at 25 % fill): CSR 12x faster than the
#: dense path at batch 1 and 13x at 16, the dense path 1.8x faster at 256.
ELL_SPARSE_MAX_BATCH = 64
#: With gradients, torch's CSR backward converts the weight gradient to CSR (a sort; with the input
#: gradient over 20x the forward), so training gathers inputs per value up to this batch (memory
#: batch x values) and uses the dense path above it.
ELL_GATHER_MAX_BATCH = 4
#: Layers smaller than this (out_features x in_features) always take the dense path: for them the
#: sparse paths' fixed costs (building the CSR view, padding the input) outweigh the product.
ELL_SPARSE_MIN_SIZE = 1 << 18

#: Below this many examples a block layer copies its input into block order first (measured faster
#: for batch 1 on one thread); above, the batched product reads the strided view.
BLOCK_COPY_MAX_BATCH = 16

#: ``auto`` uses blocks only with at most this many parent groups (more groups means thin blocks)...
MAX_GROUPS = 16
#: ... and at most one group per this many parents: on the Boolean headline's shapes (8 parents)
#: blocks of one parent each trained 17x slower than the masked layout (bench/packed.py --headline).
MIN_GROUP_ROWS = 8


# ------------------------------------------------------------------------------------------ helpers
class _MaskGrad(torch.autograd.Function):
    """Identity in the forward pass; multiplies the gradient by a fixed mask in the backward pass."""

    @staticmethod
    def forward(ctx, tensor: Tensor, mask: Tensor) -> Tensor:  # noqa: D102
        ctx.save_for_backward(mask)
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        (mask,) = ctx.saved_tensors
        return grad * mask, None


class _BlockProduct(torch.autograd.Function):
    """``baddbmm(bias, x, values)`` whose value gradient is 0.0 at the holes (flat positions given).

    Zeroing the few hole positions of the freshly computed gradient costs the number of holes, not
    a pass over all values as a mask multiply would.
    """

    @staticmethod
    def forward(ctx, x: Tensor, values: Tensor, bias: Tensor | None, holes: Tensor) -> Tensor:  # noqa: D102
        ctx.save_for_backward(x, values, holes)
        ctx.has_bias = bias is not None
        return torch.bmm(x, values) if bias is None else torch.baddbmm(bias, x, values)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        x, values, holes = ctx.saved_tensors
        grad_x = torch.bmm(grad, values.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        grad_values = None
        if ctx.needs_input_grad[1]:
            grad_values = torch.bmm(x.transpose(1, 2), grad)
            grad_values.view(-1).index_fill_(0, holes, 0.0)
        grad_bias = grad.sum(dim=1, keepdim=True) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_values, grad_bias, None


class _EllDenseProduct(torch.autograd.Function):
    """``linear(x, W, bias)`` with W scattered from ELL values; the weight gradient is read back at
    the values' positions (padding points one past the end and reads 0). Same passes over memory as
    the masked layout: fill + scatter in place of ``weight * mask``, a ``take`` in place of
    ``grad * mask``."""

    @staticmethod
    def forward(ctx, x: Tensor, values: Tensor, bias: Tensor | None, flat_index: Tensor, shape: tuple) -> Tensor:  # noqa: D102
        size = shape[0] * shape[1]
        weight = values.new_zeros(size + 1)
        weight.scatter_(0, flat_index, values.reshape(-1))
        weight = weight[:size].view(shape)
        ctx.save_for_backward(x, weight, flat_index)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        x, weight, flat_index = ctx.saved_tensors
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        grad_values = None
        if ctx.needs_input_grad[1]:
            size = weight.numel()
            full = grad.new_empty(size + 1)
            full[size] = 0
            torch.mm(grad.T, x, out=full[:size].view(weight.shape))
            grad_values = full.take(flat_index).view(-1, flat_index.numel() // weight.shape[0])
        grad_bias = grad.sum(dim=0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_values, grad_bias, None, None


def _pack_bits(mask: Tensor) -> Tensor:
    flat = mask.reshape(-1).to(torch.uint8)
    flat = F.pad(flat, (0, (-flat.numel()) % 8))
    weights = (2 ** torch.arange(8, device=flat.device)).to(torch.uint8)
    return (flat.view(-1, 8) * weights).sum(dim=1).to(torch.uint8)


def _unpack_bits(bits: Tensor, count: int) -> Tensor:
    shifts = torch.arange(8, device=bits.device)
    return ((bits.unsqueeze(1).long() >> shifts) & 1).bool().reshape(-1)[:count]


def _compact(index: Tensor, limit: int) -> Tensor:
    """Indices in the smallest integer type that holds ``limit`` (int16 or int32)."""
    return index.to(torch.int16 if limit < 2**15 else torch.int32)


def _stored_bias(layer: nn.Module) -> tuple[Tensor | None, Tensor | None]:
    if layer.bias is None:
        return None, None
    return layer.bias.detach() * layer.bias_mask, layer.bias_mask.clone()


def _refresh_after_load(module: nn.Module, incompatible_keys) -> None:
    module._refresh()


class PackedLinear(ExpandedLayer, nn.Module):
    """Shared parts of the packed layouts: bias handling, state refresh after loading, checks."""

    def __init__(self) -> None:
        super().__init__()
        self.register_load_state_dict_post_hook(_refresh_after_load)

    def _refresh(self) -> None:
        raise NotImplementedError

    def _masked_bias(self) -> Tensor | None:
        if self.bias is None or self.bias_live is None or not (torch.is_grad_enabled() and self.bias.requires_grad):
            return self.bias
        return _MaskGrad.apply(self.bias, self.bias_live)

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
        return layer


# --------------------------------------------------------------------------------------- block layout
@register_layout
class BlockLinear(PackedLinear):
    """Dense blocks of shared inputs: one batched product at the parent's cost (see module doc).

    Stored: ``values`` (blocks, c, r); ``bias`` (blocks * r) in output-position order; ``in_index``
    (blocks, c) input positions (``in_features`` = padding, reads 0) unless the blocks are the
    contiguous chunks of the input; ``out_index`` (blocks * r) the natural unit of each output
    position (-1: padding row); ``in_natural`` (in_features) the natural unit of each input
    position, when the previous layer emits block order; ``hole_bits`` the bit-packed holes.
    """

    layout = "block"

    def __init__(self, in_features: int, out_features: int, blocks: int, chunk: int, rows: int, *, bias: bool,
                 contiguous: bool, has_holes: bool, has_bias_holes: bool, permuted_input: bool,
                 restore_order: bool = True, index_dtype: torch.dtype = torch.int32,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.blocks, self.chunk, self.rows = blocks, chunk, rows
        self.restore_order = restore_order
        self.values = nn.Parameter(torch.zeros(blocks, chunk, rows, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(blocks * rows, device=device, dtype=dtype)) if bias else None
        self.register_buffer("in_index", None if contiguous else
                             torch.zeros(blocks, chunk, dtype=index_dtype, device=device))
        self.register_buffer("out_index", torch.zeros(blocks * rows, dtype=torch.int32, device=device))
        self.register_buffer("in_natural", torch.zeros(in_features, dtype=index_dtype, device=device)
                             if permuted_input else None)
        self.register_buffer("hole_bits", torch.zeros((blocks * chunk * rows + 7) // 8, dtype=torch.uint8,
                                                      device=device) if has_holes else None)
        self.register_buffer("bias_holes", torch.zeros(blocks * rows, dtype=torch.bool, device=device)
                             if bias and has_bias_holes else None)
        self.register_buffer("live", None, persistent=False)
        self.register_buffer("hole_positions", None, persistent=False)
        self.register_buffer("bias_live", None, persistent=False)
        self.register_buffer("gather", None, persistent=False)
        self.register_buffer("restore", None, persistent=False)
        self.pad_input = False

    # -- derived tensors
    def _refresh(self) -> None:
        device = self.values.device
        if self.hole_bits is not None:
            self.live = ~_unpack_bits(self.hole_bits, self.values.numel()).view_as(self.values).to(device)
            self.hole_positions = torch.nonzero(~self.live.reshape(-1)).squeeze(1)
        else:
            self.live = self.hole_positions = None
        self.bias_live = None if self.bias_holes is None else ~self.bias_holes
        self.gather = None if self.in_index is None else self.in_index.long().reshape(-1)
        self.pad_input = False if self.gather is None else bool((self.gather == self.in_features).any())
        natural = self.out_index.long()
        if self.restore_order:
            restore = torch.full((self.out_features,), -1, dtype=torch.long, device=device)
            real = natural >= 0
            restore[natural[real]] = torch.nonzero(real).squeeze(1)
            identity = torch.equal(restore, torch.arange(self.out_features, device=device))
            self.restore = None if identity else restore
        else:
            self.restore = None

    def _value_live(self) -> Tensor:
        return torch.ones_like(self.values, dtype=torch.bool) if self.live is None else self.live

    def layout_state(self) -> dict:
        return {**super().layout_state(), "blocks": self.blocks, "chunk": self.chunk, "rows": self.rows,
                "restore_order": self.restore_order}

    def set_extra_state(self, state: dict) -> None:
        super().set_extra_state(state)
        if (state.get("blocks"), state.get("chunk"), state.get("rows")) != (self.blocks, self.chunk, self.rows):
            raise ValueError(f"saved block shape {(state.get('blocks'), state.get('chunk'), state.get('rows'))} "
                             f"is not this layer's {(self.blocks, self.chunk, self.rows)}")
        self.restore_order = bool(state.get("restore_order", True))

    # The state_dict stores only the live values (holes are known from hole_bits): a middle layer of
    # a deep expansion under the global budget fills its blocks to about 1/alpha, and storing the
    # holes would cost alpha times the parent's bytes.
    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.live is not None:
            values = destination[prefix + "values"]
            destination[prefix + "values"] = (values if keep_vars else values.detach())[self.live]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        key, bits_key = prefix + "values", prefix + "hole_bits"
        saved = state_dict.get(key)
        if isinstance(saved, Tensor) and saved.dim() == 1 and isinstance(state_dict.get(bits_key), Tensor):
            bits = state_dict[bits_key]
            if bits.dim() == 1 and bits.numel() == (self.values.numel() + 7) // 8:
                live = ~_unpack_bits(bits.to(saved.device), self.values.numel()).view_as(self.values)
                if int(live.sum()) == saved.numel():
                    full = saved.new_zeros(self.values.shape)
                    full[live] = saved
                    state_dict[key] = full
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    @classmethod
    def empty_from_state(cls, extra: dict, tensors: Mapping[str, Tensor], device=None) -> "BlockLinear":
        values = tensors["values"]
        blocks, chunk, rows = (int(extra["blocks"]), int(extra["chunk"]), int(extra["rows"]))
        if values.dim() == 1 and "hole_bits" in tensors:  # live values only (see _save_to_state_dict)
            live = ~_unpack_bits(tensors["hole_bits"], blocks * chunk * rows)
            if int(live.sum()) != values.numel():
                raise ValueError(f"{values.numel()} saved values for {int(live.sum())} live entries")
        elif tuple(values.shape) != (blocks, chunk, rows):
            raise ValueError(f"values {tuple(values.shape)} is not {(blocks, chunk, rows)}")
        index = tensors.get("in_index")
        layer = cls(int(extra["in_features"]), int(extra["out_features"]), blocks, chunk, rows,
                    bias="bias" in tensors, contiguous=index is None, has_holes="hole_bits" in tensors,
                    has_bias_holes="bias_holes" in tensors, permuted_input="in_natural" in tensors,
                    restore_order=bool(extra.get("restore_order", True)),
                    index_dtype=index.dtype if index is not None else torch.int32,
                    device=device or values.device, dtype=values.dtype)
        layer.set_extra_state(extra)
        return layer

    # -- compute
    def forward(self, input: Tensor) -> Tensor:  # noqa: A002
        leading = input.shape[:-1]
        x = input.reshape(-1, self.in_features)
        n = x.shape[0]
        if self.gather is None:
            xb = x.view(n, self.blocks, self.chunk).transpose(0, 1)
        else:
            if self.pad_input:
                x = F.pad(x, (0, 1))
            xb = x.index_select(1, self.gather).view(n, self.blocks, self.chunk).transpose(0, 1)
        if n <= BLOCK_COPY_MAX_BATCH:
            xb = xb.contiguous()
        bias = self._masked_bias()
        bias = None if bias is None else bias.view(self.blocks, 1, self.rows)
        if self.live is not None and torch.is_grad_enabled() and self.values.requires_grad:
            y = _BlockProduct.apply(xb, self.values, bias, self.hole_positions)
        elif bias is None:
            y = torch.bmm(xb, self.values)
        else:
            y = torch.baddbmm(bias, xb, self.values)
        y = y.transpose(0, 1).reshape(n, self.blocks * self.rows)
        if self.restore is not None:
            y = y.index_select(1, self.restore)
        return y.reshape(*leading, y.shape[-1])

    # -- interface
    def _coordinates(self) -> tuple[Tensor, Tensor, Tensor]:
        """(output natural unit, input natural unit, keep) for every stored value, flattened."""
        device = self.values.device
        blocks, chunk, rows = self.values.shape
        out_natural = self.out_index.long().view(blocks, 1, rows).expand(blocks, chunk, rows)
        if self.in_index is None:
            in_pos = torch.arange(self.in_features, device=device).view(blocks, chunk)
        else:
            in_pos = self.in_index.long()
        in_pos = in_pos.view(blocks, chunk, 1).expand(blocks, chunk, rows)
        keep = (out_natural >= 0) & (in_pos < self.in_features) & self._value_live()
        in_natural = in_pos.clamp(max=self.in_features - 1)
        if self.in_natural is not None:
            in_natural = self.in_natural.long()[in_natural]
        return out_natural.reshape(-1), in_natural.reshape(-1), keep.reshape(-1)

    def effective_weight(self) -> Tensor:
        out_n, in_n, keep = self._coordinates()
        weight = self.values.new_zeros(self.out_features, self.in_features)
        return weight.index_put((out_n[keep], in_n[keep]), self.values.reshape(-1)[keep])

    def dense_weight_mask(self) -> Tensor:
        out_n, in_n, keep = self._coordinates()
        mask = torch.zeros(self.out_features, self.in_features, dtype=torch.bool, device=self.values.device)
        mask[out_n[keep], in_n[keep]] = True
        return mask

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

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, blocks={self.blocks}, "
                f"chunk={self.chunk}, rows={self.rows}, bias={self.bias is not None}")


# ----------------------------------------------------------------------------------------- ELL layout
@register_layout
class EllLinear(PackedLinear):
    """Values plus input indices per output row, padded to the longest row (see module doc).

    Stored: ``values`` (out_features, width); ``in_index`` (out_features, width) input positions
    (``in_features`` = padding, reads an appended zero column, so padding slots get no gradient);
    ``bias``; ``in_natural`` as in :class:`BlockLinear`; ``bias_holes``.
    """

    layout = "ell"

    def __init__(self, in_features: int, out_features: int, width: int, *, bias: bool, has_bias_holes: bool,
                 permuted_input: bool, index_dtype: torch.dtype = torch.int32, device=None, dtype=None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.width = in_features, out_features, width
        self.values = nn.Parameter(torch.zeros(out_features, width, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        self.register_buffer("in_index", torch.zeros(out_features, width, dtype=index_dtype, device=device))
        self.register_buffer("in_natural", torch.zeros(in_features, dtype=index_dtype, device=device)
                             if permuted_input else None)
        self.register_buffer("bias_holes", torch.zeros(out_features, dtype=torch.bool, device=device)
                             if bias and has_bias_holes else None)
        self.register_buffer("index", None, persistent=False)
        self.register_buffer("crow", None, persistent=False)
        self.register_buffer("flat_index", None, persistent=False)
        self.register_buffer("bias_live", None, persistent=False)

    def _refresh(self) -> None:
        self.index = self.in_index.long()
        self.crow = torch.arange(self.out_features + 1, device=self.index.device) * self.width
        rows = torch.arange(self.out_features, device=self.index.device).view(-1, 1) * self.in_features
        self.flat_index = torch.where(self.index < self.in_features, rows + self.index,
                                      self.out_features * self.in_features).reshape(-1)
        self.bias_live = None if self.bias_holes is None else ~self.bias_holes

    def _value_live(self) -> Tensor:
        return self.in_index.long() < self.in_features

    def layout_state(self) -> dict:
        return {**super().layout_state(), "width": self.width}

    def set_extra_state(self, state: dict) -> None:
        super().set_extra_state(state)
        if state.get("width") != self.width:
            raise ValueError(f"saved row width {state.get('width')} is not this layer's {self.width}")

    @classmethod
    def empty_from_state(cls, extra: dict, tensors: Mapping[str, Tensor], device=None) -> "EllLinear":
        values, index = tensors["values"], tensors["in_index"]
        shape = (int(extra["out_features"]), int(extra["width"]))
        if tuple(values.shape) != shape or tuple(index.shape) != shape:
            raise ValueError(f"values {tuple(values.shape)} or in_index {tuple(index.shape)} is not {shape}")
        layer = cls(int(extra["in_features"]), shape[0], shape[1], bias="bias" in tensors,
                    has_bias_holes="bias_holes" in tensors, permuted_input="in_natural" in tensors,
                    index_dtype=index.dtype, device=device or values.device, dtype=values.dtype)
        layer.set_extra_state(extra)
        return layer

    def path(self, batch: int, training: bool) -> str:
        """Which product a batch takes: ``gather``, ``csr`` or ``dense`` (see the module constants)."""
        if self.out_features * self.in_features < ELL_SPARSE_MIN_SIZE:
            return "dense"
        if training:
            return "gather" if batch <= ELL_GATHER_MAX_BATCH else "dense"
        return "csr" if batch <= ELL_SPARSE_MAX_BATCH else "dense"

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002
        leading = input.shape[:-1]
        x = input.reshape(-1, self.in_features)
        bias = self._masked_bias()
        training = torch.is_grad_enabled() and (self.values.requires_grad or input.requires_grad)
        path = self.path(x.shape[0], training)
        if path == "gather":
            gathered = F.pad(x, (0, self.width)).index_select(1, self.index.reshape(-1))
            y = (gathered.view(-1, self.out_features, self.width) * self.values).sum(dim=2)
            if bias is not None:
                y = y + bias
        elif path == "csr":
            # padding slot s points at appended zero column in_features + s: it reads 0 and gets no
            # gradient, and every row's columns stay distinct and sorted as CSR requires
            # torch warns that CSR support is "beta"; the one product used here is covered by our tests.
            # Silenced here only, never in the user's global warning filters.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
                warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
                sparse = torch.sparse_csr_tensor(self.crow, self.index.reshape(-1), self.values.reshape(-1),
                                                 size=(self.out_features, self.in_features + self.width))
            y = (sparse @ F.pad(x, (0, self.width)).T).T
            if bias is not None:
                y = y + bias
        else:
            # one flat scatter; padding lands in one extra slot that is cut off, so the dense weight
            # is a contiguous view and padding gets no gradient
            shape = (self.out_features, self.in_features)
            if training:
                y = _EllDenseProduct.apply(x, self.values, bias, self.flat_index, shape)
            else:
                size = shape[0] * shape[1]
                weight = self.values.new_zeros(size + 1).scatter_(0, self.flat_index, self.values.reshape(-1))
                y = F.linear(x, weight[:size].view(shape), bias)
        return y.reshape(*leading, self.out_features)

    def _coordinates(self) -> tuple[Tensor, Tensor, Tensor]:
        index = self.in_index.long()
        rows = torch.arange(self.out_features, device=index.device).view(-1, 1).expand_as(index)
        keep = index < self.in_features
        natural = index.clamp(max=self.in_features - 1)
        if self.in_natural is not None:
            natural = self.in_natural.long()[natural]
        return rows.reshape(-1), natural.reshape(-1), keep.reshape(-1)

    def effective_weight(self) -> Tensor:
        rows, cols, keep = self._coordinates()
        weight = self.values.new_zeros(self.out_features, self.in_features)
        return weight.index_put((rows[keep], cols[keep]), self.values.reshape(-1)[keep])

    def dense_weight_mask(self) -> Tensor:
        rows, cols, keep = self._coordinates()
        mask = torch.zeros(self.out_features, self.in_features, dtype=torch.bool, device=self.values.device)
        mask[rows[keep], cols[keep]] = True
        return mask

    def effective_bias(self) -> Tensor | None:
        if self.bias is None:
            return None
        return self.bias if self.bias_live is None else self.bias * self.bias_live

    def dense_bias_mask(self) -> Tensor | None:
        if self.bias is None:
            return None
        return torch.ones_like(self.bias, dtype=torch.bool) if self.bias_live is None else self.bias_live.clone()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, width={self.width}, "
                f"bias={self.bias is not None}")


# ------------------------------------------------------------------------------------- from a masked layer
class LayoutError(ValueError):
    """The masks of a layer do not fit the requested layout."""


def _row_factor(layer: MaskedLinear) -> int:
    parent = layer.parent_features
    if parent is None or layer.out_features % parent[1]:
        return 1
    return layer.out_features // parent[1]


def _groups(mask: Tensor, alpha: int, max_groups: int) -> tuple[list[list[int]], list[Tensor]] | None:
    """Parents grouped so that each group's children read one shared partition of the inputs.

    Returns (parents of each group, child id per input of each group) or ``None`` when the children
    of a parent overlap, or more than ``max_groups`` groups would be needed.
    """
    parents = mask.shape[0] // alpha
    per_parent = mask.view(parents, alpha, -1)
    if (per_parent.sum(dim=1) > 1).any():
        return None  # children share an input: not a partition
    child = torch.where(per_parent.any(dim=1), per_parent.to(torch.int8).argmax(dim=1), -1).long()  # (parents, in)
    members: list[list[int]] = []
    assignments: list[Tensor] = []
    for parent in range(parents):
        row = child[parent]
        placed = False
        if assignments:
            stacked = torch.stack(assignments)
            fits = ((stacked == row) | (stacked < 0) | (row < 0)).all(dim=1)
            hits = torch.nonzero(fits)
            if len(hits):
                g = int(hits[0])
                members[g].append(parent)
                assignments[g] = torch.where(assignments[g] < 0, row, assignments[g])
                placed = True
        if not placed:
            if len(assignments) == max_groups:
                return None
            members.append([parent])
            assignments.append(row.clone())
    return members, assignments


def _to_block(layer: MaskedLinear, alpha: int, max_groups: int) -> BlockLinear:
    found = _groups(layer.weight_mask.cpu(), alpha, max_groups)
    if found is None:
        raise LayoutError(f"its children do not share input partitions in {max_groups} groups of parents or fewer")
    members, assignments = found
    in_features, out_features = layer.in_features, layer.out_features
    chunks: list[list[Tensor]] = []
    for assignment in assignments:
        assignment = assignment.clone()
        sizes = torch.bincount(assignment[assignment >= 0], minlength=alpha)
        for j in torch.nonzero(assignment < 0).squeeze(1).tolist():  # inputs no child reads: balance them
            k = int(torch.argmin(sizes))
            assignment[j] = k
            sizes[k] += 1
        chunks.append([torch.nonzero(assignment == k).squeeze(1) for k in range(alpha)])
    chunk = max(len(c) for group in chunks for c in group)
    rows = max(len(m) for m in members)
    blocks = len(members) * alpha
    weight = layer.weight.detach() * layer.weight_mask
    values = weight.new_zeros(blocks, chunk, rows)
    live = torch.zeros(blocks, chunk, rows, dtype=torch.bool)
    in_index = torch.full((blocks, chunk), in_features, dtype=torch.long)
    out_index = torch.full((blocks, rows), -1, dtype=torch.long)
    mask_cpu = layer.weight_mask.cpu()
    weight_cpu = weight.cpu()
    for g, (parents, group_chunks) in enumerate(zip(members, chunks)):
        parents_t = torch.tensor(parents)
        for k, inputs in enumerate(group_chunks):
            b = g * alpha + k
            units = parents_t * alpha + k
            in_index[b, : len(inputs)] = inputs
            out_index[b, : len(parents)] = units
            values[b, : len(inputs), : len(parents)] = weight_cpu[units][:, inputs].T.to(values.device)
            live[b, : len(inputs), : len(parents)] = mask_cpu[units][:, inputs].T
    bias, bias_mask = _stored_bias(layer)
    contiguous = torch.equal(in_index.reshape(-1), torch.arange(in_features)) and blocks * chunk == in_features
    out_flat = out_index.reshape(-1)
    bias_live = torch.zeros(blocks * rows, dtype=torch.bool)
    if bias is not None:
        real = out_flat >= 0
        bias_live[real] = bias_mask.cpu()[out_flat[real]]
    packed = BlockLinear(
        in_features, out_features, blocks, chunk, rows, bias=bias is not None, contiguous=contiguous,
        has_holes=not bool(live.all()), has_bias_holes=bias is not None and not bool(bias_live.all()),
        permuted_input=False, index_dtype=_compact(in_index, in_features + 1).dtype,
        device=layer.weight.device, dtype=layer.weight.dtype,
    )
    device = layer.weight.device
    with torch.no_grad():
        packed.values.copy_(values * live.to(device))
        if packed.in_index is not None:
            packed.in_index.copy_(in_index)
        packed.out_index.copy_(out_flat)
        if packed.hole_bits is not None:
            packed.hole_bits.copy_(_pack_bits(~live))
        if bias is not None:
            real = out_flat >= 0
            stored = bias.new_zeros(blocks * rows)
            stored[real.to(device)] = bias[out_flat[real].to(device)]
            packed.bias.copy_(stored * bias_live.to(device))
            if packed.bias_holes is not None:
                packed.bias_holes.copy_(~bias_live)
    packed.parent_features = layer.parent_features
    packed._refresh()
    return packed


def _to_ell(layer: MaskedLinear) -> EllLinear:
    mask = layer.weight_mask.cpu()
    counts = mask.sum(dim=1)
    width = max(1, int(counts.max()))
    # live inputs first in each row, in index order; padding points at the zero column
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :width]
    slots = torch.arange(width).view(1, -1)
    keep = slots < counts.view(-1, 1)
    index = torch.where(keep, order, layer.in_features + slots)
    weight = (layer.weight.detach() * layer.weight_mask).cpu()
    values = torch.where(keep, torch.gather(weight, 1, order), torch.zeros((), dtype=weight.dtype))
    bias, bias_mask = _stored_bias(layer)
    packed = EllLinear(
        layer.in_features, layer.out_features, width, bias=bias is not None,
        has_bias_holes=bias is not None and not bool(bias_mask.all()), permuted_input=False,
        index_dtype=_compact(index, layer.in_features + width).dtype, device=layer.weight.device, dtype=layer.weight.dtype,
    )
    with torch.no_grad():
        packed.values.copy_(values)
        packed.in_index.copy_(index)
        if bias is not None:
            packed.bias.copy_(bias)
            if packed.bias_holes is not None:
                packed.bias_holes.copy_(~bias_mask)
    packed.parent_features = layer.parent_features
    packed._refresh()
    return packed


def pack_layer(layer: nn.Module, layout: str = "auto", *, name: str = "layer", max_groups: int = MAX_GROUPS) -> PackedLinear:
    """One expanded layer in a packed layout (``auto``: blocks where a few parent groups share partitions)."""
    if isinstance(layer, DropConnectLinear):
        raise InvalidParameterError(f"layer {name!r} is a DropConnect control: its training-time drop needs the dense masked "
                         "weight, so it cannot be packed (it already has the parent's width)")
    if isinstance(layer, PackedLinear):
        raise InvalidParameterError(f"layer {name!r} is already packed ({layer.layout!r}); unpack the model first")
    if not isinstance(layer, ExpandedLayer):
        raise InvalidParameterError(f"layer {name!r} is a {type(layer).__name__}, not an expanded layer")
    masked = layer if isinstance(layer, MaskedLinear) else layer.to_masked()
    alpha = _row_factor(masked)
    if layout == "ell" or (layout == "auto" and alpha == 1):
        return _to_ell(masked)
    if layout == "auto":  # thin blocks lose to one dense product: at least MIN_GROUP_ROWS parents a group
        max_groups = min(max_groups, max(1, masked.out_features // (alpha * MIN_GROUP_ROWS)))
    try:
        return _to_block(masked, max(alpha, 1), max_groups if layout == "auto" else masked.out_features)
    except LayoutError as error:
        if layout == "block":
            raise InvalidParameterError(f"layer {name!r} cannot be packed in blocks: {error}") from None
        return _to_ell(masked)


def _renumber_inputs(layer: PackedLinear, natural_of_position: Tensor) -> None:
    """Make ``layer`` read its inputs in the producer's output order (``natural_of_position``)."""
    device = layer.values.device
    natural_of_position = natural_of_position.to(device)
    position_of_natural = torch.empty_like(natural_of_position)
    position_of_natural[natural_of_position] = torch.arange(len(natural_of_position), device=device)
    if isinstance(layer, BlockLinear) and layer.in_index is None:
        layer.register_buffer("in_index", torch.arange(layer.in_features, dtype=torch.int32,
                                                       device=device).view(layer.blocks, layer.chunk))
    index = layer.in_index.long()
    renumbered = torch.where(index < layer.in_features,
                             position_of_natural[index.clamp(max=layer.in_features - 1)], index)
    if isinstance(layer, BlockLinear):
        layer.in_index = _compact(renumbered, layer.in_features + 1)
    else:  # ELL rows must stay ascending: reorder each row's slots (and values) by the new numbers
        renumbered, order = torch.sort(renumbered, dim=1, stable=True)
        with torch.no_grad():
            layer.values.copy_(torch.gather(layer.values, 1, order))
        layer.in_index = _compact(renumbered, layer.in_features + layer.width)
    layer.register_buffer("in_natural", _compact(natural_of_position, layer.in_features + 1))
    layer._refresh()


#: pack's parameters and their constraints, declared once (torchfpe.core.validation).
PACK_PARAMETERS = {"model": [nn.Module], "max_groups": [Interval(int, 1)]}


def pack(model: nn.Module, layout: str | Mapping[str, str] = "auto", *, max_groups: int = MAX_GROUPS) -> nn.Module:
    """A copy of ``model`` with every expanded layer in a packed layout; ``model`` is not modified.

    Args:
        model: a model returned by :func:`torchfpe.expand` (or loaded by :func:`torchfpe.load_expanded`).
        layout: ``"auto"`` (per layer: ``block`` where the children of at most ``max_groups`` groups
            of parents share input partitions, else ``ell``), ``"block"``, ``"ell"``, or a dict
            naming one per expanded layer.
        max_groups: the most parent groups ``auto`` puts into blocks.

    Raises ``ValueError`` naming the layer for: no expanded layer, a DropConnect control, an already
    packed layer, or ``layout="block"`` where a layer's children do not partition shared inputs.
    The result is exact: outputs and gradients equal the masked model's up to float rounding.
    """
    validate_params({"model": model, "max_groups": max_groups}, PACK_PARAMETERS, "pack")
    names = [name for name, _ in expanded_layers(model)]
    if not names:
        raise InvalidParameterError("pack: the model has no expanded layer (torchfpe.expand it first)")
    if isinstance(layout, Mapping):
        unknown = [name for name in layout if name not in names]
        if unknown:
            raise InvalidParameterError(f"layout names {unknown}, which are not expanded layers; expanded layers: {names}")
        layouts = {name: layout.get(name, "auto") for name in names}
    else:
        layouts = {name: layout for name in names}
    for name, choice in layouts.items():
        if choice not in PACK_LAYOUTS:
            raise InvalidParameterError(f"layout for layer {name!r} is {choice!r}; allowed: {', '.join(PACK_LAYOUTS)}")
    packed_layers = {name: pack_layer(model.get_submodule(name), layouts[name], name=name, max_groups=max_groups)
                     for name in names}  # every check runs before the copy is touched
    packed = copy.deepcopy(model)
    for name, layer in packed_layers.items():
        old = packed.get_submodule(name)
        layer.train(old.training)
        packed = _replaced(packed, name, layer)
    # In a Sequential chain, a block layer may emit block order when its consumer is packed too.
    for producer, consumer in (find_hidden_pairs(packed, (nn.Linear, ExpandedLayer))
                               if isinstance(packed, nn.Sequential) else []):
        a, b = packed_layers.get(producer), packed_layers.get(consumer)
        if isinstance(a, BlockLinear) and b is not None and a.restore is not None and bool((a.out_index >= 0).all()):
            a.restore_order = False
            a._refresh()
            _renumber_inputs(b, a.out_index.long())
    return packed


def _replaced(root: nn.Module, path: str, layer: nn.Module) -> nn.Module:
    """``root`` with the submodule at ``path`` replaced (the root itself when ``path`` is empty)."""
    if not path:
        return layer
    set_submodule(root, path, layer)
    return root


def unpack(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every packed layer back in the masked reference layout."""
    check_param("model", model, [nn.Module], "unpack")
    names = [name for name, module in model.named_modules() if isinstance(module, PackedLinear)]
    if not names:
        raise InvalidParameterError("unpack: the model has no packed layer (torchfpe.pack returns packed models)")
    unpacked = copy.deepcopy(model)
    for name in names:
        unpacked = _replaced(unpacked, name, unpacked.get_submodule(name).to_masked())
    return unpacked


def stored_bytes(model: nn.Module) -> int:
    """Bytes of every tensor in ``model.state_dict()`` (what saving the model stores)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, Tensor))
