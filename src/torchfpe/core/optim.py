"""``carry_optimizer``: expansion in the middle of training, with the optimizer's state carried over.

The paper's protocol trains the expanded model with a fresh optimizer. A run that expands in the
middle of training may instead keep what the optimizer has learnt about each weight. Which expanded
entry came from which parent entry follows from the shapes alone, because ``expand`` builds every
layer the same way: the parent's rows are repeated ``rows = out_wide / out_parent`` times (child
``k`` of unit ``i`` at ``rows * i + k``) and its columns ``cols = in_wide / in_parent`` times (one
copy per child of the input unit), then the layer's mask keeps a child's share and the budget
prunes. So a state tensor is carried exactly as the weight was: repeated the same way, then
multiplied by the mask. Every other parameter keeps its state as it is.

Why the masks keep holding: a pruned entry gets state 0, its gradient is 0 (the forward pass
multiplies by the mask) and its weight is 0, so Adam's moments stay 0 and its update is
0 / (sqrt(0) + eps) = 0, AdamW's decoupled decay multiplies 0, and SGD's momentum buffer stays 0.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

from .layouts.base import ExpandedLayer, expanded_layers
from .layouts.masked import MaskedLinear
from .targets import features, is_conv1d
from .validation import InvalidParameterError, check_param

#: The optimizers whose per-parameter state is element-wise (one entry per weight) plus a step count.
CARRIED = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)


def carry_optimizer(optimizer: torch.optim.Optimizer, parent: nn.Module, wide: nn.Module) -> torch.optim.Optimizer:
    """A new optimizer of ``optimizer``'s class and hyperparameters over ``wide``'s parameters, state carried.

    Args:
        optimizer: a ``torch.optim.Adam``, ``AdamW`` or ``SGD`` (with or without momentum) over
            ``parent``'s parameters (any subset, any parameter groups).
        parent: the model the optimizer trains.
        wide: ``torch.expand(parent, ...)``'s result, in the masked layout (carry before ``pack``).

    Returns an optimizer with the same parameter groups (each group's hyperparameters kept) over the
    matching parameters of ``wide``: an expanded layer's moments are the parent's repeated as its
    weights were (each child's are the parent's under the child's mask; a copied outgoing column gets
    its parent column's state) and 0 where pruned; every other parameter's state is copied; ``step``
    is kept. ``optimizer`` and ``parent`` are not modified. Build a new learning-rate scheduler on
    the returned optimizer.
    """
    owner = "carry_optimizer"
    check_param("optimizer", optimizer, [torch.optim.Optimizer], owner)
    check_param("parent", parent, [nn.Module], owner)
    check_param("wide", wide, [nn.Module], owner)
    if type(optimizer) not in CARRIED:
        raise InvalidParameterError(
            f"carry_optimizer carries the state of torch.optim.Adam, AdamW and SGD (with or without momentum); got "
            f"{type(optimizer).__module__}.{type(optimizer).__name__}: build a fresh optimizer over the wide model's "
            "parameters instead")
    packed = [(path, layer) for path, layer in expanded_layers(wide) if not isinstance(layer, MaskedLinear)]
    if packed:
        raise InvalidParameterError(f"layer {packed[0][0]!r} of wide is in the packed {packed[0][1].layout!r} layout; "
                                    "carry the optimizer on the model torchfpe.expand returns (masked), before "
                                    "torchfpe.pack")
    names = {id(p): name for name, p in parent.named_parameters()}
    wide_parameters = dict(wide.named_parameters())
    groups, carried, seen = [], [], set()
    for index, group in enumerate(optimizer.param_groups):
        params = []
        for param in group["params"]:
            name = names.get(id(param))
            if name is None:
                raise InvalidParameterError(f"param_groups[{index}] of the optimizer holds a parameter of shape "
                                            f"{tuple(param.shape)} that is not one of parent's parameters; pass the "
                                            "model the optimizer trains as parent")
            if name not in wide_parameters:
                raise InvalidParameterError(f"wide has no parameter {name!r}; pass the model torchfpe.expand returned "
                                            "for parent")
            new = wide_parameters[name]
            if id(new) in seen:
                raise InvalidParameterError(f"parameter {name!r} is in the optimizer twice")
            seen.add(id(new))
            carried.append((new, _carried_state(optimizer.state.get(param, {}), name, param, new, parent, wide)))
            params.append(new)
        groups.append({**{key: value for key, value in group.items() if key != "params"}, "params": params})
    accepted = inspect.signature(type(optimizer).__init__).parameters
    fresh = type(optimizer)(groups, **{k: v for k, v in optimizer.defaults.items() if k in accepted})
    for param, state in carried:
        if state:
            fresh.state[param] = state
    return fresh


def _carried_state(state: dict, name: str, old: Tensor, new: Tensor, parent: nn.Module, wide: nn.Module) -> dict:
    """One parameter's state in ``wide``: mapped like the weights of an expanded layer, else copied."""
    path, _, role = name.rpartition(".")
    layer = wide.get_submodule(path) if path else wide
    source = parent.get_submodule(path) if path else parent
    mapping = _expansion_map(path, role, layer, source, old, new)
    out = {}
    for key, value in state.items():
        if key == "step" or value is None:
            out[key] = value.clone() if isinstance(value, Tensor) else value
        elif isinstance(value, Tensor) and value.shape == old.shape:
            out[key] = mapping(value.detach()).to(new.dtype).clone()
        else:
            raise InvalidParameterError(f"the optimizer's state {key!r} of parameter {name!r} is not element-wise "
                                        f"(shape {tuple(getattr(value, 'shape', ()))}, the parameter's is "
                                        f"{tuple(old.shape)}); carry_optimizer cannot map it")
    return out


def _expansion_map(path: str, role: str, layer: nn.Module, source: nn.Module, old: Tensor, new: Tensor):
    """How a state tensor of parent parameter ``old`` becomes one of ``new`` (a function of the tensor)."""
    if not isinstance(layer, ExpandedLayer):
        if new.shape != old.shape:
            raise InvalidParameterError(f"parameter {path + '.' + role!r} has shape {tuple(new.shape)} in wide but "
                                        f"{tuple(old.shape)} in parent and is not in an expanded layer")
        return lambda value: value
    if not (isinstance(source, nn.Linear) or is_conv1d(source)):
        raise InvalidParameterError(f"layer {path!r} of parent is a {type(source).__name__}; an expanded layer comes "
                                    "from an nn.Linear (or a GPT-2 Conv1D)")
    (in_parent, out_parent), (in_wide, out_wide) = features(source), (layer.in_features, layer.out_features)
    if in_wide % in_parent or out_wide % out_parent:
        raise InvalidParameterError(f"layer {path!r} is {out_wide}x{in_wide} in wide, not an expansion of parent's "
                                    f"{out_parent}x{in_parent} (outputs x inputs)")
    rows, cols = out_wide // out_parent, in_wide // in_parent
    transposed = is_conv1d(source) and role == "weight"  # Conv1D stores (in, out)
    mask = layer.weight_mask if role == "weight" else layer.bias_mask
    if role == "weight":
        return lambda value: ((value.t() if transposed else value)
                              .repeat_interleave(rows, 0).repeat_interleave(cols, 1) * mask)
    return lambda value: value.repeat_interleave(rows) * mask
