"""The budget: count trainable positions and non-zero parameters, and prune an expansion back to its parent's count.

Two counts, for two questions:

- :func:`trainable_positions` (what the budget holds fixed): the entries of trainable parameters that
  no mask fixes at zero. An expanded layer's weight and bias count their mask's true entries (in any
  layout); every other trainable parameter counts all its entries, whatever their values. It does not
  change in training, so a parent whose biases start at 0 (GPT-2, most ``nn.Linear`` initialisations
  in transformers) has the same count before and after its first steps, and so has its expansion.
- :func:`nonzero_parameters`: the entries whose current value is non-zero. It is never above the
  positions, and equals them once training has moved every live entry off zero.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

#: ``global``: smallest magnitudes across all expanded layers' weights (the paper's default).
#: ``outgoing``: only the copied outgoing weights are pruned.
#: ``layerwise``: each expanded layer returns to its own parent's count.
#: ``structured``: each copy of a parent's outgoing column keeps a disjoint 1/alpha share of the layer's
#: rows (one seeded balanced partition of the rows per layer), so every layer keeps its parent's count by
#: construction and packs as dense blocks; copied biases are then pruned within their own layer.
#: ``none``: no pruning; the report shows the excess.
BUDGETS = ("global", "outgoing", "layerwise", "structured", "none")


def nonzero_parameters(model: nn.Module) -> int:
    """Count the non-zero entries of every trainable parameter (weights and biases; shared ones once)."""
    from .validation import check_param

    check_param("model", model, [nn.Module], "nonzero_parameters")
    return sum(int(torch.count_nonzero(p.detach())) for p in model.parameters() if p.requires_grad)


def trainable_positions(model: nn.Module) -> int:
    """Count the trainable positions of ``model``: entries of trainable parameters not fixed at zero by a mask.

    An expanded layer (any layout) counts the true entries of its weight and bias masks; every other
    parameter with ``requires_grad`` counts all its entries, zero or not. Frozen parameters are not
    counted, and a parameter shared by several modules is counted once. This is the count
    ``torchfpe.expand``'s budget keeps at the parent's (``nonzero_parameters`` is never above it).
    """
    from .layouts.base import ExpandedLayer
    from .validation import check_param

    check_param("model", model, [nn.Module], "trainable_positions")
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        masked = _mask_positions(module) if isinstance(module, ExpandedLayer) else {}
        for param in module.parameters(recurse=False):
            if param.requires_grad and id(param) not in seen:
                seen.add(id(param))
                total += masked.get(id(param), param.numel())
    return total


def _mask_positions(layer) -> dict[int, int]:
    """``{id(parameter): true mask entries}`` for an expanded layer's weight and bias."""
    masks = {"weight": layer.dense_weight_mask(), "bias": layer.dense_bias_mask()}
    return {id(param): int(torch.count_nonzero(masks[role]))
            for role, param in layer.role_parameters().items() if masks[role] is not None}


def prune_smallest_(weights: Mapping[str, Tensor], masks: Mapping[str, Tensor], count: int) -> dict[str, int]:
    """Remove the ``count`` smallest-magnitude live positions across ``weights`` (in place: weight 0, mask off).

    A live position is one whose mask is on, whatever its value (a live entry at 0.0 goes first).
    Ties are broken by position (stable sort), so the number removed is always exactly ``count``.
    Returns how many entries were removed from each tensor.
    """
    removed = {name: 0 for name in weights}
    if count <= 0:
        return removed
    names = list(weights)
    values, owners, positions = [], [], []
    for index, name in enumerate(names):
        flat = weights[name].detach().reshape(-1)
        live = torch.nonzero(masks[name].reshape(-1).to(flat.device)).squeeze(1)
        values.append(flat[live].abs().to(torch.float64))
        positions.append(live)
        owners.append(torch.full_like(live, index))
    all_values = torch.cat(values)
    if count > all_values.numel():
        raise ValueError(
            f"the budget asks to remove {count} weights but only {all_values.numel()} live weights can be "
            f"pruned in {names}; use a larger layer, a smaller alpha, or budget='none'"
        )
    chosen = torch.argsort(all_values, stable=True)[:count]
    chosen_owner = torch.cat(owners)[chosen]
    chosen_position = torch.cat(positions)[chosen]
    with torch.no_grad():
        for index, name in enumerate(names):
            where = chosen_position[chosen_owner == index]
            weights[name].view(-1)[where] = 0
            masks[name].view(-1)[where] = False
            removed[name] = int(where.numel())
    return removed
