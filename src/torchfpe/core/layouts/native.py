"""The ``parent`` layout's compiled CPU kernels: built once per machine on first use, optional.

``parent_kernels.cpp`` (float32, AVX-512) is compiled by :func:`torch.utils.cpp_extension.load` the
first time a large ``parent`` layer runs on the CPU, and cached by torch (``TORCH_EXTENSIONS_DIR``,
default ``~/.cache/torch_extensions``). It needs a C++ compiler and ``ninja`` (``pip install
'torchfpe[fast]'``). Where either is missing, the CPU lacks AVX-512, the build fails, or the
environment sets ``TORCHFPE_NATIVE=0``, :func:`kernels` returns ``None`` (a build failure warns
once) and the layout takes its torch path: the same numbers, at the masked layout's cost.

Why a kernel of our own: measured on one CPU thread (4096 x 4096 parent, alpha = 4, batch 1), the
product ``torch.compile`` generated for the same sum (one pass, alpha masked accumulators) ran at
3.5x the dense parent, ``F.embedding_bag`` at 22x, CSR with int32 indices at 5.2x; this kernel's
first version ran at 1.5-2.3x (bench/packed.py gives today's numbers).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from .packed import unpack_bits

SOURCE = Path(__file__).with_name("parent_kernels.cpp")
#: ``TORCHFPE_NATIVE=0`` turns the compiled kernels off (the torch path is then used everywhere).
SWITCH = "TORCHFPE_NATIVE"

_lock = threading.Lock()
_state: dict[str, object] = {}


def _ninja_on_path() -> bool:
    """Put the ``ninja`` of the ``ninja`` Python package on PATH for torch's build (it calls ``ninja``)."""
    if shutil.which("ninja"):
        return True
    try:
        import ninja
    except ImportError:
        return False
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    return shutil.which("ninja") is not None


def _build() -> ModuleType | None:
    if os.environ.get(SWITCH, "1") == "0":
        return None
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None  # the kernels are AVX-512 code
    if not _ninja_on_path():
        return None
    from torch.utils import cpp_extension

    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return None
    try:
        # named by the source's hash: checkouts of different versions sharing torch's extension cache
        # (or building at once) never load each other's build
        digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
        module = cpp_extension.load(name=f"torchfpe_parent_kernels_{digest}", sources=[str(SOURCE)],
                                    extra_cflags=["-O3"], verbose=False)
    except Exception as error:  # noqa: BLE001 - any build failure means: use the torch path
        warnings.warn(f"torchfpe: the parent layout's CPU kernels did not build ({type(error).__name__}: "
                      f"{str(error).splitlines()[0] if str(error) else ''}); using the torch path (set "
                      f"{SWITCH}=0 to skip the build)", RuntimeWarning, stacklevel=3)
        return None
    return module if module.available() else None


def kernels() -> ModuleType | None:
    """The compiled kernels module, or ``None`` where it cannot run here (built on the first call)."""
    if os.environ.get(SWITCH, "1") == "0":
        return None
    with _lock:
        if "module" not in _state:
            _state["module"] = _build()
        return _state["module"]  # type: ignore[return-value]


def supports(children: int) -> bool:
    """Whether the kernels exist for ``children`` per parent (without building them)."""
    return children in (2, 3, 4, 5, 6, 7, 8, 16)


# -- the kernels as torch operators ------------------------------------------------------------------------
# Registered with torch.library so that torch.compile and torch.export see one operator each (with a
# fake implementation giving the output's shape) instead of breaking the graph at a pybind function.
# The autograd formula is registered beside each forward; value gradients are 0.0 at the holes.

def ready() -> bool:
    """Whether the kernels run here (builds them on the first call). Traced (torch.compile, export), it
    reads whether an eager call built them, without building or locking: a graph traced before any
    eager call takes the torch path. (``torch.compiler.assume_constant_result`` would import dynamo,
    and with it Triton, at import time.)"""
    if torch.compiler.is_compiling():
        return _state.get("module") is not None
    return kernels() is not None


def _no_tensor(like: Tensor) -> Tensor:
    return like.new_empty(0)


@torch.library.custom_op("torchfpe::parent_forward", mutates_args=())
def parent_forward(values: Tensor, child_bits: Tensor, x: Tensor, children: int, holes: Tensor | None) -> Tensor:
    """``y[n, children * i + k] = sum_j values[i, j] x[n, j] [child(i, j) == k]`` for a few examples
    (one pass over the values per 4 of them); ``x`` contiguous float32 (batch, parent_cols); ``holes``
    the layer's ``hole_bits`` (value gradients 0.0 there) or ``None``."""
    return kernels().forward(values, child_bits, x, children)


@parent_forward.register_fake
def _(values, child_bits, x, children, holes):
    return x.new_empty(x.shape[0], children * values.shape[0])


@torch.library.custom_op("torchfpe::parent_backward", mutates_args=())
def parent_backward(values: Tensor, child_bits: Tensor, x: Tensor, grad: Tensor, children: int, need_input: bool,
                    need_values: bool) -> tuple[Tensor, Tensor]:
    """(grad of ``x``, grad of ``values``) of :func:`parent_forward`; an empty tensor for one not needed
    (an empty batch: zero gradients)."""
    grad_x, grad_values = kernels().backward(values, child_bits, x, grad.contiguous(), children, need_input,
                                             need_values)
    return (grad_x if need_input else _no_tensor(x)), (grad_values if need_values else _no_tensor(values))


@parent_backward.register_fake
def _(values, child_bits, x, grad, children, need_input, need_values):
    return (x.new_empty(x.shape) if need_input else _no_tensor(x)), \
        (values.new_empty(values.shape) if need_values else _no_tensor(values))


@torch.library.custom_op("torchfpe::parent_forward_tiled", mutates_args=())
def parent_forward_tiled(values: Tensor, child_bits: Tensor, x: Tensor, children: int, holes: Tensor | None) -> Tensor:
    """:func:`parent_forward` for large batches: tiles of examples, each child's columns in order (the
    order is sorted from the bit planes per call, one pass; not kept). The result is a transposed view."""
    module = kernels()
    order, starts = module.column_order(child_bits, values.shape[1], children)
    return module.forward_tiled(values, order, starts, x, children, 0)


@parent_forward_tiled.register_fake
def _(values, child_bits, x, children, holes):
    return x.new_empty(children * values.shape[0], x.shape[0]).t()


@torch.library.custom_op("torchfpe::parent_backward_tiled", mutates_args=())
def parent_backward_tiled(values: Tensor, child_bits: Tensor, x: Tensor, grad: Tensor, children: int,
                          need_input: bool, need_values: bool) -> tuple[Tensor, Tensor]:
    """(grad of ``x``, grad of ``values``) of :func:`parent_forward_tiled`; an empty tensor for one not needed."""
    module = kernels()
    order, starts = module.column_order(child_bits, values.shape[1], children)
    grad_x, grad_values = module.backward_tiled(values, child_bits, order, starts, x, grad, children, need_input,
                                                need_values, 0)
    return (grad_x if need_input else _no_tensor(x)), (grad_values if need_values else _no_tensor(values))


@parent_backward_tiled.register_fake
def _(values, child_bits, x, grad, children, need_input, need_values):
    return (x.new_empty(x.shape) if need_input else _no_tensor(x)), \
        (values.new_empty(values.shape) if need_values else _no_tensor(values))


def _without_holes(grad_values: Tensor, holes: Tensor | None) -> Tensor:
    """``grad_values`` with 0.0 at the holes (``holes``: the layer's ``hole_bits``, a bit per value),
    in place: the kernel's fresh output. The bits are unpacked per call (a byte per value, freed after)."""
    if holes is not None:
        grad_values.masked_fill_(unpack_bits(holes, grad_values.numel()).view_as(grad_values), 0.0)
    return grad_values


def _save(ctx, inputs, output) -> None:
    """Inputs (values, child_bits, x, children, holes): the tensors saved, the count kept."""
    values, child_bits, x, children, holes = inputs
    ctx.save_for_backward(values, child_bits, x, holes)
    ctx.children = children


def _backward_with(operator):
    def backward(ctx, grad: Tensor):
        values, child_bits, x, holes = ctx.saved_tensors
        need_values, need_input = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        grad_x, grad_values = operator(values, child_bits, x, grad, ctx.children, need_input, need_values)
        return (_without_holes(grad_values, holes) if need_values else None), None, \
            (grad_x if need_input else None), None, None

    return backward


parent_forward.register_autograd(_backward_with(parent_backward), setup_context=_save)
parent_forward_tiled.register_autograd(_backward_with(parent_backward_tiled), setup_context=_save)
