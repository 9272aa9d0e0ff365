"""GPU kernels (Triton) for the packed layouts, optional: the ``block`` and ``parent`` products on CUDA.

``BlockLinear`` and ``ParentLinear`` call :func:`forward` first thing in their ``forward`` when
:func:`wants` says so (a tensor on a device in :data:`DEVICES`, Triton importable, the switch on);
it returns the layer's output, with the same numbers as the layer's torch path to float rounding,
or ``None`` where the kernels do not apply (another dtype, a ``parent`` layer with copies of its
inputs or one child), and the layer goes on as before. Nothing here imports Triton until a CUDA
tensor asks: the core still needs torch alone (``pip install 'torchfpe[gpu]'`` adds Triton).

Modules: :mod:`.block_triton` and :mod:`.parent_triton` (the kernels and their launchers),
:mod:`.custom_ops` (``torch.library`` custom ops with autograd and fake impls, so ``torch.compile`` keeps
one graph). ``TORCHFPE_TRITON=0`` turns the kernels off. The kernels were checked for exactness
under ``TRITON_INTERPRET=1`` on a CPU and compiled to sm_90 cubins without a GPU
(tests/test_triton_kernels.py, tests/triton_compile_check.py); no GPU was lent to that session,
so they have not run on one and their speed is unmeasured (bench/gpu.py measures both).
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ..layouts import BlockLinear, ParentLinear

#: ``TORCHFPE_TRITON=0`` keeps every layer on its torch path.
SWITCH = "TORCHFPE_TRITON"
#: Device types whose tensors take the kernels. Only CUDA in use; tests add ``cpu`` to run the
#: kernels under Triton's interpreter (``TRITON_INTERPRET=1``).
DEVICES: tuple[str, ...] = ("cuda",)
#: The dtypes the kernels take (products in the dtype, sums in float32).
DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_state: dict[str, object] = {}


def available() -> bool:
    """Whether Triton imports, ``torch.library.custom_op`` exists (torch >= 2.4) and the switch is
    on. Asked only for tensors on :data:`DEVICES`, so a CPU-only run never imports Triton."""
    if os.environ.get(SWITCH, "1") == "0":
        return False
    if "available" not in _state:
        try:
            import triton  # noqa: F401
        except Exception:  # noqa: BLE001 - absent or broken: the layers keep their torch paths
            _state["available"] = False
        else:
            _state["available"] = hasattr(torch.library, "custom_op")
    return bool(_state["available"])


def _ops() -> ModuleType:
    """The custom ops module :mod:`.custom_ops` (imports Triton; compiles nothing until a kernel first runs)."""
    from . import custom_ops  # an import statement, which torch.compile traces (importlib it refuses)

    return custom_ops


def wants(input: Tensor) -> bool:  # noqa: A002
    """Whether a layer's ``forward`` should ask :func:`forward` for this input (cheap)."""
    return input.device.type in DEVICES and available()


def forward(layer: BlockLinear | ParentLinear, input: Tensor) -> Tensor | None:  # noqa: A002
    """The layer's output through the Triton kernels, or ``None`` where they do not apply."""
    if input.dtype not in DTYPES or input.dtype != layer.values.dtype:
        return None
    if layer.layout == "block":
        return _block(layer, input)
    if layer.layout == "parent":
        return _parent(layer, input)
    return None


def _block(layer: BlockLinear, input: Tensor) -> Tensor:  # noqa: A002
    position, out_width, atomic = _block_plan(layer)
    x = input.reshape(-1, layer.in_features)
    y = _ops().block_product(x, layer.values, layer._masked_bias(), layer.gather, position, out_width,
                            layer.hole_positions, atomic)
    return y.reshape(*input.shape[:-1], out_width)


def _block_plan(layer: BlockLinear) -> tuple[Tensor, int, bool]:
    """(output position of each block row, output width, whether an input is read by several
    blocks). Kept beside the layer while its index tensors are the same objects, unchanged (a load
    replaces ``gather`` and writes ``out_index`` in place). Under ``torch.compile`` computed afresh,
    and the input gradient taken atomically wherever inputs are gathered (always correct; finding
    repeats is data-dependent)."""
    gather, out_index = layer.gather, layer.out_index
    compiling = torch.compiler.is_compiling()
    if not compiling:
        cached = layer.__dict__.get("_triton_plan")
        if (cached is not None and cached[0] is gather and cached[1] is out_index
                and cached[2] == (out_index._version, layer.restore_order)):
            return cached[3]
    rows = layer.blocks * layer.rows
    if layer.restore_order:
        position, out_width = out_index.to(torch.int32), layer.out_features
    else:
        position, out_width = torch.arange(rows, dtype=torch.int32, device=out_index.device), rows
    atomic = gather is not None
    if gather is not None and not compiling:
        real = gather[gather < layer.in_features]
        atomic = real.numel() != torch.unique(real).numel()
    plan = (position, out_width, atomic)
    if not compiling:
        layer.__dict__["_triton_plan"] = (gather, out_index, (out_index._version, layer.restore_order), plan)
    return plan


def _parent(layer: ParentLinear, input: Tensor) -> Tensor | None:  # noqa: A002
    if layer.col_factor != 1 or layer.child_bits is None:
        return None
    x = input.reshape(-1, layer.in_features)
    y = _ops().parent_product(x, layer.values, layer.child_bits, layer._masked_bias(), layer.in_gather,
                             layer.row_factor, layer.hole_positions)
    return y.reshape(*input.shape[:-1], layer.out_features)
