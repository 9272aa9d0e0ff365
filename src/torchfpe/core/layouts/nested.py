"""The ``nested`` layout: a middle layer of a deep expansion as child blocks of child blocks.

When two consecutive layers are expanded, the second one's inputs are the first one's children (alpha
copies of each parent input) and its outputs are its own children: as a matrix it is alpha squared
times its parent's size. Under ``budget="structured"`` with a block split (``contiguous``, ``grouped``,
``shared``) its rows fall into a few *classes*: child ``j`` of the parents of group ``g`` that keep copy
``s`` read exactly the inputs ``P[g, j] x {s}`` (the group's partition ``j``, copy ``s``). Each class is
one dense block of (class rows) x (its inputs): the parent's multiply-adds, no holes.

Class sizes differ (the copy each row keeps is dealt per layer, not per class), so one batched product
padded to the largest class wastes the spread (1.1x to 1.6x measured on 1024- to 256-wide layers).
Here classes are *bucketed*: rows padded up to a small quantum, classes of one padded shape stacked
into one batched product, a few products per layer. One gather (all buckets' inputs, index computed
once) before the products and one restoring gather after them; both fold the neighbours' orders.

Entries the budget pruned inside a class (the parent's own zeros) are holes: stored 0.0, gradient 0.0.
Padding (rows of no unit, inputs that read the zero column ``in_features``) has gradient 0.0 by
construction and is counted dead too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import LayoutError, register_layout
from .block import MIN_GROUP_ROWS, support_blocks
from .masked import MaskedLinear
from .packed import PackedLinear, PaddedRowsBias, SavedTensors, autocast_operands, compact, pack_bits, positions_of, stored_bias, \
    unpack_bits

#: ``auto`` takes a layer only when padding and holes keep the stored values within this factor of
#: the live ones (above it the ``block`` layout's one product is as good).
MAX_SLOT_RATIO = 1.25

#: Rows of a class are padded up to a multiple of this (at least); fewer products against less padding.
ROW_QUANTUM = 8


def _buckets(classes: list[tuple[Tensor, Tensor]]) -> list[tuple[list[int], int, int]]:
    """(class ids, chunk, rows) of each bucket: classes of equal padded (inputs, rows) share a product.

    Rows are padded to a quantum of ``max(ROW_QUANTUM, mean rows / 16)`` rounded to 8, inputs to a
    multiple of ``ROW_QUANTUM`` (balanced partitions differ by one input at most).
    """
    mean = sum(len(units) for units, _ in classes) / len(classes)
    quantum = max(ROW_QUANTUM, 8 * round(mean / 128))
    keyed: dict[tuple[int, int], list[int]] = {}
    for c, (units, inputs) in enumerate(classes):
        chunk = -(-max(len(inputs), 1) // ROW_QUANTUM) * ROW_QUANTUM
        rows = -(-len(units) // quantum) * quantum
        keyed.setdefault((chunk, rows), []).append(c)
    return [(ids, chunk, rows) for (chunk, rows), ids in sorted(keyed.items())]


def _rows_of(x: Tensor, pad: bool) -> Tensor:
    """(in_features [+1 zero row when ``pad``], N) contiguous rows of a (N, in_features) input: a view when
    ``x`` is the ``.t()`` of contiguous rows (what a nested layer returns), else one transposing copy."""
    rows = x.t()
    if not rows.is_contiguous():
        rows = rows.contiguous()
    return F.pad(rows, (0, 0, 0, 1)) if pad else rows


class _GatherRows(torch.autograd.Function):
    """``_rows_of(x, pad).index_select(0, index)``; its backward is one ``index_add_`` of rows (autograd's
    own backward of index_select measured about 4x slower on (16384, 256) gradients, one thread), and
    returns the gradient in ``x``'s own layout, so that the elementwise backward before this layer (a
    ReLU's) reads two tensors of one layout (mixed layouts made ``threshold_backward`` 15 % of a step)."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, pad: bool) -> Tensor:  # noqa: D102
        ctx.save_for_backward(index)
        ctx.shape, ctx.transposed = x.shape, x.t().is_contiguous()
        return _rows_of(x, pad).index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        (index,) = ctx.saved_tensors
        n, features = ctx.shape
        rows = grad.new_zeros(features + 1, n).index_add_(0, index, grad.contiguous())[:features]
        return (rows.t() if ctx.transposed else rows.t().contiguous()), None, None


class _SelectRows(torch.autograd.Function):
    """``y.index_select(0, index)`` of contiguous rows, its backward one ``index_add_`` of rows."""

    @staticmethod
    def forward(ctx, y: Tensor, index: Tensor) -> Tensor:  # noqa: D102
        ctx.save_for_backward(index)
        ctx.rows = y.shape[0]
        return y.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        (index,) = ctx.saved_tensors
        return grad.new_zeros(ctx.rows, grad.shape[1]).index_add_(0, index, grad.contiguous()), None


class _NestedProduct(torch.autograd.Function):
    """The buckets' batched products, examples last; value gradient 0.0 at the dead positions.

    ``x``: (sum of classes * chunk, N) gathered input rows; ``values``: flat, bucket after bucket
    (classes, rows, chunk); ``bias``: one per output position or None; ``shapes``: (classes, chunk,
    rows) per bucket. Returns (sum of classes * rows, N): every product writes its own rows of the
    output, and every operand has the examples as its inner dimension (MKL's batched product ran at
    the dense rate so, and at about half of it with the examples first and 64-row classes).
    """

    @staticmethod
    def forward(ctx, x: Tensor, values: Tensor, bias: Tensor | None, dead: Tensor | None,  # noqa: D102
                shapes: tuple) -> Tensor:
        ctx.save_for_backward(x, values, dead)
        ctx.shapes, ctx.has_bias = shapes, bias is not None
        return _products(x, values, bias, shapes)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        x, values, dead = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        grad_values = torch.empty_like(values) if ctx.needs_input_grad[1] else None
        for v, xb, gb, (at, col_in, _) in _slices(x, values, grad, ctx.shapes):
            if grad_x is not None:
                torch.bmm(v.transpose(1, 2), gb, out=grad_x[col_in: col_in + xb.shape[0] * xb.shape[1]].view_as(xb))
            if grad_values is not None:
                torch.bmm(gb, xb.transpose(1, 2), out=grad_values[at: at + v.numel()].view_as(v))
        if grad_values is not None and dead is not None:
            grad_values.index_fill_(0, dead, 0.0)
        grad_bias = grad.sum(dim=1) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_values, grad_bias, None, None


def _slices(x: Tensor, values: Tensor, y: Tensor, shapes: tuple):
    """Per bucket: its values (classes, rows, chunk), its input rows (classes, chunk, N), its output
    rows (classes, rows, N), and its offsets (in ``values``, in ``x``, in ``y``)."""
    n = x.shape[1]
    at = col_in = col_out = 0
    for classes, chunk, rows in shapes:
        v = values[at: at + classes * chunk * rows].view(classes, rows, chunk)
        xb = x[col_in: col_in + classes * chunk].view(classes, chunk, n)
        yb = y[col_out: col_out + classes * rows].view(classes, rows, n)
        yield v, xb, yb, (at, col_in, col_out)
        at += classes * chunk * rows
        col_in += classes * chunk
        col_out += classes * rows


def _products(x: Tensor, values: Tensor, bias: Tensor | None, shapes: tuple) -> Tensor:
    """One batched product per bucket (bias added in it), each written into its rows of the output."""
    y = x.new_empty(sum(classes * rows for classes, _, rows in shapes), x.shape[1])
    if torch.compiler.is_compiling():
        # traced (torch.export, torch.compile): writes through out= cannot be differentiated there, so the
        # buckets' products are made apart and concatenated (the same values; eager keeps the copy-free path)
        pieces = []
        for v, xb, yb, (_, _, col_out) in _slices(x, values, y, shapes):
            product = torch.bmm(v, xb) if bias is None else torch.baddbmm(
                bias[col_out: col_out + yb.shape[0] * yb.shape[1]].view(yb.shape[0], yb.shape[1], 1), v, xb)
            pieces.append(product.reshape(-1, x.shape[1]))
        return torch.cat(pieces)
    for v, xb, yb, (_, _, col_out) in _slices(x, values, y, shapes):
        if bias is None:
            torch.bmm(v, xb, out=yb)
        else:
            torch.baddbmm(bias[col_out: col_out + yb.shape[0] * yb.shape[1]].view(yb.shape[0], yb.shape[1], 1),
                          v, xb, out=yb)
    return y


@register_layout
class NestedLinear(PaddedRowsBias, PackedLinear):
    """Classes of rows sharing their inputs, bucketed into a few batched products (see module doc).

    Stored: ``values`` (flat: bucket after bucket, each (classes, rows, chunk)); ``bias`` (one per
    output position); ``in_index`` (input position per gathered column; ``in_features`` = padding,
    reads 0); ``out_index`` (natural unit per output position, -1 = padding row); ``in_natural``
    (natural unit per input position, when the previous layer emits its own order); ``hole_bits``
    (bit-packed dead values: holes and padding). Metadata: ``buckets`` [[classes, chunk, rows], ...].
    """

    layout = "nested"
    auto_order = 5  # before block: where rows share inputs in classes, buckets pad less than one product
    reads_input_order = True
    in_words = "as nested blocks (rows sharing their inputs in classes)"

    def __init__(self, in_features: int, out_features: int, buckets: list[list[int]], *, bias: bool,
                 has_bias_holes: bool, permuted_input: bool, restore_order: bool = True,
                 index_dtype: torch.dtype = torch.int32, device=None, dtype=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.buckets = [tuple(int(v) for v in bucket) for bucket in buckets]
        slots = sum(c * k * r for c, k, r in self.buckets)
        gathered = sum(c * k for c, k, _ in self.buckets)
        positions = sum(c * r for c, _, r in self.buckets)
        self.restore_order = restore_order
        self.values = nn.Parameter(torch.zeros(slots, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(positions, device=device, dtype=dtype)) if bias else None
        self.register_buffer("in_index", torch.zeros(gathered, dtype=index_dtype, device=device))
        self.register_buffer("out_index", torch.zeros(positions, dtype=torch.int32, device=device))
        self.register_buffer("in_natural", torch.zeros(in_features, dtype=index_dtype, device=device)
                             if permuted_input else None)
        self.register_buffer("hole_bits", torch.zeros((slots + 7) // 8, dtype=torch.uint8, device=device))
        self.register_buffer("bias_holes", torch.zeros(positions, dtype=torch.bool, device=device)
                             if bias and has_bias_holes else None)
        self.register_buffer("live", None, persistent=False)
        self.register_buffer("dead_positions", None, persistent=False)
        self.register_buffer("bias_live", None, persistent=False)
        self.register_buffer("gather", None, persistent=False)
        self.register_buffer("restore", None, persistent=False)
        self.pad_input = False

    # -- from a masked layer
    @classmethod
    def from_masked(cls, layer: MaskedLinear, alpha: int, *, auto: bool = False, max_groups: int = 16,
                    input_order: Tensor | None = None, natural_output: bool = True, **options) -> NestedLinear:
        """Classes of rows with the same inputs (a row reading a subset joins with holes), bucketed.

        ``LayoutError`` when more classes than rows / ``MIN_GROUP_ROWS`` would be needed (forced: more
        than the rows), or, in ``auto``: the layer is not a middle layer (it reads no copied columns, or
        does not split its rows: ``block`` holds those), or padding and holes exceed ``MAX_SLOT_RATIO``
        times the live values.
        """
        parent = layer.parent_features
        copies = layer.in_features // int(parent[0]) if parent is not None and \
            layer.in_features % int(parent[0]) == 0 else 1
        if auto and (copies == 1 or alpha == 1):
            # a first layer (no copied columns) is block's; an outgoing layer (rows not split) packs as
            # block's support blocks with at most one padding row, and keeps the natural output layout
            raise LayoutError("it does not both read copied columns and split its rows (not a middle layer "
                              "of a deep expansion)")
        mask_cpu = layer.weight_mask.cpu()
        limit = max(1, layer.out_features // MIN_GROUP_ROWS) if auto else layer.out_features
        classes = support_blocks(mask_cpu, limit)
        if classes is None:
            raise LayoutError(f"its rows do not share their inputs in {limit} classes or fewer")
        if auto and len(classes) == 1:
            raise LayoutError("one class: the layer is one dense product")
        buckets = _buckets(classes)
        live_count = int(mask_cpu.sum())
        slots = sum(len(ids) * chunk * rows for ids, chunk, rows in buckets)
        if auto and slots > MAX_SLOT_RATIO * max(live_count, 1):
            raise LayoutError(f"its classes store {slots} values for {live_count} live ones "
                              f"(more than {MAX_SLOT_RATIO}x)")
        in_features, out_features = layer.in_features, layer.out_features
        weight = (layer.weight.detach() * layer.weight_mask).cpu()
        values, live, in_index, out_index = [], [], [], []
        for ids, chunk, rows in buckets:
            v = weight.new_zeros(len(ids), rows, chunk)
            keep = torch.zeros(len(ids), rows, chunk, dtype=torch.bool)
            gather = torch.full((len(ids), chunk), in_features, dtype=torch.long)
            units_of = torch.full((len(ids), rows), -1, dtype=torch.long)
            for b, c in enumerate(ids):
                units, inputs = classes[c]
                gather[b, : len(inputs)] = inputs
                units_of[b, : len(units)] = units
                v[b, : len(units), : len(inputs)] = weight[units][:, inputs]
                keep[b, : len(units), : len(inputs)] = mask_cpu[units][:, inputs]
            values.append(v.reshape(-1))
            live.append(keep.reshape(-1))
            in_index.append(gather.reshape(-1))
            out_index.append(units_of.reshape(-1))
        values_t, live_t = torch.cat(values), torch.cat(live)
        in_index_t, out_flat = torch.cat(in_index), torch.cat(out_index)
        if input_order is not None:  # read the producer's positions: natural input j sits at position_of[j]
            position_of = positions_of(input_order.long().cpu())
            in_index_t = torch.where(in_index_t < in_features, position_of[in_index_t.clamp(max=in_features - 1)],
                                     in_index_t)
        padded_rows = bool((out_flat < 0).any())
        identity = not padded_rows and torch.equal(out_flat, torch.arange(out_features))
        restore_order = natural_output or identity or padded_rows
        bias, bias_mask = stored_bias(layer)
        bias_live = torch.zeros(out_flat.numel(), dtype=torch.bool)
        real = out_flat >= 0
        if bias is not None:
            bias_live[real] = bias_mask.cpu()[out_flat[real]]
        packed = cls(in_features, out_features, [[len(ids), chunk, rows] for ids, chunk, rows in buckets],
                     bias=bias is not None, has_bias_holes=bias is not None and not bool(bias_live[real].all()),
                     permuted_input=input_order is not None, restore_order=restore_order,
                     index_dtype=compact(in_index_t, in_features + 1).dtype, device=layer.weight.device,
                     dtype=layer.weight.dtype)
        device = layer.weight.device
        with torch.no_grad():
            packed.values.copy_((values_t * live_t).to(device))
            packed.in_index.copy_(in_index_t)
            if packed.in_natural is not None:
                packed.in_natural.copy_(input_order)
            packed.out_index.copy_(out_flat)
            packed.hole_bits.copy_(pack_bits(~live_t))
            if bias is not None:
                packed.store_bias_(bias, bias_live, out_flat)
        packed.parent_features = layer.parent_features
        packed._refresh()
        return packed

    # -- derived tensors
    def _refresh(self) -> None:
        device = self.values.device
        self.live = ~unpack_bits(self.hole_bits, self.values.numel()).to(device)
        dead = torch.nonzero(~self.live).squeeze(1)
        self.dead_positions = dead if dead.numel() else None
        self.bias_live = None if self.bias_holes is None else ~self.bias_holes
        self.gather = self.in_index.long()
        self.pad_input = bool((self.gather == self.in_features).any())
        natural = self.out_index.long()
        if self.restore_order:
            real = natural >= 0
            restore = torch.full((self.out_features,), -1, dtype=torch.long, device=device)
            restore[natural[real]] = torch.nonzero(real).squeeze(1)
            identity = restore.numel() == natural.numel() and \
                torch.equal(restore, torch.arange(self.out_features, device=device))
            self.restore = None if identity else restore
        else:
            self.restore = None

    def _value_live(self) -> Tensor:
        return self.live

    def output_order(self) -> Tensor | None:
        return None if self.restore_order else self.out_index.long()

    def layout_state(self) -> dict:
        return {**super().layout_state(), "buckets": [list(bucket) for bucket in self.buckets],
                "restore_order": self.restore_order}

    def apply_layout_state(self, state: Mapping) -> None:
        super().apply_layout_state(state)
        buckets = state.get("buckets")
        if not isinstance(buckets, list) or [tuple(b) for b in buckets] != self.buckets:
            raise ValueError(f"its buckets {buckets!r} are not this layer's {[list(b) for b in self.buckets]}")
        self.restore_order = bool(state.get("restore_order", True))

    def check_saved(self, saved: SavedTensors) -> None:
        bits = saved.raw("hole_bits")
        if bits is not None:
            need = (self.values.numel() + 7) // 8
            if bits.dtype != torch.uint8 or bits.dim() != 1 or bits.numel() != need:
                raise saved.error("hole_bits", f"has shape {tuple(bits.shape)} and dtype {bits.dtype}; the layer's "
                                  f"{self.values.numel()} values need {need} uint8 bytes (a bit each)")
        index = saved.indices("in_index")
        if index is not None:
            outside = index[(index < 0) | (index > self.in_features)]
            if outside.numel():
                raise saved.error("in_index", f"holds input position {int(outside[0])}, outside "
                                              f"0..{self.in_features} ({self.in_features} marks padding)")
        units = saved.indices("out_index")
        if units is not None:
            outside = units[(units < -1) | (units >= self.out_features)]
            if outside.numel():
                raise saved.error("out_index", f"holds unit {int(outside[0])}, outside 0..{self.out_features - 1} "
                                               "(-1 marks padding)")
            counts = torch.bincount(units[units >= 0], minlength=self.out_features)
            if (counts != 1).any():
                bad = int(torch.nonzero(counts != 1)[0])
                raise saved.error("out_index", f"holds unit {bad} {int(counts[bad])} times (each unit once)")
        saved.check_permutation("in_natural")

    @classmethod
    def empty_from_state(cls, extra: dict, tensors: Mapping[str, Tensor], device=None) -> NestedLinear:
        buckets = extra.get("buckets")
        if not isinstance(buckets, list) or not all(isinstance(b, list) and len(b) == 3 for b in buckets):
            raise ValueError(f"buckets {buckets!r} is not a list of [classes, chunk, rows]")
        values = tensors["values"]
        slots = sum(math.prod(int(v) for v in b) for b in buckets)
        if tuple(values.shape) != (slots,):
            raise ValueError(f"values {tuple(values.shape)} is not ({slots},)")
        index = tensors.get("in_index")
        layer = cls(int(extra["in_features"]), int(extra["out_features"]), buckets, bias="bias" in tensors,
                    has_bias_holes="bias_holes" in tensors, permuted_input="in_natural" in tensors,
                    restore_order=bool(extra.get("restore_order", True)),
                    index_dtype=index.dtype if index is not None else torch.int32,
                    device=device or values.device, dtype=values.dtype)
        return layer.restored_from(extra)

    # -- compute
    def forward(self, input: Tensor) -> Tensor:  # noqa: A002
        """Examples last throughout: the input's rows gathered from ``x.t()`` (a view when the previous
        nested layer returned one), the products, the restoring gather of rows, and ``.t()`` back: in a
        chain of nested layers no transpose is copied between them."""
        leading = input.shape[:-1]
        x = input.reshape(-1, self.in_features)
        if torch.is_grad_enabled() and x.requires_grad:
            rows = _GatherRows.apply(x, self.gather, self.pad_input)
        else:
            rows = _rows_of(x, self.pad_input).index_select(0, self.gather)
        bias = self._masked_bias()
        rows, values, bias = autocast_operands(rows.device, rows, self.values, bias)  # one dtype, forward and back
        if torch.is_grad_enabled() and (self.values.requires_grad or (bias is not None and bias.requires_grad)
                                        or rows.requires_grad):
            y = _NestedProduct.apply(rows, values, bias, self.dead_positions, tuple(self.buckets))
        else:
            y = _products(rows, values, bias, tuple(self.buckets))
        if self.restore is not None:
            y = _SelectRows.apply(y, self.restore) if y.requires_grad else y.index_select(0, self.restore)
        return y.t().reshape(*leading, self.out_features)

    # -- interface
    def _coordinates(self) -> tuple[Tensor, Tensor, Tensor]:
        """(output natural unit, input natural unit, keep) for every stored value, in storage order."""
        outs, ins = [], []
        col_in = col_out = 0
        for classes, chunk, rows in self.buckets:
            out_n = self.out_index.long()[col_out: col_out + classes * rows].view(classes, rows, 1)
            in_p = self.gather[col_in: col_in + classes * chunk].view(classes, 1, chunk)
            outs.append(out_n.expand(classes, rows, chunk).reshape(-1))
            ins.append(in_p.expand(classes, rows, chunk).reshape(-1))
            col_in += classes * chunk
            col_out += classes * rows
        out_natural, in_pos = torch.cat(outs), torch.cat(ins)
        keep = (out_natural >= 0) & (in_pos < self.in_features) & self.live
        in_natural = in_pos.clamp(max=self.in_features - 1)
        if self.in_natural is not None:
            in_natural = self.in_natural.long()[in_natural]
        return out_natural, in_natural, keep

    def effective_weight(self) -> Tensor:
        out_n, in_n, keep = self._coordinates()
        weight = self.values.new_zeros(self.out_features, self.in_features)
        return weight.index_put((out_n[keep], in_n[keep]), self.values[keep])

    def dense_weight_mask(self) -> Tensor:
        out_n, in_n, keep = self._coordinates()
        mask = torch.zeros(self.out_features, self.in_features, dtype=torch.bool, device=self.values.device)
        mask[out_n[keep], in_n[keep]] = True
        return mask

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, buckets={self.buckets}, "
                f"bias={self.bias is not None}")
