"""``expand_``: expansion in place, so a training run (a Trainer, a scheduler, hooks) keeps its model object.

:func:`~torchfpe.core.expand.expand` returns a new model and leaves its argument alone. A run that
expands in the middle of training needs the opposite: the model object it holds becomes wide, and the
optimizer it steps follows. ``expand_`` (the trailing underscore is torch's mark of an in-place
operation, as in torchao's ``quantize_``) replaces only the expanded layers, on their parent modules;
every other module and parameter stays the same object.
"""

from __future__ import annotations

import torch
from torch import nn

from .expand import ExpansionReport, expand
from .optim import _carried, rebind_optimizer_, unwrap_optimizer
from .targets import set_submodule
from .validation import InvalidParameterError, check_param


def expand_(model: nn.Module, alpha: int, split="random", *, optimizer: torch.optim.Optimizer | None = None,
            **expand_kwargs) -> ExpansionReport:
    """Expand ``model``'s hidden layers in place and return the :class:`~torchfpe.ExpansionReport`.

    Args:
        model: the model to widen; it stays the same object. Not one wrapped for data parallelism or
            compiled (``DistributedDataParallel``, FSDP, ``torch.compile``): expand the module inside,
            then wrap it again, since a wrapper keeps references to the old parameters.
        alpha, split: as for :func:`torchfpe.expand`; so are the keyword arguments (``seed``,
            ``pairs``, ``budget``, ...), except ``return_report`` (the report is what ``expand_`` returns).
        optimizer: the optimizer that trains ``model`` (Adam, AdamW, SGD, or a wrapper such as
            accelerate's ``AcceleratedOptimizer``). Its state is carried in place
            (``carry_optimizer(..., in_place=True)``): the same object, and every learning-rate scheduler
            stepping it, continue on the wide model. Without it, build the optimizer after ``expand_``.

    The expanded layers are new modules with new parameters (hooks registered on the old layers are
    not carried); everything else, tied weights included, is untouched. Every check runs before
    ``model`` or ``optimizer`` changes. ``expand_`` holds one copy of the model while it expands, as
    ``expand`` does.
    """
    check_param("model", model, [nn.Module], "expand_")
    if "return_report" in expand_kwargs:
        raise InvalidParameterError("expand_ always returns the ExpansionReport (the model is changed in place); "
                                    "drop return_report")
    inner = None if optimizer is None else unwrap_optimizer(optimizer)
    wide, report = expand(model, alpha, split, return_report=True, **expand_kwargs)
    paths = [change.name for change in report.layers]
    if inner is not None:  # mapped against the copy first: an error leaves model and optimizer as they were
        names = {id(p): name for name, p in model.named_parameters()}
        groups, carried = _carried(inner, names, model.get_submodule, wide)
    for path in paths:
        set_submodule(model, path, wide.get_submodule(path))
    if inner is not None:
        final = dict(model.named_parameters())  # the copy's parameters outside the expanded layers -> model's own
        name_of = {id(p): name for name, p in wide.named_parameters()}
        groups = [[final[name_of[id(p)]] for p in params] for params in groups]
        carried = [(final[name_of[id(p)]], state) for p, state in carried]
        rebind_optimizer_(inner, groups, carried)
    return report
