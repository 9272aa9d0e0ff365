"""Integrations with other libraries: saving and loading expanded models as directories (:mod:`.pretrained`).

Each module imports its optional dependencies (``transformers``, ``safetensors``) inside the functions
that need them, so ``import torchfpe`` stays torch-only.
"""

from .pretrained import from_pretrained, save_pretrained

__all__ = ["from_pretrained", "save_pretrained"]
