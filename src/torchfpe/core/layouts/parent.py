"""The ``parent`` layout: the parent's weights in the parent's order, plus a child id per entry.

An FPE split gives each of a parent's weights to exactly one child, so an expanded layer whose parents
split their inputs independently (the default ``random`` split, ``clause``) still holds one weight
per parent entry. This layout stores exactly that: ``values`` of the parent's shape and, per entry,
the child that owns it in ``ceil(log2 alpha)`` bit planes (about 1.06x the parent's bytes at alpha =
4 in float32). One pass over the values accumulates alpha sums per parent row::

    y[n, alpha * i + k] = sum_j values[i, j] x[n, j] [child(i, j) == k]

Under ``budget="structured"`` an outgoing layer (or a middle layer of a deep expansion) reads one
copy of each input column per output row; that fits too (``col_factor`` copies per input column,
``row_copy`` the copy each row reads), though such layers usually pack as dense blocks.

Entries the budget pruned are holes (stored 0.0, value gradient 0.0). Two ways to multiply:

- the compiled CPU kernels of :mod:`.native` (float32, AVX-512; built on first use): for small
  batches the parent's bytes, in one pass for the forward and one for the backward; for large
  batches tiles of 64 examples, each child's columns visited in order (the parent's multiply-adds);
- on CUDA, without gradients at small batches, the same one-pass sum written in torch and
  compiled by ``torch.compile`` (Triton kernels; accumulated in float32, so bf16 works too);
- the torch path everywhere else (other dtypes and devices, large batches, no kernels): the layer
  expanded to a dense weight for one matrix product, the masked layout's cost.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import kernels
from . import native
from .base import LayoutError, register_layout
from .masked import MaskedLinear
from .packed import PackedLinear, SavedTensors, MaskGrad, compact, pack_bits, positions_of, stored_bias, \
    unpack_bits

#: The compiled forward runs up to this many examples without gradients. Measured on one CPU thread
#: (4096 x 4096 parent, alpha = 4): 1.2-1.3x the dense parent at batch 1 and 4, 3.4-4x at 16 (it
#: reads the weights once per 4 examples), where the dense path costs about alpha times the parent.
NATIVE_MAX_BATCH = 8
#: With gradients, the compiled backward (one pass over the weights for up to 16 examples) runs up
#: to this batch. Above either bound the compiled kernels for large batches take over (tiles of 64
#: examples, each child's columns visited in order; measured 2.3-3.4x the parent's forward at batch
#: 256 on a loaded machine, where the dense path costs 10x and the masked layout 8x).
NATIVE_GRAD_MAX_BATCH = 8
#: Layers under this many parent entries always take the torch path: the product is cheap, and a
#: tiny model never waits for the one-off kernel build (about a minute here).
NATIVE_MIN_SIZE = 1 << 18
#: Devices whose no-gradient forward at small batches goes through ``torch.compile`` (Triton on CUDA).
#: Unmeasured: no GPU was lent to the session that wrote this (docs/benchmarks.md); where the compile
#: fails, the layer warns once and keeps the dense path.
COMPILED_DEVICES = ("cuda",)
#: The compiled forward runs up to this many examples (memory-bound: the values are read once per row).
COMPILED_MAX_BATCH = 16
#: ``auto`` refuses this layout when fewer than this share of the parent's entries are live: it
#: stores every entry, so below half full the values-plus-indices of ``ell`` hold fewer bytes.
MIN_FILL = 0.5


def parent_order_sum(x: Tensor, values: Tensor, child: Tensor, children: int) -> Tensor:
    """``y[n, children * i + k] = sum_j values[i, j] x[n, j] [child[i, j] == k]`` in torch, for
    ``torch.compile`` to fuse into one pass over ``values`` (accumulated in float32, or float64 for it)."""
    wide = torch.float64 if x.dtype == torch.float64 else torch.float32
    products = values.to(wide).unsqueeze(0) * x.to(wide).unsqueeze(1)  # (n, rows, cols), fused away when compiled
    code = child.to(torch.float32)
    sums = [torch.where(code == float(k), products, 0.0).sum(dim=-1) for k in range(children)]
    return torch.stack(sums, dim=-1).reshape(x.shape[0], -1).to(x.dtype)


def pack_planes(child: Tensor, bits: int) -> Tensor:
    """Child ids ``(rows, cols)`` as ``bits`` bit planes ``(bits, rows, bytes)``: bit ``j % 8`` of byte
    ``j // 8`` of plane ``q`` holds bit ``q`` of entry ``j`` (rows padded to an even number of bytes)."""
    rows, cols = child.shape
    width = 2 * ((cols + 15) // 16)
    flat = torch.zeros(bits, rows, width * 8, dtype=torch.uint8)
    child = child.to(torch.int64)
    for q in range(bits):
        flat[q, :, :cols] = ((child >> q) & 1).to(torch.uint8)
    weights = (2 ** torch.arange(8)).to(torch.int32)
    return (flat.view(bits, rows, width, 8).to(torch.int32) * weights).sum(-1).to(torch.uint8)


def unpack_planes(planes: Tensor, cols: int) -> Tensor:
    """The child ids ``(rows, cols)`` (uint8) of :func:`pack_planes`' bit planes."""
    bits, rows, width = planes.shape
    shifts = torch.arange(8, device=planes.device, dtype=torch.int32)
    child = torch.zeros(rows, width * 8, dtype=torch.int32, device=planes.device)
    for q in range(bits):
        plane = ((planes[q].to(torch.int32).unsqueeze(-1) >> shifts) & 1).reshape(rows, width * 8)
        child |= plane << q
    return child[:, :cols].to(torch.uint8)


def bits_for(children: int) -> int:
    return max(1, (children - 1).bit_length())


@register_layout
class ParentLinear(PackedLinear):
    """The parent's weights in the parent's order plus a child id per entry (see module doc).

    Stored: ``values`` (parent_rows, parent_cols); ``bias`` (out_features); ``child_bits`` the child
    of each entry as bit planes (when ``row_factor`` > 1); ``row_copy`` the copy of the input columns
    each output row reads (when ``col_factor`` > 1); ``hole_bits`` the bit-packed holes;
    ``bias_holes``; ``in_natural`` the natural unit at each input position when the previous layer
    emits another order. Expanded row ``row_factor * i + k`` is child ``k`` of parent row ``i``;
    expanded input ``col_factor * j + s`` is copy ``s`` of parent input ``j``.
    """

    layout = "parent"
    auto_order = 15  # after block (the parent's product where partitions are shared), before ell
    reads_input_order = True
    in_words = "in the parent's order"

    def __init__(self, in_features: int, out_features: int, row_factor: int, col_factor: int, *, bias: bool,
                 has_holes: bool, has_bias_holes: bool, permuted_input: bool, natural_dtype=torch.int32,
                 device=None, dtype=None) -> None:
        super().__init__()
        if in_features % col_factor or out_features % row_factor:
            raise ValueError(f"a {out_features}x{in_features} layer is not {row_factor} children x {col_factor} "
                             "copies of a parent")
        self.in_features, self.out_features = in_features, out_features
        self.row_factor, self.col_factor = row_factor, col_factor
        rows, cols = out_features // row_factor, in_features // col_factor
        self.parent_rows, self.parent_cols = rows, cols
        self.values = nn.Parameter(torch.zeros(rows, cols, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        self.register_buffer("child_bits", torch.zeros(bits_for(row_factor), rows, 2 * ((cols + 15) // 16),
                                                       dtype=torch.uint8, device=device) if row_factor > 1 else None)
        self.register_buffer("row_copy", torch.zeros(out_features, dtype=torch.uint8 if col_factor <= 256 else
                                                     torch.int32, device=device) if col_factor > 1 else None)
        self.register_buffer("hole_bits", torch.zeros((rows * cols + 7) // 8, dtype=torch.uint8, device=device)
                             if has_holes else None)
        self.register_buffer("bias_holes", torch.zeros(out_features, dtype=torch.bool, device=device)
                             if bias and has_bias_holes else None)
        self.register_buffer("in_natural", torch.zeros(in_features, dtype=natural_dtype, device=device)
                             if permuted_input else None)
        for name in ("bias_live", "in_gather"):  # derived, small (the output and input widths)
            self.register_buffer(name, None, persistent=False)

    # -- from a masked layer
    @classmethod
    def from_masked(cls, layer: MaskedLinear, alpha: int, *, auto: bool = False, input_order: Tensor | None = None,
                    **options) -> ParentLinear:
        """The layer in the parent's order; ``LayoutError`` unless each parent entry is held by at
        most one child and each row reads one copy of the input columns (``auto`` also refuses one
        child per parent, layers under ``MIN_FILL`` live, and no children structure at all)."""
        parent = layer.parent_features
        col_factor = 1
        if parent is not None and layer.in_features % int(parent[0]) == 0:
            col_factor = layer.in_features // int(parent[0])
        row_factor = alpha
        if auto and row_factor == 1 and col_factor == 1:
            raise LayoutError("the layer is not expanded (one child, one copy): the parent's order adds nothing")
        out_f, in_f = layer.out_features, layer.in_features
        rows, cols = out_f // row_factor, in_f // col_factor
        mask = layer.weight_mask.detach().cpu().view(rows, row_factor, cols, col_factor)
        weight = (layer.weight.detach() * layer.weight_mask).cpu().view(rows, row_factor, cols, col_factor)
        held = mask.sum(dim=(1, 3))
        if (held > 1).any():
            i, j = (int(v) for v in torch.nonzero(held > 1)[0])
            raise LayoutError(f"parent entry ({i}, {j}) is kept by {int(held[i, j])} children or copies; the parent's "
                              "order holds one weight per parent entry")
        if col_factor > 1:
            copies = mask.any(dim=2).reshape(out_f, col_factor)  # which copies each row reads
            if (copies.sum(dim=1) > 1).any():
                r = int(torch.nonzero(copies.sum(dim=1) > 1)[0])
                raise LayoutError(f"row {r} reads several copies of the input columns; the parent's order needs "
                                  "one copy per row (budget='structured')")
            row_copy = copies.to(torch.int8).argmax(dim=1)
        else:
            row_copy = torch.zeros(out_f, dtype=torch.long)
        live = held == 1
        if auto and float(live.float().mean()) < MIN_FILL:
            raise LayoutError(f"only {float(live.float().mean()):.0%} of the parent's entries are live (under "
                              f"{MIN_FILL:.0%}, values plus indices are smaller)")
        child = mask.any(dim=3).to(torch.int8).argmax(dim=1)  # (rows, cols); 0 at holes
        copy_of_entry = row_copy.view(rows, row_factor).gather(1, child.long())  # (rows, cols)
        values = weight.gather(1, child.long().view(rows, 1, cols, 1).expand(rows, 1, cols, col_factor)).squeeze(1)
        values = values.gather(2, copy_of_entry.view(rows, cols, 1)).squeeze(2) * live
        bias, bias_mask = stored_bias(layer)
        packed = cls(in_f, out_f, row_factor, col_factor, bias=bias is not None, has_holes=not bool(live.all()),
                     has_bias_holes=bias is not None and not bool(bias_mask.all()),
                     permuted_input=input_order is not None,
                     natural_dtype=compact(torch.zeros(1), in_f + 1).dtype,
                     device=layer.weight.device, dtype=layer.weight.dtype)
        with torch.no_grad():
            packed.values.copy_(values)
            if packed.child_bits is not None:
                packed.child_bits.copy_(pack_planes(child, packed.child_bits.shape[0]))
            if packed.row_copy is not None:
                packed.row_copy.copy_(row_copy)
            if packed.hole_bits is not None:
                packed.hole_bits.copy_(pack_bits(~live))
            if bias is not None:
                packed.bias.copy_(bias)
                if packed.bias_holes is not None:
                    packed.bias_holes.copy_(~bias_mask)
            if packed.in_natural is not None:
                packed.in_natural.copy_(input_order)
        packed.parent_features = layer.parent_features
        packed._refresh()
        return packed

    # -- derived tensors
    # The layer keeps nothing the size of its values besides what it stores: the child of each entry
    # and the holes are unpacked from their bits when a path needs them (a byte an entry, freed after).
    def _refresh(self) -> None:
        self.bias_live = None if self.bias_holes is None else ~self.bias_holes
        self.in_gather = None if self.in_natural is None else positions_of(self.in_natural.long())

    @property
    def child(self) -> Tensor | None:
        """The child of each parent entry (uint8, parent-shaped), unpacked from ``child_bits`` per access."""
        return None if self.child_bits is None else unpack_planes(self.child_bits, self.parent_cols)

    @property
    def live(self) -> Tensor | None:
        """Which values are real weights (bool, parent-shaped; ``None``: all), unpacked per access."""
        if self.hole_bits is None:
            return None
        return ~unpack_bits(self.hole_bits, self.parent_rows * self.parent_cols).view(self.parent_rows,
                                                                                      self.parent_cols)

    @property
    def hole_positions(self) -> Tensor | None:
        """The flat positions of the holes in ``values`` (int64; ``None``: no holes), computed per
        access from ``hole_bits`` (for kernels that take positions: the Triton ones)."""
        if self.hole_bits is None:
            return None
        return torch.nonzero(unpack_bits(self.hole_bits, self.values.numel())).squeeze(1)

    def _value_live(self) -> Tensor:
        live = self.live
        return torch.ones_like(self.values, dtype=torch.bool) if live is None else live

    def _spread(self, values: Tensor) -> Tensor:
        """Parent-shaped ``values`` (or a boolean mask) at their natural (out_features, in_features) positions.

        The one-hot views of the children and copies are built per call (as the masked layout's
        ``weight * mask``), so the layer keeps no alpha-sized buffer.
        """
        rows, cols = self.parent_rows, self.parent_cols
        spread = values.view(rows, 1, cols, 1)
        keep = []
        child = self.child
        if child is not None:
            ids = torch.arange(self.row_factor, device=values.device, dtype=torch.uint8)
            keep.append(child.view(rows, 1, cols, 1) == ids.view(1, -1, 1, 1))
        if self.row_copy is not None:
            copies = torch.arange(self.col_factor, device=values.device)
            keep.append(self.row_copy.long().view(rows, self.row_factor, 1, 1) == copies.view(1, 1, 1, -1))
        for onehot in keep:
            spread = spread & onehot if values.dtype == torch.bool else spread * onehot
        return spread.expand(rows, self.row_factor, cols, self.col_factor).reshape(self.out_features,
                                                                                    self.in_features)

    def layout_state(self) -> dict:
        return {**super().layout_state(), "row_factor": self.row_factor, "col_factor": self.col_factor}

    def apply_layout_state(self, state: Mapping) -> None:
        super().apply_layout_state(state)
        if (state.get("row_factor"), state.get("col_factor")) != (self.row_factor, self.col_factor):
            raise ValueError(f"its factors {(state.get('row_factor'), state.get('col_factor'))} are not this "
                             f"layer's {(self.row_factor, self.col_factor)}")

    def check_saved(self, saved: SavedTensors) -> None:
        bits = saved.raw("child_bits")
        if bits is not None:
            if bits.dtype != torch.uint8 or tuple(bits.shape) != tuple(self.child_bits.shape):
                raise saved.error("child_bits", f"holds {bits.dtype} of shape {tuple(bits.shape)}; the layer needs "
                                  f"uint8 bit planes of shape {tuple(self.child_bits.shape)}")
            child = unpack_planes(bits.detach().cpu(), self.parent_cols)
            if int(child.max()) >= self.row_factor:
                i, j = (int(v) for v in torch.nonzero(child >= self.row_factor)[0])
                raise saved.error("child_bits", f"gives entry ({i}, {j}) child {int(child[i, j])}; a parent has "
                                  f"{self.row_factor} children")
        copies = saved.indices("row_copy")
        if copies is not None:
            outside = copies[(copies < 0) | (copies >= self.col_factor)]
            if outside.numel():
                raise saved.error("row_copy", f"holds copy {int(outside[0])}, outside 0..{self.col_factor - 1}")
        holes = saved.raw("hole_bits")
        if holes is not None:
            need = (self.parent_rows * self.parent_cols + 7) // 8
            if holes.dtype != torch.uint8 or holes.dim() != 1 or holes.numel() != need:
                raise saved.error("hole_bits", f"holds {holes.dtype} of shape {tuple(holes.shape)}; the layer's "
                                  f"{self.parent_rows}x{self.parent_cols} values need {need} uint8 bytes")
        saved.check_permutation("in_natural")
        self._check_legacy_holes(saved)

    def _check_legacy_holes(self, saved: SavedTensors) -> None:
        """A file of format 1 records no list of its tensors: one without ``hole_bits`` whose values
        hold exact zeros lost it (a live weight is never exactly 0.0: ``expand`` masks exact zeros), and
        loading it would make the pruned entries trainable."""
        if self.hole_bits is not None or (saved.saved is not None and "stored" in saved.saved):
            return
        values = saved.raw("values")
        if values is None or tuple(values.shape) != tuple(self.values.shape):
            return
        zeros = int((values == 0).sum())
        if zeros:
            raise saved.error("hole_bits", f"is missing but {saved.prefix + 'values'!r} holds {zeros} exact zeros "
                                           "(pruned entries, which hole_bits marks); without it they would train")

    @classmethod
    def empty_from_state(cls, extra: dict, tensors: Mapping[str, Tensor], device=None) -> ParentLinear:
        values = tensors["values"]
        out_f, in_f = int(extra["out_features"]), int(extra["in_features"])
        row_factor, col_factor = int(extra["row_factor"]), int(extra["col_factor"])
        if row_factor < 1 or col_factor < 1 or out_f % row_factor or in_f % col_factor:
            raise ValueError(f"factors {(row_factor, col_factor)} do not divide the shape {out_f}x{in_f}")
        if tuple(values.shape) != (out_f // row_factor, in_f // col_factor):
            raise ValueError(f"values {tuple(values.shape)} is not {(out_f // row_factor, in_f // col_factor)}")
        natural = tensors.get("in_natural")
        layer = cls(in_f, out_f, row_factor, col_factor, bias="bias" in tensors, has_holes="hole_bits" in tensors,
                    has_bias_holes="bias_holes" in tensors, permuted_input=natural is not None,
                    natural_dtype=natural.dtype if natural is not None else torch.int32,
                    device=device or values.device, dtype=values.dtype)
        return layer.restored_from(extra)

    # -- compute
    def path(self, batch: int | None, training: bool, device: torch.device, dtype: torch.dtype) -> str:
        """Which product a batch takes: ``native`` (the compiled CPU kernels for small batches), ``tiled``
        (theirs for large batches), ``compiled`` (torch.compile, e.g. Triton on CUDA) or ``dense`` (see
        the module constants). ``batch=None``: any batch size (a traced graph takes one path for all)."""
        if (device.type in COMPILED_DEVICES and not training and batch is not None and batch <= COMPILED_MAX_BATCH
                and self.child_bits is not None and self.col_factor == 1
                and not self.__dict__.get("_compile_failed", False)):
            return "compiled"
        if (device.type != "cpu" or dtype != torch.float32 or self.col_factor != 1 or self.row_factor == 1
                or not native.supports(self.row_factor) or self.parent_rows * self.parent_cols < NATIVE_MIN_SIZE):
            return "dense"
        if not native.ready():
            return "dense"
        if batch is None:
            return "tiled"  # correct at any batch size
        return "native" if batch <= (NATIVE_GRAD_MAX_BATCH if training else NATIVE_MAX_BATCH) else "tiled"

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002
        if kernels.wants(input):  # Triton kernels on CUDA (torchfpe.core.kernels); None where they do not apply
            y = kernels.forward(self, input)
            if y is not None:
                return y
        leading = input.shape[:-1]
        x = input.reshape(-1, self.in_features)
        if self.in_gather is not None:
            x = x.index_select(1, self.in_gather)
        bias = self._masked_bias()
        training = torch.is_grad_enabled() and (self.values.requires_grad or input.requires_grad)
        batch = None if torch.compiler.is_compiling() else x.shape[0]
        path = self.path(batch, training, x.device, x.dtype)
        y = self._compiled(x) if path == "compiled" else None
        if path == "native":
            y = native.parent_forward(self.values, self.child_bits, x.contiguous(), self.row_factor, self.hole_bits)
        elif path == "tiled":
            y = native.parent_forward_tiled(self.values, self.child_bits, x.contiguous(), self.row_factor,
                                            self.hole_bits)
        if y is not None:
            if bias is not None:
                y = y + bias
        elif not training and self.parent_rows * self.parent_cols < NATIVE_MIN_SIZE:
            y = F.linear(x, self.cached_weight(lambda: self._spread(self.values.detach())), bias)
        else:
            values = self.values
            if self.hole_bits is not None and torch.is_grad_enabled() and values.requires_grad:
                values = MaskGrad.apply(values, self.live)
            y = F.linear(x, self._spread(values), bias)
        return y.reshape(*leading, self.out_features)

    def _compiled(self, x: Tensor) -> Tensor | None:
        """The compiled one-pass sum, or ``None`` (and never again for this layer) if compiling fails."""
        function = self.__dict__.get("_compiled_sum")
        if function is None:
            function = torch.compile(parent_order_sum, dynamic=False)
            self.__dict__["_compiled_sum"] = function
        try:
            return function(x, self.values.detach(), self.child, self.row_factor)
        except Exception as error:  # noqa: BLE001 - no Triton, no compiler: the dense path gives the same numbers
            self.__dict__["_compile_failed"] = True
            warnings.warn(f"torchfpe: torch.compile of the parent layout's product failed on {x.device} "
                          f"({type(error).__name__}); using the dense path", RuntimeWarning, stacklevel=3)
            return None

    # -- interface
    def effective_weight(self) -> Tensor:
        live = self.live
        return self._spread(self.values if live is None else self.values * live)

    def dense_weight_mask(self) -> Tensor:
        return self._spread(self._value_live())

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, parent={self.parent_rows}x"
                f"{self.parent_cols}, children={self.row_factor}, copies={self.col_factor}, "
                f"bias={self.bias is not None}")
