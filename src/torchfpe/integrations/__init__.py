"""Integrations with other libraries: saving and loading expanded models as directories (:mod:`.pretrained`)
and the ``transformers.Trainer`` callback (:mod:`.trainer`).

Each module imports its optional dependencies (``transformers``, ``safetensors``, ``accelerate``) inside the
functions that need them, and :mod:`.trainer` is not imported here (``torchfpe.FPECallback`` is loaded on
first use), so ``import torchfpe`` stays torch-only.
"""

from .pretrained import from_pretrained, save_pretrained

__all__ = ["from_pretrained", "save_pretrained"]
