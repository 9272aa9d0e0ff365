"""The FPE operator: ``expand``, split strategies, masked layers and the non-zero budget (torch only)."""

from .budget import BUDGETS, nonzero_parameters
from .expand import BIAS_POLICIES, ELEMENTWISE_MODULES, ExpansionReport, LayerChange, expand, find_hidden_pairs, load_expanded
from .masked import DropConnectLinear, MaskedLinear, apply_masks_
from .targets import FFN_PATTERNS, find_ffn_pairs
from .validation import InvalidParameterError
from .splits import CONTROL_SPLITS, PARTITION_SPLITS, SPLITS, SplitContext

__all__ = [
    "BIAS_POLICIES", "BUDGETS", "CONTROL_SPLITS", "ELEMENTWISE_MODULES", "PARTITION_SPLITS", "SPLITS",
    "FFN_PATTERNS", "DropConnectLinear", "ExpansionReport", "InvalidParameterError", "LayerChange", "MaskedLinear", "SplitContext",
    "apply_masks_", "expand", "find_ffn_pairs", "find_hidden_pairs", "load_expanded", "nonzero_parameters",
]
