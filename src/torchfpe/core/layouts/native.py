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

import os
import shutil
import threading
import warnings
from pathlib import Path
from types import ModuleType

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
        module = cpp_extension.load(name="torchfpe_parent_kernels", sources=[str(SOURCE)],
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
