"""Triton kernels of the ``parent`` layout: the parent's weights plus a child id per entry, alpha outputs each.

The product (``ParentLinear``'s, see :mod:`torchfpe.core.layouts.parent`) for ``x`` (n, in_features)::

    y[n, alpha * i + k] = sum_j values[i, j] x[n, gather[j]] [child(i, j) == k] + bias[alpha * i + k]

``child(i, j)`` is read from the layout's bit planes (``child_bits``: bit ``j % 8`` of byte ``j // 8``
of plane ``q`` is bit ``q`` of the id), so the kernels read the parent's values and about
``log2(alpha)`` bits an entry, never an alpha-sized weight. ``gather`` (in_features, a permutation,
or ``None`` for the identity) is the input the parent's column ``j`` reads, so a permuted input
costs no copy.

How: a tile of ``BLOCK_I`` parents is expanded in registers to their ``BLOCK_I * KIDS`` children's
columns (``KIDS``: alpha rounded up to a power of two; the extra columns are never stored), and one
``tl.dot`` per input tile multiplies it. So the bytes are the parent's and the multiply-adds
alpha times the parent's, as the masked layout's (a child's columns differ per parent, so no dense
tile holds fewer). Sums are accumulated in float32; float32 products use IEEE precision unless
``torch.backends.cuda.matmul.allow_tf32`` is set.

Up to ``ONE_EXAMPLE_MAX_BATCH`` examples the forward takes another kernel: one example a program,
each parent row's products summed per child in registers (no tile of 16 examples to pad, which in
float32 IEEE would cost more than reading the values).

Backward: ``grad_x`` by one launch over (batch tile, input tile), each parent tile's children
expanded again (plain stores: ``gather`` is a permutation); ``grad_values`` by one launch over
(input tile, parent tile) computing every child's product and keeping the entry's own child's,
then 0.0 at the holes.
"""

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import batch_tile, dot, dot_precision, interpreted, tile


@triton.jit
def _child_ids(bits_ptr, row, col, mask, plane_size, width, BITS: tl.constexpr):
    """The child id (int32) of entries (``row``, ``col``) (broadcastable index blocks) from the bit planes."""
    shift = (col % 8).to(tl.int32)
    address = bits_ptr + row * width + col // 8
    child = (tl.load(address, mask=mask, other=0).to(tl.int32) >> shift) & 1
    for q in tl.static_range(1, BITS):
        byte = tl.load(address + q * plane_size, mask=mask, other=0).to(tl.int32)
        child = child | (((byte >> shift) & 1) << q)
    return child


@triton.jit(do_not_specialize=["n"])  # one build for every batch size
def _forward_kernel(x_ptr, values_ptr, bits_ptr, bias_ptr, gather_ptr, y_ptr,
                    n, rows, cols, width, alpha, stride_x, stride_y,
                    BITS: tl.constexpr, KIDS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GATHER: tl.constexpr,
                    PRECISION: tl.constexpr,
                    UPCAST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    pid_n, pid_i = tl.program_id(0), tl.program_id(1)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    offs_i = (pid_i * BLOCK_I + tl.arange(0, BLOCK_I)).to(tl.int64)
    n_ok, i_ok = offs_n < n, offs_i < rows
    kids = tl.arange(0, KIDS)
    acc = tl.zeros((BLOCK_N, BLOCK_I * KIDS), dtype=tl.float32)
    for j0 in range(0, cols, BLOCK_J):
        offs_j = (j0 + tl.arange(0, BLOCK_J)).to(tl.int64)
        j_ok = offs_j < cols
        if HAS_GATHER:
            x_cols = tl.load(gather_ptr + offs_j, mask=j_ok, other=0).to(tl.int64)
        else:
            x_cols = offs_j
        xt = tl.load(x_ptr + offs_n[:, None] * stride_x + x_cols[None, :], mask=n_ok[:, None] & j_ok[None, :],
                     other=0.0)
        entry_ok = j_ok[:, None] & i_ok[None, :]
        v = tl.load(values_ptr + offs_i[None, :] * cols + offs_j[:, None], mask=entry_ok, other=0.0)  # (J, I)
        child = _child_ids(bits_ptr, offs_i[None, :], offs_j[:, None], entry_ok, rows * width, width, BITS)
        w = tl.where(child[:, :, None] == kids[None, None, :], v[:, :, None], 0.0).to(xt.dtype)  # (J, I, KIDS)
        acc = dot(xt, tl.reshape(w, (BLOCK_J, BLOCK_I * KIDS)), acc, PRECISION, UPCAST)
    slots = tl.arange(0, BLOCK_I * KIDS)
    parent, kid = pid_i * BLOCK_I + slots // KIDS, slots % KIDS
    unit = (parent * alpha + kid).to(tl.int64)
    unit_ok = (parent < rows) & (kid < alpha)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + unit, mask=unit_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs_n[:, None] * stride_y + unit[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=n_ok[:, None] & unit_ok[None, :])


@triton.jit
def _forward_one_kernel(x_ptr, values_ptr, bits_ptr, bias_ptr, gather_ptr, y_ptr,
                        rows, cols, width, alpha, stride_x, stride_y,
                        BITS: tl.constexpr, KIDS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GATHER: tl.constexpr,
                        BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    """One example a program (axis 0), no ``tl.dot``: each parent row's products summed per child."""
    example, pid_i = tl.program_id(0).to(tl.int64), tl.program_id(1)
    offs_i = (pid_i * BLOCK_I + tl.arange(0, BLOCK_I)).to(tl.int64)
    i_ok = offs_i < rows
    kids = tl.arange(0, KIDS)
    acc = tl.zeros((BLOCK_I, KIDS), dtype=tl.float32)
    for j0 in range(0, cols, BLOCK_J):
        offs_j = (j0 + tl.arange(0, BLOCK_J)).to(tl.int64)
        j_ok = offs_j < cols
        if HAS_GATHER:
            x_cols = tl.load(gather_ptr + offs_j, mask=j_ok, other=0).to(tl.int64)
        else:
            x_cols = offs_j
        xv = tl.load(x_ptr + example * stride_x + x_cols, mask=j_ok, other=0.0).to(tl.float32)
        entry_ok = i_ok[:, None] & j_ok[None, :]
        v = tl.load(values_ptr + offs_i[:, None] * cols + offs_j[None, :], mask=entry_ok, other=0.0).to(tl.float32)
        child = _child_ids(bits_ptr, offs_i[:, None], offs_j[None, :], entry_ok, rows * width, width, BITS)  # (I, J)
        products = v * xv[None, :]
        acc += tl.sum(tl.where(child[:, None, :] == kids[None, :, None], products[:, None, :], 0.0), axis=2)
    unit = offs_i[:, None] * alpha + kids[None, :]
    unit_ok = i_ok[:, None] & (kids < alpha)[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + unit, mask=unit_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + example * stride_y + unit, acc.to(y_ptr.dtype.element_ty), mask=unit_ok)


@triton.jit(do_not_specialize=["n"])  # one build for every batch size
def _grad_input_kernel(grad_ptr, values_ptr, bits_ptr, gather_ptr, out_ptr,
                       n, rows, cols, width, alpha, stride_g, stride_out,
                       BITS: tl.constexpr, KIDS: tl.constexpr, HAS_GATHER: tl.constexpr, PRECISION: tl.constexpr,
                       UPCAST: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    pid_n, pid_j = tl.program_id(0), tl.program_id(1)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    offs_j = (pid_j * BLOCK_J + tl.arange(0, BLOCK_J)).to(tl.int64)
    n_ok, j_ok = offs_n < n, offs_j < cols
    kids = tl.arange(0, KIDS)
    slots = tl.arange(0, BLOCK_I * KIDS)
    acc = tl.zeros((BLOCK_N, BLOCK_J), dtype=tl.float32)
    for i0 in range(0, rows, BLOCK_I):
        parent, kid = i0 + slots // KIDS, slots % KIDS
        unit = (parent * alpha + kid).to(tl.int64)
        unit_ok = (parent < rows) & (kid < alpha)
        g = tl.load(grad_ptr + offs_n[:, None] * stride_g + unit[None, :], mask=n_ok[:, None] & unit_ok[None, :],
                    other=0.0)
        offs_i = (i0 + tl.arange(0, BLOCK_I)).to(tl.int64)
        entry_ok = (offs_i < rows)[:, None] & j_ok[None, :]
        v = tl.load(values_ptr + offs_i[:, None] * cols + offs_j[None, :], mask=entry_ok, other=0.0)  # (I, J)
        child = _child_ids(bits_ptr, offs_i[:, None], offs_j[None, :], entry_ok, rows * width, width, BITS)
        wt = tl.where(child[:, None, :] == kids[None, :, None], v[:, None, :], 0.0).to(g.dtype)  # (I, KIDS, J)
        acc = dot(g, tl.reshape(wt, (BLOCK_I * KIDS, BLOCK_J)), acc, PRECISION, UPCAST)
    if HAS_GATHER:
        x_cols = tl.load(gather_ptr + offs_j, mask=j_ok, other=0).to(tl.int64)
    else:
        x_cols = offs_j
    tl.store(out_ptr + offs_n[:, None] * stride_out + x_cols[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=n_ok[:, None] & j_ok[None, :])


@triton.jit(do_not_specialize=["n"])  # one build for every batch size
def _grad_values_kernel(grad_ptr, x_ptr, bits_ptr, gather_ptr, out_ptr,
                        n, rows, cols, width, alpha, stride_g, stride_x,
                        BITS: tl.constexpr, KIDS: tl.constexpr, HAS_GATHER: tl.constexpr, PRECISION: tl.constexpr,
                        UPCAST: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    pid_j, pid_i = tl.program_id(0), tl.program_id(1)
    offs_j = (pid_j * BLOCK_J + tl.arange(0, BLOCK_J)).to(tl.int64)
    offs_i = (pid_i * BLOCK_I + tl.arange(0, BLOCK_I)).to(tl.int64)
    j_ok, i_ok = offs_j < cols, offs_i < rows
    if HAS_GATHER:
        x_cols = tl.load(gather_ptr + offs_j, mask=j_ok, other=0).to(tl.int64)
    else:
        x_cols = offs_j
    kids = tl.arange(0, KIDS)
    slots = tl.arange(0, BLOCK_I * KIDS)
    parent, kid = pid_i * BLOCK_I + slots // KIDS, slots % KIDS
    unit = (parent * alpha + kid).to(tl.int64)
    unit_ok = (parent < rows) & (kid < alpha)
    acc = tl.zeros((BLOCK_J, BLOCK_I * KIDS), dtype=tl.float32)
    for n0 in range(0, n, BLOCK_N):
        offs_n = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        n_ok = offs_n < n
        xt = tl.load(x_ptr + offs_n[None, :] * stride_x + x_cols[:, None], mask=j_ok[:, None] & n_ok[None, :],
                     other=0.0)
        g = tl.load(grad_ptr + offs_n[:, None] * stride_g + unit[None, :], mask=n_ok[:, None] & unit_ok[None, :],
                    other=0.0)
        acc = dot(xt, g, acc, PRECISION, UPCAST)
    entry_ok = j_ok[:, None] & i_ok[None, :]
    child = _child_ids(bits_ptr, offs_i[None, :], offs_j[:, None], entry_ok, rows * width, width, BITS)  # (J, I)
    every = tl.reshape(acc, (BLOCK_J, BLOCK_I, KIDS))
    own = tl.sum(tl.where(child[:, :, None] == kids[None, None, :], every, 0.0), axis=2)
    tl.store(out_ptr + offs_i[None, :] * cols + offs_j[:, None], own.to(out_ptr.dtype.element_ty), mask=entry_ok)


#: Under the interpreter the products are taken in float32 (see :func:`._common.dot`).
_UPCAST = interpreted(_forward_kernel)


#: Batches up to this size take :func:`_forward_one_kernel` (a guess, not measured: bench/gpu.py times batch 1).
ONE_EXAMPLE_MAX_BATCH = 4


def _rowmajor(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _kids(alpha: int) -> int:
    return 1 << max(0, alpha - 1).bit_length()


def _tiles(n: int, alpha: int, dtype: torch.dtype) -> dict:
    """Launch settings: about 64 children's columns a parent tile, whatever alpha."""
    block_n, warps = batch_tile(n, dtype)
    return dict(BLOCK_N=block_n, BLOCK_I=max(16, 64 // _kids(alpha)), BLOCK_J=32, KIDS=_kids(alpha), num_warps=warps,
                PRECISION=dot_precision(dtype), UPCAST=_UPCAST)


def forward(x: Tensor, values: Tensor, child_bits: Tensor, bias: Optional[Tensor], gather: Optional[Tensor],
            alpha: int) -> Tensor:
    """The parent-order product ``(n, in_features) -> (n, alpha * rows)`` (module doc), no autograd.
    Up to :data:`ONE_EXAMPLE_MAX_BATCH` examples one example a program (no padding to 16 rows; the
    programs of one parent tile run side by side, so the values come from DRAM about once)."""
    x, values, child_bits = _rowmajor(x), values.contiguous(), child_bits.contiguous()
    n = x.shape[0]
    rows, cols = values.shape
    y = x.new_empty(n, alpha * rows)
    if n == 0:
        return y
    shared = dict(BITS=child_bits.shape[0], HAS_BIAS=bias is not None, HAS_GATHER=gather is not None)
    bias_arg, gather_arg = values if bias is None else bias, child_bits if gather is None else gather
    if n <= ONE_EXAMPLE_MAX_BATCH:
        block_i = 16
        _forward_one_kernel[(n, triton.cdiv(rows, block_i))](
            x, values, child_bits, bias_arg, gather_arg, y, rows, cols, child_bits.shape[2], alpha, x.stride(0),
            y.stride(0), KIDS=_kids(alpha), BLOCK_I=block_i, BLOCK_J=max(32, 512 // _kids(alpha)), **shared)
        return y
    tiles = _tiles(n, alpha, x.dtype)
    grid = (triton.cdiv(n, tiles["BLOCK_N"]), triton.cdiv(rows, tiles["BLOCK_I"]))
    _forward_kernel[grid](x, values, child_bits, bias_arg, gather_arg, y, n, rows, cols, child_bits.shape[2], alpha,
                          x.stride(0), y.stride(0), **shared, **tiles)
    return y


def grad_input(grad: Tensor, values: Tensor, child_bits: Tensor, gather: Optional[Tensor], alpha: int) -> Tensor:
    """``d loss / d x`` (n, in_features) from the output gradient (n, alpha * rows)."""
    grad, values, child_bits = _rowmajor(grad), values.contiguous(), child_bits.contiguous()
    n = grad.shape[0]
    rows, cols = values.shape
    out = grad.new_empty(n, cols)
    if n == 0:
        return out
    tiles = _tiles(n, alpha, grad.dtype)
    grid = (triton.cdiv(n, tiles["BLOCK_N"]), triton.cdiv(cols, tiles["BLOCK_J"]))
    _grad_input_kernel[grid](grad, values, child_bits, child_bits if gather is None else gather, out, n, rows, cols,
                             child_bits.shape[2], alpha, grad.stride(0), out.stride(0), BITS=child_bits.shape[0],
                             HAS_GATHER=gather is not None, **tiles)
    return out


def grad_values(grad: Tensor, x: Tensor, values: Tensor, child_bits: Tensor, gather: Optional[Tensor], alpha: int,
                holes: Optional[Tensor]) -> Tensor:
    """``d loss / d values`` (rows, cols): each entry's own child's product, 0.0 at the flat positions ``holes``."""
    grad, x, child_bits = _rowmajor(grad), _rowmajor(x), child_bits.contiguous()
    n = x.shape[0]
    rows, cols = values.shape
    out = torch.empty(rows, cols, device=values.device, dtype=values.dtype)
    tiles = _tiles(n, alpha, x.dtype)
    grid = (triton.cdiv(cols, tiles["BLOCK_J"]), triton.cdiv(rows, tiles["BLOCK_I"]))
    _grad_values_kernel[grid](grad, x, child_bits, child_bits if gather is None else gather, out, n, rows, cols,
                              child_bits.shape[2], alpha, grad.stride(0), x.stride(0), BITS=child_bits.shape[0],
                              HAS_GATHER=gather is not None, **tiles)
    if holes is not None and holes.numel():
        out.view(-1).index_fill_(0, holes, 0.0)
    return out
