"""Which layers ``expand`` can split, and where they sit in real models (transformer FFNs).

Three block shapes are supported:

- **plain** ``Linear → element-wise → Linear`` (BERT's ``intermediate.dense → output.dense``, ViT/CLIP/
  OPT ``fc1 → fc2``, T5 ``wi → wo``): a pair ``("in", "out")``;
- **GPT-2's** ``Conv1D`` (``transformers.pytorch_utils.Conv1D``): a linear layer whose weight is
  stored transposed, ``(in, out)``. It is found by duck typing (no import of transformers), read as
  a linear layer and replaced by a :class:`~torchfpe.core.masked.MaskedLinear` after expansion;
- **gated** MLPs (LLaMA, Mistral, Qwen: ``down(act(gate(x)) * up(x))``): a triple
  ``("gate", "up", "down")``. Both incoming layers are split together: child ``k`` of unit ``i`` gets
  the same input subset in ``gate`` and in ``up`` (one child structure, drawn from the first
  layer's weights), and ``down``'s column ``i`` is copied to every child.

:func:`find_ffn_pairs` finds these blocks by module names, as peft's ``target_modules`` do, so that
``expand(model, 2, pairs=find_ffn_pairs(model))`` widens every FFN of a transformer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

#: FFN shapes by child module names: (incoming layers, outgoing layer), relative to the block.
FFN_PATTERNS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("gate_proj", "up_proj"), "down_proj"),  # LLaMA, Mistral, Qwen, Gemma
    (("w1", "w3"), "w2"),                      # Mixtral experts, some LLaMA ports
    (("intermediate.dense",), "output.dense"),  # BERT, RoBERTa (the layer holds both)
    (("c_fc",), "c_proj"),                     # GPT-2 (Conv1D)
    (("fc1",), "fc2"),                         # ViT, CLIP, OPT, BART
    (("wi",), "wo"),                           # T5
    (("dense_h_to_4h",), "dense_4h_to_h"),     # GPT-NeoX, Falcon
)


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's ``Conv1D`` (duck-typed): ``nf`` outputs and a weight of shape ``(in, nf)``."""
    weight = getattr(module, "weight", None)
    return (type(module).__name__ == "Conv1D" and isinstance(getattr(module, "nf", None), int)
            and isinstance(weight, nn.Parameter) and weight.dim() == 2 and weight.shape[1] == module.nf)


def is_expandable(module: nn.Module) -> bool:
    """An ``nn.Linear`` (masked layers included) or a GPT-2 ``Conv1D``."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def features(module: nn.Module) -> tuple[int, int]:
    """(in, out) features of an expandable layer."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return int(module.weight.shape[0]), int(module.weight.shape[1])


def as_linear(module: nn.Module) -> nn.Linear:
    """An ``nn.Linear`` computing the same function as a ``Conv1D`` (weight transposed; grads kept)."""
    in_features, out_features = features(module)
    linear = nn.Linear(in_features, out_features, bias=module.bias is not None,
                       device=module.weight.device, dtype=module.weight.dtype)
    linear.weight = nn.Parameter(module.weight.detach().t().contiguous(), requires_grad=module.weight.requires_grad)
    if module.bias is not None:
        linear.bias = nn.Parameter(module.bias.detach().clone(), requires_grad=module.bias.requires_grad)
    linear.train(module.training)
    return linear


def _matches(path: str, target_modules: str | Sequence[str] | None) -> bool:
    if target_modules is None:
        return True
    if isinstance(target_modules, str):  # peft: one string is a regular expression on the full path
        return re.fullmatch(target_modules, path) is not None
    return any(path == t or path.endswith(f".{t}") for t in target_modules)


def find_ffn_pairs(
    model: nn.Module,
    target_modules: str | Sequence[str] | None = None,
    patterns: Sequence[tuple[Sequence[str], str]] = FFN_PATTERNS,
) -> list[tuple[str, ...]]:
    """Entries for ``expand(..., pairs=...)``: every FFN block of ``model`` named as in ``patterns``.

    A block is a module holding the incoming and outgoing layers of one pattern (all of them
    :func:`is_expandable`); it gives ``(incoming, outgoing)`` or, for gated MLPs,
    ``(gate, up, down)``. ``target_modules`` keeps only blocks with a layer whose path matches,
    as in peft: a string is a regular expression matched against the full module path; a list
    matches path suffixes (``["c_fc"]``, ``["layers.0.mlp.gate_proj"]``).
    """
    found: list[tuple[str, ...]] = []
    used: set[str] = set()
    for prefix, block in model.named_modules():
        for incoming, outgoing in patterns:
            names = [*incoming, outgoing]
            try:
                modules = [block.get_submodule(name) for name in names]
            except AttributeError:
                continue
            if not all(is_expandable(m) for m in modules):
                continue
            paths = tuple(f"{prefix}.{name}" if prefix else name for name in names)
            if used & set(paths) or not any(_matches(p, target_modules) for p in paths):
                continue
            used.update(paths)
            found.append(paths)
    return found
