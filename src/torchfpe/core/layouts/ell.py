"""The ``ell`` layout: each output row keeps only its live values plus their input indices (ELLPACK).

For anything the block layout cannot hold well (an independent partition per parent, copied columns
pruned by the global budget, the ``overlap`` and ``static_sparse`` controls). Rows are padded to the
longest one. Small batches gather inputs or multiply as a sparse CSR matrix (cost follows the
non-zeros); large batches scatter the values into a dense weight and call one matrix product (the
masked layout's cost, which is the best measured option there). Last in ``auto``'s order: it holds
any masks.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import register_layout
from .masked import MaskedLinear
from .packed import PackedLinear, SavedTensors, autocast_operands, compact, stored_bias

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


@register_layout
class EllLinear(PackedLinear):
    """Values plus input indices per output row, padded to the longest row (see module doc).

    Stored: ``values`` (out_features, width); ``in_index`` (out_features, width) input positions,
    ascending in each row (padding slot ``s`` holds ``in_features + s`` and reads an appended zero
    column, so padding gets no gradient and CSR columns stay sorted); ``bias``; ``in_natural`` the
    natural unit of each input position when the previous layer emits another order; ``bias_holes``.
    """

    layout = "ell"
    auto_order = 20  # last: holds any masks
    reads_input_order = True
    in_words = "in ELL rows"

    def __init__(self, in_features: int, out_features: int, width: int, *, bias: bool, has_bias_holes: bool,
                 permuted_input: bool, index_dtype: torch.dtype = torch.int32,
                 natural_dtype: torch.dtype | None = None, device=None, dtype=None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.width = in_features, out_features, width
        self.values = nn.Parameter(torch.zeros(out_features, width, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        self.register_buffer("in_index", torch.zeros(out_features, width, dtype=index_dtype, device=device))
        self.register_buffer("in_natural", torch.zeros(in_features, dtype=natural_dtype or index_dtype, device=device)
                             if permuted_input else None)
        self.register_buffer("bias_holes", torch.zeros(out_features, dtype=torch.bool, device=device)
                             if bias and has_bias_holes else None)
        self.register_buffer("index", None, persistent=False)
        self.register_buffer("crow", None, persistent=False)
        self.register_buffer("csr_index", None, persistent=False)
        self.register_buffer("flat_index", None, persistent=False)
        self.register_buffer("bias_live", None, persistent=False)

    @classmethod
    def from_masked(cls, layer: MaskedLinear, alpha: int, *, input_order: Tensor | None = None,
                    **options) -> EllLinear:
        """ELL rows for ``layer`` (any masks fit); ``input_order``: read the producer's positions."""
        mask = layer.weight_mask.cpu()
        weight = (layer.weight.detach() * layer.weight_mask).cpu()
        if input_order is not None:  # columns in position order: position p holds natural input_order[p]
            order_cpu = input_order.long().cpu()
            mask, weight = mask[:, order_cpu], weight[:, order_cpu]
        counts = mask.sum(dim=1)
        width = max(1, int(counts.max()))
        # live inputs first in each row, in index order; padding points at the zero column
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :width]
        slots = torch.arange(width).view(1, -1)
        keep = slots < counts.view(-1, 1)
        index = torch.where(keep, order, layer.in_features + slots)
        values = torch.where(keep, torch.gather(weight, 1, order), torch.zeros((), dtype=weight.dtype))
        bias, bias_mask = stored_bias(layer)
        packed = cls(
            layer.in_features, layer.out_features, width, bias=bias is not None,
            has_bias_holes=bias is not None and not bool(bias_mask.all()), permuted_input=input_order is not None,
            index_dtype=compact(index, layer.in_features + width).dtype,
            natural_dtype=compact(index, layer.in_features + 1).dtype,
            device=layer.weight.device, dtype=layer.weight.dtype,
        )
        with torch.no_grad():
            packed.values.copy_(values)
            packed.in_index.copy_(index)
            if packed.in_natural is not None:
                packed.in_natural.copy_(input_order)
            if bias is not None:
                packed.bias.copy_(bias)
                if packed.bias_holes is not None:
                    packed.bias_holes.copy_(~bias_mask)
        packed.parent_features = layer.parent_features
        packed._refresh()
        return packed

    def _refresh(self) -> None:
        self.index = self.in_index.long()
        # CSR with int32 indices (where they fit): measured 1.5-4.3x faster than int64 on one CPU thread
        wide = (self.out_features + 1) * self.width >= 2**31 or self.in_features + self.width >= 2**31
        self.csr_index = self.index if wide else self.in_index.to(torch.int32)
        self.crow = torch.arange(self.out_features + 1, device=self.index.device,
                                 dtype=self.csr_index.dtype) * self.width
        rows = torch.arange(self.out_features, device=self.index.device).view(-1, 1) * self.in_features
        self.flat_index = torch.where(self.index < self.in_features, rows + self.index,
                                      self.out_features * self.in_features).reshape(-1)
        self.bias_live = None if self.bias_holes is None else ~self.bias_holes

    def _value_live(self) -> Tensor:
        return self.in_index.long() < self.in_features

    def layout_state(self) -> dict:
        return {**super().layout_state(), "width": self.width}

    def apply_layout_state(self, state: Mapping) -> None:
        super().apply_layout_state(state)
        if state.get("width") != self.width:
            raise ValueError(f"its row width {state.get('width')} is not this layer's {self.width}")

    def check_saved(self, saved: SavedTensors) -> None:
        index = saved.indices("in_index")
        if index is not None:
            limit = self.in_features + self.width
            outside = index[(index < 0) | (index >= limit)]
            if outside.numel():
                raise saved.error("in_index", f"holds index {int(outside[0])}, outside 0..{limit - 1} "
                                              f"(from {self.in_features} on: padding)")
            real = torch.where(index < self.in_features, index, -1)
            ordered = real.sort(dim=1).values
            twice = torch.nonzero((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0))
            if len(twice):
                row, j = (int(v) for v in twice[0])
                raise saved.error("in_index", f"holds input position {int(ordered[row, j])} twice in row {row}")
            late = torch.nonzero(index[:, 1:] <= index[:, :-1])
            if len(late):
                raise saved.error("in_index", f"holds row {int(late[0, 0])} out of ascending order (an ELL row "
                                              "lists its input positions in increasing order, padding last)")
        saved.check_permutation("in_natural")

    @classmethod
    def empty_from_state(cls, extra: dict, tensors: Mapping[str, Tensor], device=None) -> EllLinear:
        values, index = tensors["values"], tensors["in_index"]
        shape = (int(extra["out_features"]), int(extra["width"]))
        if tuple(values.shape) != shape or tuple(index.shape) != shape:
            raise ValueError(f"values {tuple(values.shape)} or in_index {tuple(index.shape)} is not {shape}")
        natural = tensors.get("in_natural")
        layer = cls(int(extra["in_features"]), shape[0], shape[1], bias="bias" in tensors,
                    has_bias_holes="bias_holes" in tensors, permuted_input=natural is not None,
                    index_dtype=index.dtype, natural_dtype=None if natural is None else natural.dtype,
                    device=device or values.device, dtype=values.dtype)
        return layer.restored_from(extra)

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
                sparse = torch.sparse_csr_tensor(self.crow, self.csr_index.reshape(-1), self.values.reshape(-1),
                                                 size=(self.out_features, self.in_features + self.width))
            y = (sparse @ F.pad(x, (0, self.width)).T).T
            if bias is not None:
                y = y + bias
        else:
            # one flat scatter; padding lands in one extra slot that is cut off, so the dense weight
            # is a contiguous view and padding gets no gradient
            shape = (self.out_features, self.in_features)
            if training:
                x, values, bias = autocast_operands(x.device, x, self.values, bias)
                y = _EllDenseProduct.apply(x, values, bias, self.flat_index, shape)
            else:
                def scatter() -> Tensor:
                    size = shape[0] * shape[1]
                    weight = self.values.new_zeros(size + 1).scatter_(0, self.flat_index, self.values.reshape(-1))
                    return weight[:size].view(shape)

                small = shape[0] * shape[1] < ELL_SPARSE_MIN_SIZE  # dense either way: keep the weight
                y = F.linear(x, self.cached_weight(scatter) if small else scatter(), bias)
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

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, width={self.width}, "
                f"bias={self.bias is not None}")
