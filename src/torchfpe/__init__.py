"""torchfpe: Fixed Parameter Expansion for PyTorch.

Widen a network's hidden layers by splitting each unit into children that partition its incoming
weights, keeping the count of non-zero parameters fixed. ``import torchfpe`` pulls in torch only;
experiments, sweeps and the command line live in submodules that import their own dependencies.
"""

from .core import (
    BIAS_POLICIES,
    BUDGETS,
    SPLITS,
    DropConnectLinear,
    ExpansionReport,
    MaskedLinear,
    apply_masks_,
    carry_optimizer,
    expand,
    expand_,
    find_ffn_pairs,
    find_hidden_pairs,
    InvalidParameterError,
    load_expanded,
    nonzero_parameters,
    trainable_positions,
    register_split,
)
from .core import ExpandedLayer, FPEConfig, bake, pack, summary, unpack
from .integrations import from_pretrained, save_pretrained
from . import _moved

_moved.install()  # the harness moved to torchfpe.lab; old paths alias it for one release

from .core.config import VERSION as __version__  # one place: core/config.py

__all__ = [
    "BIAS_POLICIES", "BUDGETS", "SPLITS", "DropConnectLinear", "ExpansionReport", "MaskedLinear",
    "InvalidParameterError", "apply_masks_", "carry_optimizer", "expand", "expand_", "find_ffn_pairs", "find_hidden_pairs", "load_expanded",
    "nonzero_parameters", "trainable_positions", "__version__", "ExpandedLayer", "pack", "unpack", "register_split",
    "FPEConfig", "bake", "from_pretrained", "save_pretrained", "summary",
]


def __getattr__(name: str):
    """``torchfpe.FPECallback`` needs transformers: loaded on first use, so ``import torchfpe`` stays torch-only."""
    if name == "FPECallback":
        from .integrations.trainer import FPECallback

        return FPECallback
    raise AttributeError(f"module 'torchfpe' has no attribute {name!r}")
