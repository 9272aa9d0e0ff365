"""``summary`` (what each expanded layer stores) and ``bake`` (expanded layers into plain ``nn.Linear``).

Both read expanded layers through the :class:`~torchfpe.core.layouts.base.ExpandedLayer` interface
only, so they work for every registered layout.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from .layouts.base import ExpandedLayer, expanded_layers
from .validation import InvalidParameterError, check_param


@dataclass
class ModelSummary:
    """One row per expanded layer; ``str()`` is the table.

    Row fields: ``layer``, ``layout``, ``shape`` (outputs x inputs), ``parent_shape``, ``stored``
    (entries of the layer's weight and bias tensors as stored), ``nonzero`` (non-zero effective
    weights and biases), ``parent`` (weights and biases of a dense parent layer, when its shape is
    known), ``bytes`` (of every tensor the layer saves, metadata included).
    """

    rows: list[dict] = field(default_factory=list)

    @property
    def nonzero(self) -> int:
        return sum(row["nonzero"] for row in self.rows)

    def __str__(self) -> str:
        header = ["layer", "layout", "shape", "parent shape", "stored", "non-zero", "parent", "bytes"]
        body = [[row["layer"], row["layout"], row["shape"], row["parent_shape"] or "?", str(row["stored"]),
                 str(row["nonzero"]), "?" if row["parent"] is None else str(row["parent"]), str(row["bytes"])]
                for row in self.rows]
        body.append(["total", "", "", "", str(sum(r["stored"] for r in self.rows)), str(self.nonzero),
                     "" if any(r["parent"] is None for r in self.rows) else str(sum(r["parent"] for r in self.rows)),
                     str(sum(r["bytes"] for r in self.rows))])
        widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
        show = lambda line: "  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()  # noqa: E731
        return "\n".join([show(header), show(["-" * w for w in widths]), *map(show, body)])


def _row(name: str, layer: ExpandedLayer) -> dict:
    params = layer.role_parameters()
    has_bias = "bias" in params
    parent = layer.parent_features
    return {
        "layer": name, "layout": layer.layout, "shape": f"{layer.out_features}x{layer.in_features}",
        "parent_shape": None if parent is None else f"{parent[1]}x{parent[0]}",
        "stored": sum(p.numel() for p in params.values()),
        "nonzero": layer.nonzero_count(),
        "parent": None if parent is None else parent[0] * parent[1] + (parent[1] if has_bias else 0),
        "bytes": sum(t.numel() * t.element_size() for t in layer.state_dict().values()),
    }


def summary(model: nn.Module) -> ModelSummary:
    """Per expanded layer of ``model`` (any layout): layout, shape, stored entries, non-zeros, the parent's
    count and bytes saved. ``print(torchfpe.summary(model))`` shows the table; ``.rows`` has the numbers."""
    check_param("model", model, [nn.Module], "summary")
    layers = expanded_layers(model)
    if not layers:
        raise InvalidParameterError("summary: the model has no expanded layer (torchfpe.expand it first)")
    return ModelSummary([_row(name, layer) for name, layer in layers])


def _baked(layer: ExpandedLayer) -> nn.Linear:
    weight = layer.effective_weight().detach()
    bias = layer.effective_bias()
    linear = nn.Linear(layer.in_features, layer.out_features, bias=bias is not None, device=weight.device,
                       dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias.detach())
    frozen = set(layer.frozen_roles())
    for role, param in (("weight", linear.weight), ("bias", linear.bias)):
        if param is not None:
            param.requires_grad_(role not in frozen)
    linear.train(layer.training)
    return linear


def bake(model: nn.Module, *, return_summary: bool = False) -> nn.Module | tuple[nn.Module, ModelSummary]:
    """A copy of ``model`` with every expanded layer replaced by an ``nn.Linear`` holding its effective
    weight and bias (zero where masked), for export and inference; ``model`` is not modified.

    The outputs and the non-zero count are unchanged; ``requires_grad`` and training mode are kept.
    The masks are gone: training the baked model lets pruned entries grow back. With
    ``return_summary=True`` also returns :func:`summary` of ``model`` (the non-zeros baked in).
    """
    report = summary(model)  # checks the model
    layers = expanded_layers(model)
    baked = copy.deepcopy(model, {id(layer): _baked(layer) for _, layer in layers})
    baked.__dict__.pop("fpe_config", None)  # nothing expanded is left to describe
    return (baked, report) if return_summary else baked
