"""The FPE operator: ``expand``, split strategies, masked layers and the non-zero budget (torch only)."""

from .budget import BUDGETS, nonzero_parameters, trainable_positions
from .config import FPEConfig, describe
from .summary import ModelSummary, bake, summary
from .expand import BIAS_POLICIES, ExpansionReport, LayerChange, expand, load_expanded
from .inplace import expand_
from .layouts import (BlockLinear, DropConnectLinear, EllLinear, ExpandedLayer, LayoutError, MaskedLinear, PackedLinear,
                      ParentLinear,
                      apply_masks_, expanded_layers, pack, register_layout, stored_bytes, unpack)
from .optim import carry_optimizer
from .targets import ELEMENTWISE_MODULES, FFN_PATTERNS, find_ffn_pairs, find_hidden_pairs
from .validation import InvalidParameterError
from .splits import SPLITS, Split, get_split, register_split

__all__ = [
    "BIAS_POLICIES", "BUDGETS", "FPEConfig", "ModelSummary", "bake", "describe", "summary", "ELEMENTWISE_MODULES", "SPLITS", "Split", "get_split", "register_split",
    "FFN_PATTERNS", "DropConnectLinear", "ExpansionReport", "InvalidParameterError", "LayerChange", "MaskedLinear",
    "apply_masks_", "carry_optimizer", "expand", "expand_", "find_ffn_pairs", "find_hidden_pairs", "load_expanded",
    "nonzero_parameters", "trainable_positions", "BlockLinear", "EllLinear", "ExpandedLayer", "LayoutError", "PackedLinear", "ParentLinear",
    "expanded_layers",
    "pack", "register_layout", "stored_bytes", "unpack",
]
