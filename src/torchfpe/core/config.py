"""``FPEConfig``: how a model was expanded and what it became, as one JSON-able dataclass.

It holds what :func:`torchfpe.expand` needs to redo the expansion (``expand(parent,
**config.expand_kwargs())`` or ``expand(parent, config=config)``) and what the expansion produced
(``layout``, ``widths``, ``layer_nonzero``, ``nonzero``), so a saved directory says how its weights were made and a
loader can check that they fit. ``expand`` records the first part on the model it returns
(``model.fpe_config``); :func:`describe` adds the second part from the model as it is now (after
``pack``, training or loading). Torch only.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .layouts.base import expanded_layers
from .layouts.packed import row_factor
from .validation import InvalidParameterError

#: the torchfpe version written into each config (kept here so the core needs nothing from the package)
VERSION = "0.1.0"
#: the attribute ``expand`` sets on the model it returns
ATTRIBUTE = "fpe_config"


@dataclass
class FPEConfig:
    """One expansion: its arguments (``alpha`` .. ``dropconnect_p``) and its result (``layout`` .. ``nonzero``).

    ``split`` is a registered split's name, or a dict naming one per incoming layer; an expansion
    with a tensor or callable split records ``"assignment"`` or ``"callable"`` (not reproducible by
    :meth:`expand_kwargs`). ``layout`` is one layout name for every expanded layer or a dict per
    layer; ``widths`` maps each expanded layer to ``[in_features, out_features]``, ``layer_nonzero``
    to its non-zero weights and biases; ``nonzero`` is :func:`torchfpe.nonzero_parameters` of the
    expanded model (trainable parameters only, so it depends on what is frozen).
    """

    alpha: int
    split: str | dict[str, str] = "random"
    seed: int | None = None
    pairs: list[list[str]] | None = None
    layers: list[str] | None = None
    clauses: list[list[int]] | None = None
    bias: str = "copy"
    budget: str = "global"
    dropconnect_p: float | None = None
    layout: str | dict[str, str] = "masked"
    widths: dict[str, list[int]] = field(default_factory=dict)
    layer_nonzero: dict[str, int] = field(default_factory=dict)
    nonzero: int | None = None
    torchfpe_version: str = VERSION

    #: splits recorded for tensors and callables: the expansion cannot be redone from the config
    NOT_REPRODUCIBLE = ("assignment", "callable")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FPEConfig:
        """The config in ``values`` (as ``to_dict`` wrote it); unknown or missing keys are refused by name."""
        if not isinstance(values, Mapping):
            raise InvalidParameterError(f"an fpe_config must be a JSON object; got {type(values).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [key for key in values if key not in names]
        if unknown:
            raise InvalidParameterError(f"fpe_config holds unknown key {unknown[0]!r}; known keys: {', '.join(names)}")
        if "alpha" not in values:
            raise InvalidParameterError("fpe_config has no 'alpha'")
        config = cls(**values)
        if isinstance(config.alpha, bool) or not isinstance(config.alpha, int) or config.alpha < 1:
            raise InvalidParameterError(f"fpe_config key 'alpha' must be an int >= 1; got {config.alpha!r}")
        return config

    @classmethod
    def from_json(cls, text: str) -> FPEConfig:
        return cls.from_dict(json.loads(text))

    def expand_kwargs(self) -> dict[str, Any]:
        """The arguments of :func:`torchfpe.expand` (besides the model) that redo this expansion."""
        splits = self.split.values() if isinstance(self.split, Mapping) else [self.split]
        fixed = [name for name in splits if name in self.NOT_REPRODUCIBLE]
        if fixed:
            raise InvalidParameterError(f"fpe_config key 'split' is {fixed[0]!r} (a tensor or callable was passed to "
                                        "expand): the expansion cannot be redone from the config; load the saved "
                                        "weights instead (torchfpe.from_pretrained or load_expanded)")
        return {"alpha": self.alpha, "split": dict(self.split) if isinstance(self.split, Mapping) else self.split,
                "seed": self.seed, "pairs": None if self.pairs is None else [tuple(pair) for pair in self.pairs],
                "layers": self.layers, "clauses": self.clauses, "bias": self.bias, "budget": self.budget,
                "dropconnect_p": self.dropconnect_p}


def recorded(alpha: int, split, seed: int, pairs, layers, clauses, bias: str, budget: str,
             dropconnect_p: float | None, split_names: Mapping[str, str]) -> FPEConfig:
    """The config ``expand`` records for its arguments (``split_names``: the split name per incoming layer)."""
    if isinstance(split, Mapping):
        split_label: str | dict[str, str] = dict(split_names)
    else:
        split_label = next(iter(split_names.values()), split if isinstance(split, str) else "callable")
    return FPEConfig(
        alpha=alpha, split=split_label, seed=seed,
        pairs=None if pairs is None else [list(pair) for pair in pairs],
        layers=None if layers is None else list(layers),
        clauses=None if clauses is None else [[int(j) for j in clause] for clause in clauses],
        bias=bias, budget=budget, dropconnect_p=dropconnect_p)


def describe(model: nn.Module) -> FPEConfig:
    """``model``'s config: what ``expand`` recorded on it (``model.fpe_config``), with ``layout``,
    ``widths`` and ``nonzero`` read from the model as it is now.

    A model without a record (loaded by :func:`torchfpe.load_expanded`, or expanded before configs
    were recorded) gets ``alpha`` from its layers' shapes and defaults for the other arguments.
    """
    from .budget import nonzero_parameters

    layers = expanded_layers(model)
    if not layers:
        raise InvalidParameterError("the model has no expanded layer (torchfpe.expand it first)")
    base = getattr(model, ATTRIBUTE, None)
    if isinstance(base, Mapping):
        base = FPEConfig.from_dict(base)
    if not isinstance(base, FPEConfig):
        alpha = max(row_factor(layer.out_features, layer.parent_features) for _, layer in layers)
        base = FPEConfig(alpha=alpha, split="unknown")
    names = {layer.layout for _, layer in layers}
    layout = names.pop() if len(names) == 1 else {name: layer.layout for name, layer in layers}
    return dataclasses.replace(base, layout=layout, nonzero=nonzero_parameters(model), torchfpe_version=VERSION,
                               widths={name: [layer.in_features, layer.out_features] for name, layer in layers},
                               layer_nonzero={name: layer.nonzero_count() for name, layer in layers})
