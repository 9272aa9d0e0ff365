"""One validation layer: each parameter's constraint declared once, one message format, one error type.

(Stub laid down as a seam between work streams; the full validator lands with issue 9.)
"""

from __future__ import annotations


class InvalidParameterError(ValueError, TypeError):
    """A parameter outside its declared constraint; both a ValueError and a TypeError (as scikit-learn's)."""
