"""The ``block`` layout: dense blocks of shared inputs, one batched product at the parent's cost.

Where the children of a *group of parents* read one shared partition of the inputs (``contiguous``,
``feature``, ``clause`` with one clause map, ``grouped`` random, or any split whose parents fall into
a few groups), each (group, child) pair is one dense block of ``c`` shared inputs by ``r`` parents.
One batched product ``(blocks, N, c) @ (blocks, c, r)`` does exactly the parent's multiply-adds (plus
padding where chunks differ in size). Entries the budget pruned inside a block are *holes*: stored as
0.0, their gradient masked to 0.0. In an ``nn.Sequential`` a block layer may emit its units in block
order when the next layer reads any order (``output_order``), which saves one copy per layer.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import kernels
from ..validation import InvalidParameterError
from .base import LayoutError, register_layout
from .masked import MaskedLinear
from .packed import PackedLinear, PaddedRowsBias, SavedTensors, autocast_operands, compact, pack_bits, positions_of, row_factor, \
    stored_bias, unpack_bits

#: Below this many examples a block layer copies its input into block order first (measured faster
#: for batch 1 on one thread); above, the batched product reads the strided view.
BLOCK_COPY_MAX_BATCH = 16

#: How a block layer's blocks were found: ``children`` (block ``g * alpha + k`` is child ``k`` of group
#: ``g``'s parents) or ``support`` (rows with the same inputs; ``budget="structured"``'s copied layers).
GROUPINGS = ("children", "support")

#: ``auto`` uses blocks only with at most this many parent groups (more groups means thin blocks)...
MAX_GROUPS = 16
#: ... and at most one group per this many parents: on the Boolean headline's shapes (8 parents)
#: blocks of one parent each trained 17x slower than the masked layout (bench/packed.py --headline).
MIN_GROUP_ROWS = 8


class _BlockProduct(torch.autograd.Function):
    """``baddbmm(bias, x, values)`` whose value gradient is 0.0 at the holes (``holes``: the layer's
    ``hole_bits``, unpacked in the backward pass only, so the layer keeps no mask between calls)."""

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
            grad_values.masked_fill_(unpack_bits(holes, grad_values.numel()).view_as(grad_values), 0.0)
        grad_bias = grad.sum(dim=1, keepdim=True) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_values, grad_bias, None


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


def _children_blocks(members: list[list[int]], assignments: list[Tensor], alpha: int) -> list[tuple[Tensor, Tensor]]:
    """(output units, input units) of each block of a children grouping: block ``g * alpha + k`` is
    child ``k`` of group ``g``'s parents; inputs no child reads are dealt to balance the chunks."""
    block_list = []
    for parents, assignment in zip(members, assignments):
        assignment = assignment.clone()
        sizes = torch.bincount(assignment[assignment >= 0], minlength=alpha)
        for j in torch.nonzero(assignment < 0).squeeze(1).tolist():
            k = int(torch.argmin(sizes))
            assignment[j] = k
            sizes[k] += 1
        parents_t = torch.tensor(parents)
        for k in range(alpha):
            block_list.append((parents_t * alpha + k, torch.nonzero(assignment == k).squeeze(1)))
    return block_list


def support_blocks(mask: Tensor, max_blocks: int) -> list[tuple[Tensor, Tensor]] | None:
    """Rows grouped by the inputs they read, one block per group (ascending rows, blocks ordered by
    first row), or ``None`` when more than ``max_blocks`` blocks are needed.

    This is what ``budget="structured"`` gives an outgoing layer (the rows reading copy ``s`` of every
    column) or a middle layer of a deep expansion (child ``k`` reading copy ``s`` of a shared
    partition): dense blocks at the parent's count. Rows with equal inputs are found by hashing (a
    random projection, then checked equal); a row whose inputs are a subset of a block's (a weight
    the budget pruned) joins that block with a hole, larger sets first.
    """
    if mask.shape[0] == 0:
        return None
    projection = torch.randn(mask.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    step = max(1, (1 << 24) // max(1, mask.shape[1]))  # rows per piece: bounded memory on wide layers
    keys = torch.cat([mask[i:i + step].to(torch.float64) @ projection for i in range(0, mask.shape[0], step)])
    _, inverse = torch.unique(keys, return_inverse=True)
    groups = []
    for key in range(int(inverse.max()) + 1):
        units = torch.nonzero(inverse == key).squeeze(1)
        support = mask[units[0]]
        if not bool((mask[units] == support).all()):
            return None  # a hash collision: such masks are not a few shared supports anyway
        groups.append((units, support))
    groups.sort(key=lambda group: (-int(group[1].sum()), int(group[0][0])))
    supports: list[Tensor] = []
    members: list[list[Tensor]] = []
    for units, support in groups:
        if supports:
            outside = (support & ~torch.stack(supports)).any(dim=1)
            fits = torch.nonzero(~outside)
            if len(fits):
                members[int(fits[0])].append(units)
                continue
        if len(supports) == max_blocks:
            return None
        supports.append(support)
        members.append([units])
    block_list = [(torch.cat(parts).sort().values, torch.nonzero(support).squeeze(1))
                  for parts, support in zip(members, supports)]
    block_list.sort(key=lambda block: int(block[0][0]))
    return block_list


def _slots(block_list: list[tuple[Tensor, Tensor]]) -> int:
    """Stored values of a block layout (blocks x chunk x rows, padding included)."""
    chunk = max(max(len(inputs) for _, inputs in block_list), 1)
    return len(block_list) * chunk * max(len(units) for units, _ in block_list)


@register_layout
class BlockLinear(PaddedRowsBias, PackedLinear):
    """Dense blocks of shared inputs: one batched product at the parent's cost (see module doc).

    Stored: ``values`` (blocks, c, r); ``bias`` (blocks * r) in output-position order; ``in_index``
    (blocks, c) input positions (``in_features`` = padding, reads 0) unless the blocks are the
    contiguous chunks of the input; ``out_index`` (blocks * r) the natural unit of each output
    position (-1: padding row); ``in_natural`` (in_features) the natural unit of each input
    position, when the previous layer emits block order; ``hole_bits`` the bit-packed holes.
    Block ``g * alpha + k`` holds child ``k`` of group ``g``'s parents, in ascending parent order.
    """

    layout = "block"
    auto_order = 10  # tried first: where blocks fit, they do the parent's multiply-adds in one product
    reads_input_order = True
    in_words = "in blocks"

    def __init__(self, in_features: int, out_features: int, blocks: int, chunk: int, rows: int, *, bias: bool,
                 contiguous: bool, has_holes: bool, has_bias_holes: bool, permuted_input: bool,
                 restore_order: bool = True, index_dtype: torch.dtype = torch.int32, grouping: str = "children",
                 device=None, dtype=None) -> None:
        super().__init__()
        self.grouping = grouping
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
        self.register_buffer("bias_live", None, persistent=False)
        self.register_buffer("gather", None, persistent=False)
        self.register_buffer("restore", None, persistent=False)
        self.pad_input = False

    # -- from a masked layer
    @classmethod
    def from_masked(cls, layer: MaskedLinear, alpha: int, *, auto: bool = False, max_groups: int = MAX_GROUPS,
                    input_order: Tensor | None = None, natural_output: bool = True, **options) -> BlockLinear:
        """Blocks for ``layer``; ``LayoutError`` when neither the children of few enough groups of
        parents share input partitions nor (in a layer reading copied columns) few enough rows share
        their exact inputs (forced: any number; ``auto``: at most ``max_groups`` groups of at least
        ``MIN_GROUP_ROWS`` parents, rows in blocks of ``MIN_GROUP_ROWS`` on average, never one dense
        block, and of the two groupings the one storing fewer values, padding included)."""
        copies = 1
        parent = layer.parent_features
        if parent is not None and layer.in_features % int(parent[0]) == 0:
            copies = layer.in_features // int(parent[0])
        if auto and alpha == 1 and copies == 1:
            raise LayoutError("one child per parent: blocks would be one dense product")
        mask_cpu = layer.weight_mask.cpu()
        limit = max_groups if auto else layer.out_features
        if auto:  # thin blocks lose to one dense product: at least MIN_GROUP_ROWS parents a group
            limit = min(max_groups, max(1, layer.out_features // (alpha * MIN_GROUP_ROWS)))
        plans = []
        found = _groups(mask_cpu, alpha, limit) if alpha > 1 or not auto else None
        if found is not None:
            plans.append(("children", _children_blocks(*found, alpha)))
        live_count = int(mask_cpu.sum())
        # rows grouped by their inputs, for layers reading copied columns (budget="structured"): forced,
        # only where no children grouping exists; in auto, also where that one has holes
        if copies > 1 and (not plans or (auto and _slots(plans[0][1]) > live_count)):
            support = support_blocks(mask_cpu, max_groups * alpha * copies if auto else layer.out_features)
            # the mean, not the least: a structured layer's share of rows is balanced per layer, not per block
            if support is not None and (not auto or layer.out_features / len(support) >= MIN_GROUP_ROWS):
                plans.append(("support", support))
        if not plans:
            raise LayoutError(f"its children do not share input partitions in {limit} groups of parents or fewer, "
                              f"and its rows do not share their inputs in few enough blocks")
        grouping, block_list = min(plans, key=lambda plan: _slots(plan[1]))  # ties: children (listed first)
        if auto and len(block_list) == 1:
            raise LayoutError("one block: blocks would be one dense product")
        in_features, out_features = layer.in_features, layer.out_features
        chunk = max(max(len(inputs) for _, inputs in block_list), 1)
        rows = max(len(units) for units, _ in block_list)
        blocks = len(block_list)
        weight = layer.weight.detach() * layer.weight_mask
        values = weight.new_zeros(blocks, chunk, rows)
        live = torch.zeros(blocks, chunk, rows, dtype=torch.bool)
        in_index = torch.full((blocks, chunk), in_features, dtype=torch.long)
        out_index = torch.full((blocks, rows), -1, dtype=torch.long)
        weight_cpu = weight.cpu()
        for b, (units, inputs) in enumerate(block_list):
            in_index[b, : len(inputs)] = inputs
            out_index[b, : len(units)] = units
            values[b, : len(inputs), : len(units)] = weight_cpu[units][:, inputs].T.to(values.device)
            live[b, : len(inputs), : len(units)] = mask_cpu[units][:, inputs].T
        out_flat = out_index.reshape(-1)
        contiguous = (input_order is None and blocks * chunk == in_features
                      and torch.equal(in_index.reshape(-1), torch.arange(in_features)))
        if input_order is not None:  # read the producer's positions: natural input j sits at position_of[j]
            position_of = positions_of(input_order.long().cpu())
            in_index = torch.where(in_index < in_features, position_of[in_index.clamp(max=in_features - 1)], in_index)
        # emit block order (skip the restoring copy) when the next layer reads any order and no row pads
        identity = torch.equal(out_flat, torch.arange(out_features)) if out_flat.numel() == out_features else False
        restore_order = natural_output or identity or not bool((out_flat >= 0).all())
        bias, bias_mask = stored_bias(layer)
        bias_live = torch.zeros(blocks * rows, dtype=torch.bool)
        if bias is not None:
            real = out_flat >= 0
            bias_live[real] = bias_mask.cpu()[out_flat[real]]
        packed = cls(
            in_features, out_features, blocks, chunk, rows, bias=bias is not None, contiguous=contiguous,
            has_holes=not bool(live.all()), has_bias_holes=bias is not None and not bool(bias_live.all()),
            permuted_input=input_order is not None, restore_order=restore_order,
            index_dtype=compact(in_index, in_features + 1).dtype, grouping=grouping, device=layer.weight.device,
            dtype=layer.weight.dtype,
        )
        device = layer.weight.device
        with torch.no_grad():
            packed.values.copy_(values * live.to(device))
            if packed.in_index is not None:
                packed.in_index.copy_(in_index)
            if packed.in_natural is not None:
                packed.in_natural.copy_(input_order)
            packed.out_index.copy_(out_flat)
            if packed.hole_bits is not None:
                packed.hole_bits.copy_(pack_bits(~live))
            if bias is not None:
                packed.store_bias_(bias, bias_live, out_flat)
        packed.parent_features = layer.parent_features
        packed._refresh()
        return packed

    # -- derived tensors
    # Derived tensors kept between calls are the width of the input or output (int32 gathers); the
    # holes are unpacked from their bits when needed, so nothing the size of the values is kept twice.
    def _refresh(self) -> None:
        device = self.values.device
        self.bias_live = None if self.bias_holes is None else ~self.bias_holes
        self.gather = None if self.in_index is None else self.in_index.to(torch.int32).reshape(-1)
        self.pad_input = False if self.gather is None else bool((self.gather == self.in_features).any())
        natural = self.out_index.long()
        if self.restore_order:
            restore = torch.full((self.out_features,), -1, dtype=torch.long, device=device)
            real = natural >= 0
            restore[natural[real]] = torch.nonzero(real).squeeze(1)
            identity = torch.equal(restore, torch.arange(self.out_features, device=device))
            self.restore = None if identity else restore.to(torch.int32)
        else:
            self.restore = None

    @property
    def live(self) -> Tensor | None:
        """Which values are real weights (bool, the values' shape; ``None``: all), unpacked per access."""
        if self.hole_bits is None:
            return None
        return ~unpack_bits(self.hole_bits, self.values.numel()).view_as(self.values)

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

    def output_order(self) -> Tensor | None:
        return None if self.restore_order else self.out_index.long()

    def layout_state(self) -> dict:
        state = {**super().layout_state(), "blocks": self.blocks, "chunk": self.chunk, "rows": self.rows,
                 "restore_order": self.restore_order}
        if self.grouping != "children":  # written only when it is not what the first block layers held
            state["grouping"] = self.grouping
        return state

    def apply_layout_state(self, state: Mapping) -> None:
        super().apply_layout_state(state)
        if (state.get("blocks"), state.get("chunk"), state.get("rows")) != (self.blocks, self.chunk, self.rows):
            raise ValueError(f"its block shape {(state.get('blocks'), state.get('chunk'), state.get('rows'))} "
                             f"is not this layer's {(self.blocks, self.chunk, self.rows)}")
        self.restore_order = bool(state.get("restore_order", True))
        grouping = state.get("grouping", "children")
        if grouping not in GROUPINGS:
            raise ValueError(f"its grouping {grouping!r} is not one of {GROUPINGS}")
        self.grouping = grouping

    # -- saving and loading
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
                live = ~unpack_bits(bits.to(saved.device), self.values.numel()).view_as(self.values)
                if int(live.sum()) != saved.numel():
                    where = f"layer {prefix[:-1]!r}" if prefix else "the model's top-level layer"
                    raise InvalidParameterError(f"{where}: state_dict key {key!r} holds {saved.numel()} live values "
                                                f"but {bits_key!r} marks {int(live.sum())} entries live; the two were "
                                                "not saved together")
                full = saved.new_zeros(self.values.shape)
                full[live] = saved
                state_dict[key] = full
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def check_saved(self, saved: SavedTensors) -> None:
        bits = saved.raw("hole_bits")
        if bits is not None:
            need = (self.values.numel() + 7) // 8
            if bits.dtype != torch.uint8 or bits.dim() != 1 or bits.numel() != need:
                held = f"{bits.numel()} bytes" if bits.dtype == torch.uint8 else f"{bits.dtype} entries"
                raise saved.error("hole_bits", f"holds {held} of shape {tuple(bits.shape)}; the layer's "
                                  f"{self.blocks}x{self.chunk}x{self.rows} values need {need} uint8 bytes (a bit each)")
        self._check_out_index(saved)
        index = saved.indices("in_index")
        if index is not None:
            outside = index[(index < 0) | (index > self.in_features)]
            if outside.numel():
                raise saved.error("in_index", f"holds input position {int(outside[0])}, outside 0..{self.in_features} "
                                              f"({self.in_features} marks padding)")
            real = torch.where(index < self.in_features, index, -1)
            ordered = real.sort(dim=1).values
            twice = torch.nonzero((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0))
            if len(twice):
                b, j = (int(v) for v in twice[0])
                raise saved.error("in_index", f"holds input position {int(ordered[b, j])} twice in block {b}")
        saved.check_permutation("in_natural")

    def _check_out_index(self, saved: SavedTensors) -> None:
        index = saved.indices("out_index")
        if index is None:
            return
        out = self.out_features
        outside = index[(index < -1) | (index >= out)]
        if outside.numel():
            raise saved.error("out_index", f"holds unit {int(outside[0])}, outside 0..{out - 1} (-1 marks padding)")
        counts = torch.bincount(index[index >= 0], minlength=out)
        if (counts > 1).any():
            raise saved.error("out_index", f"holds unit {int(torch.nonzero(counts > 1)[0])} twice")
        if (counts == 0).any():
            raise saved.error("out_index", f"holds no unit {int(torch.nonzero(counts == 0)[0])}")
        units = index.view(self.blocks, self.rows)
        real = units >= 0
        if saved.extra().get("grouping", "children") == "support":
            # the order from_masked writes: ascending units in each block, padding last, blocks by first unit
            bad = real[:, 1:] & (~real[:, :-1] | (units[:, 1:] <= units[:, :-1]))
            late = torch.nonzero(units[1:, 0] <= units[:-1, 0])
            if bad.any() or len(late) or not bool(real[:, 0].all()):
                raise saved.error("out_index", "lists units out of block order (each block lists its units in "
                                               "ascending order, padding -1 last; blocks ordered by their first unit)")
            return
        # the order from_masked writes: block g*alpha+k holds child k of group g's parents, ascending,
        # padding last; every child of a group has the same parents; groups ordered by first parent
        extra = saved.extra()
        alpha = row_factor(out, extra.get("parent_features"))
        units = index.view(self.blocks, self.rows)
        real = units >= 0
        parents = torch.where(real, units.div(alpha, rounding_mode="floor"), -1)
        block = torch.arange(self.blocks).view(-1, 1)
        bad = (real & (units % alpha != block % alpha))  # a unit in another child's block
        bad[:, 1:] |= real[:, 1:] & (~real[:, :-1] | (units[:, 1:] <= units[:, :-1]))  # padding last, ascending
        if self.blocks % alpha:
            raise saved.error("out_index", f"cannot be in block order: {self.blocks} blocks are not whole groups "
                                           f"of {alpha} children")
        grouped = parents.view(-1, alpha, self.rows)
        bad |= (grouped != grouped[:, :1]).reshape(self.blocks, self.rows)  # same parents in each child
        first = grouped[:, 0, 0]
        late = torch.nonzero(first[1:] <= first[:-1])
        if len(late):
            bad[(int(late[0]) + 1) * alpha, 0] = True
        if bad.any():
            b, r = (int(v) for v in torch.nonzero(bad)[0])
            raise saved.error("out_index", f"lists units out of block order: block {b} holds unit {int(units[b, r])} "
                                           f"at row {r} (block g*{alpha}+k lists child k of its group's parents "
                                           "in ascending order, padding -1 last)")

    @classmethod
    def empty_from_state(cls, extra: dict, tensors: Mapping[str, Tensor], device=None) -> BlockLinear:
        values = tensors["values"]
        blocks, chunk, rows = (int(extra["blocks"]), int(extra["chunk"]), int(extra["rows"]))
        bits = tensors.get("hole_bits")
        if values.dim() == 1 and bits is not None:  # live values only (see _save_to_state_dict)
            pass  # a hole_bits of the wrong length or live count is refused, naming the key, when the state loads
        elif tuple(values.shape) != (blocks, chunk, rows):
            raise ValueError(f"values {tuple(values.shape)} is not {(blocks, chunk, rows)}")
        index = tensors.get("in_index")
        layer = cls(int(extra["in_features"]), int(extra["out_features"]), blocks, chunk, rows,
                    bias="bias" in tensors, contiguous=index is None, has_holes=bits is not None,
                    has_bias_holes="bias_holes" in tensors, permuted_input="in_natural" in tensors,
                    restore_order=bool(extra.get("restore_order", True)),
                    index_dtype=index.dtype if index is not None else torch.int32,
                    grouping=extra.get("grouping", "children") if extra.get("grouping") in GROUPINGS else "children",
                    device=device or values.device, dtype=values.dtype)
        return layer.restored_from(extra)

    # -- compute
    def forward(self, input: Tensor) -> Tensor:  # noqa: A002
        if kernels.wants(input):  # Triton kernels on CUDA (torchfpe.core.kernels); None where they do not apply
            y = kernels.forward(self, input)
            if y is not None:
                return y
        # The two branches on the batch size are eager-mode speed-ups only: traced (torch.compile,
        # torch.export) the layer takes one path for every batch size, so no guard pins the batch.
        eager = not torch.compiler.is_compiling()
        masked_grad = self.hole_bits is not None and torch.is_grad_enabled() and self.values.requires_grad
        if eager and input.dim() == 2 and input.shape[0] == 1 and not masked_grad:
            return self._forward_one(input)
        leading = input.shape[:-1]
        x = input.reshape(-1, self.in_features)
        n = x.shape[0]
        if self.gather is None:
            xb = x.view(n, self.blocks, self.chunk).transpose(0, 1)
        else:
            if self.pad_input:
                x = F.pad(x, (0, 1))
            xb = x.index_select(1, self.gather).view(n, self.blocks, self.chunk).transpose(0, 1)
        if eager and n <= BLOCK_COPY_MAX_BATCH:
            xb = xb.contiguous()
        bias = self._masked_bias()
        bias = None if bias is None else bias.view(self.blocks, 1, self.rows)
        if masked_grad:
            xb, values, bias = autocast_operands(xb.device, xb, self.values, bias)
            y = _BlockProduct.apply(xb, values, bias, self.hole_bits)
        elif bias is None:
            y = torch.bmm(xb, self.values)
        else:
            y = torch.baddbmm(bias, xb, self.values)
        y = y.transpose(0, 1).reshape(n, self.blocks * self.rows)
        if self.restore is not None:
            y = y.index_select(1, self.restore)
        return y.reshape(*leading, y.shape[-1])

    def _forward_one(self, x: Tensor) -> Tensor:
        """One example: the same product in four calls (a view, the batched product, a view, the
        restoring gather); at batch 1 the parent's product is one call, and each saved call is a
        measurable share of a cache-resident layer's time."""
        if self.gather is not None:
            x = (F.pad(x, (0, 1)) if self.pad_input else x).index_select(1, self.gather)
        xb = x.reshape(self.blocks, 1, self.chunk)
        bias = self._masked_bias()
        y = torch.bmm(xb, self.values) if bias is None else torch.baddbmm(bias.view(self.blocks, 1, self.rows), xb,
                                                                          self.values)
        y = y.view(1, self.blocks * self.rows)
        return y if self.restore is None else y.index_select(1, self.restore)

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

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, blocks={self.blocks}, "
                f"chunk={self.chunk}, rows={self.rows}, bias={self.bias is not None}")
