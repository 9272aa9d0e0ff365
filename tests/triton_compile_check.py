"""Compile every Triton kernel of torchfpe.core.kernels to a cubin for one NVIDIA target, without a GPU.

Run as a script (``python tests/triton_compile_check.py 90``) by tests/test_triton_kernels.py: the
interpreter accepts programs the compiler refuses (shapes, layouts, types), so this is the check
that the kernels build for the GPU when none is at hand. ``TRITON_INTERPRET`` must be unset (the
kernels must be decorated as compiled functions). Prints one line per kernel; exits 1 on a failure.
"""

from __future__ import annotations

import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from torchfpe.core.kernels import block_triton, parent_triton  # noqa: E402

INTS = ("n", "in_features", "chunk", "rows", "stride_x", "stride_y", "stride_g", "stride_out", "cols", "width",
        "alpha")


def compile_one(kernel, pointers: dict, constants: dict, target: GPUTarget, num_warps: int) -> None:
    signature = {name: "constexpr" if name in constants else pointers.get(name, "i32") for name in kernel.arg_names}
    assert all(name in pointers or name in INTS or name in constants for name in kernel.arg_names), kernel.arg_names
    source = triton.compiler.ASTSource(fn=kernel, constexprs=constants, signature=signature)
    options = triton.compiler.make_backend(target).parse_options({"num_warps": num_warps, "num_stages": 3})
    triton.compile(source, target=target, options=options.__dict__)


def main(arch: int) -> int:
    target = GPUTarget("cuda", arch, 32)
    failures = 0
    for dtype, precision, block_n, warps in (("fp32", "ieee", 32, 8), ("bf16", "tf32", 64, 4)):
        p = f"*{dtype}"
        common = dict(PRECISION=precision, UPCAST=False, BLOCK_N=block_n)
        block = dict(common, BLOCK_C=64, BLOCK_R=64)
        parent = dict(common, BITS=2, KIDS=4, BLOCK_I=16, BLOCK_J=32)
        jobs = [
            (block_triton._forward_kernel, dict(x_ptr=p, values_ptr=p, bias_ptr=p, gather_ptr="*i64",
                                                position_ptr="*i32", y_ptr=p),
             dict(block, HAS_BIAS=True, HAS_GATHER=True)),
            (block_triton._forward_one_kernel, dict(x_ptr=p, values_ptr=p, bias_ptr=p, gather_ptr="*i64",
                                                    position_ptr="*i32", y_ptr=p),
             dict(HAS_BIAS=True, HAS_GATHER=True, BLOCK_C=64, BLOCK_R=128)),
            (block_triton._grad_input_kernel, dict(grad_ptr=p, values_ptr=p, gather_ptr="*i64", position_ptr="*i32",
                                                   out_ptr="*fp32"),
             dict(block, HAS_GATHER=True, ATOMIC=True)),
            (block_triton._grad_values_kernel, dict(grad_ptr=p, x_ptr=p, gather_ptr="*i64", position_ptr="*i32",
                                                    out_ptr=p),
             dict(block, HAS_GATHER=False)),
            (parent_triton._forward_kernel, dict(x_ptr=p, values_ptr=p, bits_ptr="*u8", bias_ptr=p, gather_ptr="*i64",
                                                 y_ptr=p),
             dict(parent, HAS_BIAS=True, HAS_GATHER=True)),
            (parent_triton._forward_one_kernel, dict(x_ptr=p, values_ptr=p, bits_ptr="*u8", bias_ptr=p,
                                                     gather_ptr="*i64", y_ptr=p),
             dict(BITS=2, KIDS=4, BLOCK_I=16, BLOCK_J=128, HAS_BIAS=True, HAS_GATHER=False)),
            (parent_triton._grad_input_kernel, dict(grad_ptr=p, values_ptr=p, bits_ptr="*u8", gather_ptr="*i64",
                                                    out_ptr=p),
             dict(parent, HAS_GATHER=False)),
            (parent_triton._grad_values_kernel, dict(grad_ptr=p, x_ptr=p, bits_ptr="*u8", gather_ptr="*i64",
                                                     out_ptr=p),
             dict(parent, HAS_GATHER=True)),
        ]
        for kernel, pointers, constants in jobs:
            name = f"{kernel.fn.__module__.rsplit('.', 1)[-1]}.{kernel.fn.__name__} {dtype} sm_{arch}"
            try:
                compile_one(kernel, pointers, constants, target, warps)
            except Exception as error:  # noqa: BLE001 - report every kernel, then fail
                failures += 1
                print(f"FAILED {name}: {type(error).__name__}: {error}", flush=True)
            else:
                print(f"ok {name}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 90))
