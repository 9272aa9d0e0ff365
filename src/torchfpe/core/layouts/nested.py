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
from .block import MIN_GROUP_ROWS, _support_blocks
from .masked import MaskedLinear
from .packed import PackedLinear, SavedTensors, autocast_operands, compact, pack_bits, positions_of, stored_bias, unpack_bits

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


class _NestedProduct(torch.autograd.Function):
    """The buckets' batched products on one gathered input; value gradient 0.0 at the holes (``dead``:
    the layer's ``hole_bits``, or ``None`` when it has none).

    ``x``: (N, sum of classes * chunk) gathered inputs; ``values``: flat; ``shapes``: (classes, chunk,
    rows) per bucket. Returns (N, sum of classes * rows) in position order.
    """

    @staticmethod
    def forward(ctx, x: Tensor, values: Tensor, dead: Tensor | None, shapes: tuple) -> Tensor:  # noqa: D102
        ctx.save_for_backward(x, values, dead)
        ctx.shapes = shapes
        return _products(x, values, shapes)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        x, values, dead = ctx.saved_tensors
        n = x.shape[0]
        grad_x = [] if ctx.needs_input_grad[0] else None
        grad_values = [] if ctx.needs_input_grad[1] else None
        col_in = col_out = at = 0
        for classes, chunk, rows in ctx.shapes:
            v = values[at: at + classes * chunk * rows].view(classes, chunk, rows)
            g = grad[:, col_out: col_out + classes * rows].view(n, classes, rows).transpose(0, 1)
            if grad_x is not None:
                grad_x.append(torch.bmm(g, v.transpose(1, 2)).transpose(0, 1).reshape(n, classes * chunk))
            if grad_values is not None:
                xb = x[:, col_in: col_in + classes * chunk].view(n, classes, chunk).transpose(0, 1)
                grad_values.append(torch.bmm(xb.transpose(1, 2), g).reshape(-1))
            at += classes * chunk * rows
            col_in += classes * chunk
            col_out += classes * rows
        if grad_x is not None:
            grad_x = torch.cat(grad_x, 1) if len(grad_x) > 1 else grad_x[0]
        if grad_values is not None:
            grad_values = torch.cat(grad_values) if len(grad_values) > 1 else grad_values[0]
            if dead is not None:  # the hole bits: unpacked here only, a byte a value while it runs
                grad_values.masked_fill_(unpack_bits(dead, grad_values.numel()), 0.0)
        return grad_x, grad_values, None, None


def _products(x: Tensor, values: Tensor, shapes: tuple) -> Tensor:
    """One batched product per bucket on the gathered input, outputs side by side in position order."""
    n = x.shape[0]
    out = []
    col = at = 0
    for classes, chunk, rows in shapes:
        v = values[at: at + classes * chunk * rows].view(classes, chunk, rows)
        xb = x[:, col: col + classes * chunk].view(n, classes, chunk).transpose(0, 1)
        out.append(torch.bmm(xb, v).transpose(0, 1).reshape(n, classes * rows))
        at += classes * chunk * rows
        col += classes * chunk
    return torch.cat(out, 1) if len(out) > 1 else out[0]


@register_layout
class NestedLinear(PackedLinear):
    """Classes of rows sharing their inputs, bucketed into a few batched products (see module doc).

    Stored: ``values`` (flat: bucket after bucket, each (classes, chunk, rows)); ``bias`` (one per
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
        than the rows), or, in ``auto``: the layer does not read copied columns (a first layer: ``block``
        holds it), or padding and holes exceed ``MAX_SLOT_RATIO`` times the live values.
        """
        parent = layer.parent_features
        copies = layer.in_features // int(parent[0]) if parent is not None and \
            layer.in_features % int(parent[0]) == 0 else 1
        if auto and copies == 1:
            raise LayoutError("it does not read copied columns (not a middle layer of a deep expansion)")
        mask_cpu = layer.weight_mask.cpu()
        limit = max(1, layer.out_features // MIN_GROUP_ROWS) if auto else layer.out_features
        classes = _support_blocks(mask_cpu, limit)
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
            v = weight.new_zeros(len(ids), chunk, rows)
            keep = torch.zeros(len(ids), chunk, rows, dtype=torch.bool)
            gather = torch.full((len(ids), chunk), in_features, dtype=torch.long)
            units_of = torch.full((len(ids), rows), -1, dtype=torch.long)
            for b, c in enumerate(ids):
                units, inputs = classes[c]
                gather[b, : len(inputs)] = inputs
                units_of[b, : len(units)] = units
                v[b, : len(inputs), : len(units)] = weight[units][:, inputs].T
                keep[b, : len(inputs), : len(units)] = mask_cpu[units][:, inputs].T
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
                stored = bias.new_zeros(out_flat.numel())
                stored[real.to(device)] = bias[out_flat[real].to(device)]
                packed.bias.copy_(stored * bias_live.to(device))
                if packed.bias_holes is not None:
                    packed.bias_holes.copy_(~bias_live)
        packed.parent_features = layer.parent_features
        packed._refresh()
        return packed

    # -- derived tensors
    def _refresh(self) -> None:
        device = self.values.device
        # nothing value-sized is kept besides the values: the holes are unpacked from hole_bits per call
        self.has_dead = bool(self.hole_bits.any())
        self.bias_live = None if self.bias_holes is None else ~self.bias_holes
        self.gather = self.in_index.to(torch.int32)
        self.pad_input = bool((self.gather == self.in_features).any())
        natural = self.out_index.long()
        if self.restore_order:
            real = natural >= 0
            restore = torch.full((self.out_features,), -1, dtype=torch.long, device=device)
            restore[natural[real]] = torch.nonzero(real).squeeze(1)
            identity = restore.numel() == natural.numel() and \
                torch.equal(restore, torch.arange(self.out_features, device=device))
            self.restore = None if identity else restore.to(torch.int32)
        else:
            self.restore = None

    @property
    def live(self) -> Tensor:
        """Which values are real weights (bool, flat), unpacked from ``hole_bits`` per access."""
        return ~unpack_bits(self.hole_bits, self.values.numel())

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
        leading = input.shape[:-1]
        x = input.reshape(-1, self.in_features)
        if self.pad_input:
            x = F.pad(x, (0, 1))
        x = x.index_select(1, self.gather)
        if torch.is_grad_enabled() and self.values.requires_grad:
            x, values = autocast_operands(x.device, x, self.values)  # forward and backward in one dtype
            y = _NestedProduct.apply(x, values, self.hole_bits if self.has_dead else None, tuple(self.buckets))
        else:
            y = _products(x, self.values, tuple(self.buckets))
        bias = self._masked_bias()
        if bias is not None:
            y = y + bias
        if self.restore is not None:
            y = y.index_select(1, self.restore)
        return y.reshape(*leading, y.shape[-1])

    # -- interface
    def _coordinates(self) -> tuple[Tensor, Tensor, Tensor]:
        """(output natural unit, input natural unit, keep) for every stored value, in storage order."""
        outs, ins = [], []
        col_in = col_out = 0
        for classes, chunk, rows in self.buckets:
            out_n = self.out_index.long()[col_out: col_out + classes * rows].view(classes, 1, rows)
            in_p = self.gather[col_in: col_in + classes * chunk].long().view(classes, chunk, 1)
            outs.append(out_n.expand(classes, chunk, rows).reshape(-1))
            ins.append(in_p.expand(classes, chunk, rows).reshape(-1))
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
        return (f"in_features={self.in_features}, out_features={self.out_features}, buckets={self.buckets}, "
                f"bias={self.bias is not None}")
