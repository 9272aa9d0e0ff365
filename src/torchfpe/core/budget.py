"""The non-zero budget: count non-zero parameters and prune an expansion back to its parent's count."""

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


def prune_smallest_(weights: Mapping[str, Tensor], masks: Mapping[str, Tensor], count: int) -> dict[str, int]:
    """Zero the ``count`` smallest-magnitude non-zero entries across ``weights`` (in place, masks too).

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
        live = torch.nonzero(flat != 0).squeeze(1)
        values.append(flat[live].abs().to(torch.float64))
        positions.append(live)
        owners.append(torch.full_like(live, index))
    all_values = torch.cat(values)
    if count > all_values.numel():
        raise ValueError(
            f"the budget asks to remove {count} weights but only {all_values.numel()} non-zero weights can be "
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
