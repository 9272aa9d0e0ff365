"""Session-wide test setup.

The Triton kernels (``torchfpe.core.kernels``) are tested on the CPU under Triton's interpreter, which
``triton.jit`` reads when a kernel module is *imported*. Earlier tests (``torch.compile``, the layouts'
CUDA hooks being traced) may import those modules first, so the variable is set here, before any test
module is collected, on a machine without CUDA; a CUDA machine runs the kernels compiled.
"""

import os

if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
