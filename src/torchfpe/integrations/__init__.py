"""Integrations with other libraries: the ``transformers.Trainer`` callback (:mod:`.trainer`).

Each module imports its optional dependency itself, and nothing here is imported by ``import torchfpe``
(``torchfpe.FPECallback`` is loaded on first use), so the core stays torch-only.
"""
