"""What the Triton kernels share: tile sizes, the product precision and ``dot`` (imports Triton).

The tile sizes are heuristics, not tuned: no GPU was lent to the session that wrote the kernels
(bench/gpu.py measures them). ``tl.dot`` needs every tile side to be at least 16.
"""

import torch
import triton
import triton.language as tl


def tile(size: int, low: int, high: int) -> int:
    """The power of two that covers ``size``, kept within ``[low, high]``."""
    power = 1 << max(0, int(size) - 1).bit_length()
    return max(low, min(high, power))


def batch_tile(n: int, dtype: torch.dtype) -> tuple[int, int]:
    """(examples per tile, warps per program) for ``n`` examples. float32 products in IEEE
    precision run on the CUDA cores, whose operands live in registers: compiled for sm_80 and
    sm_90, 64-example tiles with 4 warps spilled kilobytes to the stack, 32 with 8 warps did not
    (cuobjdump -res-usage); half types keep 64 and 4 (tensor cores, no spills)."""
    if dtype == torch.float32:
        return tile(n, 16, 32), 8
    return tile(n, 16, 64), 4


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s ``input_precision``: float32 products use TF32 only where torch lets cuBLAS use
    it for ``F.linear`` (``torch.backends.cuda.matmul.allow_tf32``, off by default), so a layer's
    numbers follow the same switch on either path. Half types get Triton's default, which only
    float32 operands read (their products are exact in the float32 sums)."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def interpreted(kernel) -> bool:
    """Whether ``kernel`` runs under Triton's interpreter (``TRITON_INTERPRET=1`` when it was decorated)."""
    return type(kernel).__name__ == "InterpretedFunction"


@triton.jit
def dot(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``acc + a @ b`` in float32. ``UPCAST`` multiplies float32 copies: the interpreter's ``tl.dot``
    misreads bfloat16 (stored as uint16 there); a bfloat16 or float16 product is exact in float32,
    so the result is the GPU's (half inputs, float32 sums) up to the order of the sums."""
    if UPCAST:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    return acc
