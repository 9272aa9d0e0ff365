"""Triton kernels of the ``block`` layout: one launch multiplies every block, permutations folded in.

The product (``BlockLinear``'s, see :mod:`torchfpe.core.layouts.block`) for ``x`` (n, in_features)::

    y[n, position[b * rows + r]] = sum_c x[n, gather[b * chunk + c]] values[b, c, r] + bias[b * rows + r]

``gather`` (blocks * chunk, or ``None`` for the contiguous chunks ``b * chunk + c``) is the input
position each block reads; ``in_features`` there marks padding and reads 0. ``position`` (blocks *
rows) is where each block row lands in the output (-1: a padding row, never written). So the
input gather and the output restore cost no copies: the kernels read and write through them.

Contract: ``position`` holds each output column 0..``out_width`` - 1 exactly once (the output is
not zero-filled); ``values`` is contiguous; ``x``, ``values`` and ``bias`` share one dtype (float32,
bfloat16 or float16); sums are accumulated in float32. float32 products use IEEE precision unless
``torch.backends.cuda.matmul.allow_tf32`` is set (the rule cuBLAS follows for ``F.linear``).

Up to ``ONE_EXAMPLE_MAX_BATCH`` examples the forward takes one example a program, without
``tl.dot`` (whose tiles of at least 16 examples would be mostly padding).

Backward: ``grad_x`` by one launch over (batch tile, chunk tile, block), accumulated with atomic
adds in float32 where an input is read by several blocks (several parent groups; the summation
order then varies in the last bits from run to run), plain stores where each input is read once;
``grad_values`` by one launch over (chunk tile, row tile, block), then 0.0 at the holes.
"""

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import batch_tile, dot, dot_precision, interpreted, tile


@triton.jit(do_not_specialize=["n"])  # one build for every batch size
def _forward_kernel(x_ptr, values_ptr, bias_ptr, gather_ptr, position_ptr, y_ptr,
                    n, in_features, chunk, rows, stride_x, stride_y,
                    HAS_BIAS: tl.constexpr, HAS_GATHER: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr):
    pid_n, pid_r, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    n_ok, r_ok = offs_n < n, offs_r < rows
    block_values = values_ptr + b.to(tl.int64) * chunk * rows
    acc = tl.zeros((BLOCK_N, BLOCK_R), dtype=tl.float32)
    for c0 in range(0, chunk, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        c_ok = offs_c < chunk
        if HAS_GATHER:
            cols = tl.load(gather_ptr + b * chunk + offs_c, mask=c_ok, other=in_features).to(tl.int64)
        else:
            cols = (b * chunk + offs_c).to(tl.int64)
        col_ok = c_ok & (cols < in_features)
        xt = tl.load(x_ptr + offs_n[:, None] * stride_x + cols[None, :], mask=n_ok[:, None] & col_ok[None, :],
                     other=0.0)
        v = tl.load(block_values + offs_c[:, None] * rows + offs_r[None, :], mask=c_ok[:, None] & r_ok[None, :],
                    other=0.0)
        acc = dot(xt, v, acc, PRECISION, UPCAST)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + b * rows + offs_r, mask=r_ok, other=0.0).to(tl.float32)[None, :]
    position = tl.load(position_ptr + b * rows + offs_r, mask=r_ok, other=-1).to(tl.int64)
    tl.store(y_ptr + offs_n[:, None] * stride_y + position[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=n_ok[:, None] & (position >= 0)[None, :])


@triton.jit
def _forward_one_kernel(x_ptr, values_ptr, bias_ptr, gather_ptr, position_ptr, y_ptr,
                        in_features, chunk, rows, stride_x, stride_y,
                        HAS_BIAS: tl.constexpr, HAS_GATHER: tl.constexpr, BLOCK_C: tl.constexpr,
                        BLOCK_R: tl.constexpr):
    """One example a program (axis 0), no ``tl.dot``: a block's rows summed over its chunk."""
    example, pid_r, b = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = offs_r < rows
    block_values = values_ptr + b.to(tl.int64) * chunk * rows
    acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for c0 in range(0, chunk, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        c_ok = offs_c < chunk
        if HAS_GATHER:
            cols = tl.load(gather_ptr + b * chunk + offs_c, mask=c_ok, other=in_features).to(tl.int64)
        else:
            cols = (b * chunk + offs_c).to(tl.int64)
        xv = tl.load(x_ptr + example * stride_x + cols, mask=c_ok & (cols < in_features), other=0.0).to(tl.float32)
        v = tl.load(block_values + offs_c[:, None] * rows + offs_r[None, :], mask=c_ok[:, None] & r_ok[None, :],
                    other=0.0).to(tl.float32)
        acc += tl.sum(v * xv[:, None], axis=0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + b * rows + offs_r, mask=r_ok, other=0.0).to(tl.float32)
    position = tl.load(position_ptr + b * rows + offs_r, mask=r_ok, other=-1).to(tl.int64)
    tl.store(y_ptr + example * stride_y + position, acc.to(y_ptr.dtype.element_ty), mask=position >= 0)


@triton.jit(do_not_specialize=["n"])  # one build for every batch size
def _grad_input_kernel(grad_ptr, values_ptr, gather_ptr, position_ptr, out_ptr,
                       n, in_features, chunk, rows, stride_g, stride_out,
                       HAS_GATHER: tl.constexpr, ATOMIC: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr):
    pid_n, pid_c, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    n_ok, c_ok = offs_n < n, offs_c < chunk
    block_values = values_ptr + b.to(tl.int64) * chunk * rows
    acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
    for r0 in range(0, rows, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        r_ok = offs_r < rows
        position = tl.load(position_ptr + b * rows + offs_r, mask=r_ok, other=-1).to(tl.int64)
        g = tl.load(grad_ptr + offs_n[:, None] * stride_g + position[None, :],
                    mask=n_ok[:, None] & (position >= 0)[None, :], other=0.0)
        vt = tl.load(block_values + offs_c[None, :] * rows + offs_r[:, None], mask=c_ok[None, :] & r_ok[:, None],
                     other=0.0)
        acc = dot(g, vt, acc, PRECISION, UPCAST)
    if HAS_GATHER:
        cols = tl.load(gather_ptr + b * chunk + offs_c, mask=c_ok, other=in_features).to(tl.int64)
    else:
        cols = (b * chunk + offs_c).to(tl.int64)
    keep = n_ok[:, None] & (c_ok & (cols < in_features))[None, :]
    target = out_ptr + offs_n[:, None] * stride_out + cols[None, :]
    if ATOMIC:
        tl.atomic_add(target, acc, mask=keep)
    else:
        tl.store(target, acc.to(out_ptr.dtype.element_ty), mask=keep)


@triton.jit(do_not_specialize=["n"])  # one build for every batch size
def _grad_values_kernel(grad_ptr, x_ptr, gather_ptr, position_ptr, out_ptr,
                        n, in_features, chunk, rows, stride_g, stride_x,
                        HAS_GATHER: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr):
    pid_c, pid_r, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    c_ok, r_ok = offs_c < chunk, offs_r < rows
    if HAS_GATHER:
        cols = tl.load(gather_ptr + b * chunk + offs_c, mask=c_ok, other=in_features).to(tl.int64)
    else:
        cols = (b * chunk + offs_c).to(tl.int64)
    col_ok = c_ok & (cols < in_features)
    position = tl.load(position_ptr + b * rows + offs_r, mask=r_ok, other=-1).to(tl.int64)
    row_ok = position >= 0
    acc = tl.zeros((BLOCK_C, BLOCK_R), dtype=tl.float32)
    for n0 in range(0, n, BLOCK_N):
        offs_n = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        n_ok = offs_n < n
        xt = tl.load(x_ptr + offs_n[None, :] * stride_x + cols[:, None], mask=col_ok[:, None] & n_ok[None, :],
                     other=0.0)
        g = tl.load(grad_ptr + offs_n[:, None] * stride_g + position[None, :], mask=n_ok[:, None] & row_ok[None, :],
                    other=0.0)
        acc = dot(xt, g, acc, PRECISION, UPCAST)
    target = out_ptr + b.to(tl.int64) * chunk * rows + offs_c[:, None] * rows + offs_r[None, :]
    tl.store(target, acc.to(out_ptr.dtype.element_ty), mask=c_ok[:, None] & r_ok[None, :])


#: Under the interpreter the products are taken in float32 (see :func:`._common.dot`).
_UPCAST = interpreted(_forward_kernel)


#: Batches up to this size take :func:`_forward_one_kernel` (a guess, not measured: bench/gpu.py times batch 1).
ONE_EXAMPLE_MAX_BATCH = 4


def _rowmajor(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _tiles(n: int, chunk: int, rows: int, dtype: torch.dtype) -> dict:
    block_n, warps = batch_tile(n, dtype)
    return dict(BLOCK_N=block_n, BLOCK_C=tile(chunk, 16, 64), BLOCK_R=tile(rows, 16, 64), num_warps=warps,
                PRECISION=dot_precision(dtype), UPCAST=_UPCAST)


def forward(x: Tensor, values: Tensor, bias: Optional[Tensor], gather: Optional[Tensor], position: Tensor,
            out_width: int) -> Tensor:
    """The block product ``(n, in_features) -> (n, out_width)`` (module doc), no autograd; up to
    :data:`ONE_EXAMPLE_MAX_BATCH` examples one example a program (no tile of 16 examples to pad)."""
    x, values = _rowmajor(x), values.contiguous()
    n, in_features = x.shape
    blocks, chunk, rows = values.shape
    y = x.new_empty(n, out_width)
    if n == 0:
        return y
    bias_arg, gather_arg = values if bias is None else bias, position if gather is None else gather
    flags = dict(HAS_BIAS=bias is not None, HAS_GATHER=gather is not None)
    if n <= ONE_EXAMPLE_MAX_BATCH:
        block_r = tile(rows, 16, 128)
        _forward_one_kernel[(n, triton.cdiv(rows, block_r), blocks)](
            x, values, bias_arg, gather_arg, position, y, in_features, chunk, rows, x.stride(0), y.stride(0),
            BLOCK_C=max(16, 8192 // block_r), BLOCK_R=block_r, **flags)
        return y
    tiles = _tiles(n, chunk, rows, x.dtype)
    grid = (triton.cdiv(n, tiles["BLOCK_N"]), triton.cdiv(rows, tiles["BLOCK_R"]), blocks)
    _forward_kernel[grid](x, values, bias_arg, gather_arg, position, y, n, in_features, chunk, rows, x.stride(0),
                          y.stride(0), **flags, **tiles)
    return y


def grad_input(grad: Tensor, values: Tensor, gather: Optional[Tensor], position: Tensor, in_features: int,
               atomic: bool) -> Tensor:
    """``d loss / d x`` (n, in_features) from the output gradient; ``atomic`` where an input is read
    by more than one block (then summed in float32)."""
    grad, values = _rowmajor(grad), values.contiguous()
    n = grad.shape[0]
    blocks, chunk, rows = values.shape
    out = torch.zeros(n, in_features, device=grad.device, dtype=torch.float32 if atomic else grad.dtype)
    if n == 0:
        return out.to(grad.dtype)
    tiles = _tiles(n, chunk, rows, grad.dtype)
    grid = (triton.cdiv(n, tiles["BLOCK_N"]), triton.cdiv(chunk, tiles["BLOCK_C"]), blocks)
    _grad_input_kernel[grid](grad, values, position if gather is None else gather, position, out, n, in_features,
                             chunk, rows, grad.stride(0), out.stride(0), HAS_GATHER=gather is not None,
                             ATOMIC=atomic, **tiles)
    return out.to(grad.dtype)


def grad_values(grad: Tensor, x: Tensor, values: Tensor, gather: Optional[Tensor], position: Tensor,
                holes: Optional[Tensor]) -> Tensor:
    """``d loss / d values`` (blocks, chunk, rows), 0.0 at the flat positions ``holes``."""
    grad, x = _rowmajor(grad), _rowmajor(x)
    n, in_features = x.shape
    blocks, chunk, rows = values.shape
    out = torch.empty(blocks, chunk, rows, device=values.device, dtype=values.dtype)
    tiles = _tiles(n, chunk, rows, x.dtype)
    grid = (triton.cdiv(chunk, tiles["BLOCK_C"]), triton.cdiv(rows, tiles["BLOCK_R"]), blocks)
    _grad_values_kernel[grid](grad, x, position if gather is None else gather, position, out, n, in_features,
                              chunk, rows, grad.stride(0), x.stride(0), HAS_GATHER=gather is not None, **tiles)
    if holes is not None and holes.numel():
        out.view(-1).index_fill_(0, holes, 0.0)
    return out


def grad_bias(grad: Tensor, position: Tensor) -> Tensor:
    """``d loss / d bias`` per block row (blocks * rows): the output column's sum, 0.0 at padding rows."""
    sums = grad.sum(dim=0, dtype=torch.float32)
    real = position >= 0
    return torch.where(real, sums[position.long().clamp(min=0)], 0.0).to(grad.dtype)
