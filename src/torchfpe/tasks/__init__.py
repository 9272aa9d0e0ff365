"""Synthetic task generators."""

from .dnf import DNFConfig, DNFFormula, DNFTask, decode_bits, encode_bits, make_dnf, make_formula

__all__ = [
    "DNFConfig",
    "DNFFormula",
    "DNFTask",
    "make_dnf",
    "make_formula",
    "decode_bits",
    "encode_bits",
]
