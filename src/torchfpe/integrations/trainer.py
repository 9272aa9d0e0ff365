"""``FPECallback``: Fixed Parameter Expansion at a chosen step of a ``transformers.Trainer`` run.

The paper's protocol (dense warm-up, expand, continue) inside an ordinary Trainer run::

    callback = torchfpe.FPECallback(at_step=300, alpha=2, seed=0)
    Trainer(model, args, train_dataset=data, callbacks=[callback]).train()

At the end of optimizer step ``at_step`` the callback expands the Trainer's model in place
(:func:`torchfpe.expand_`, so the Trainer keeps training the same object) and carries the
optimizer's state into the same optimizer object (through accelerate's wrapper), so the Trainer's
learning-rate scheduler continues its schedule. As llm-compressor's callbacks do, it takes the model
the Trainer trains at ``on_train_begin``. Under gradient accumulation ``on_step_end`` comes once per
optimizer step, after the gradients are cleared, so no partial accumulation meets the new layers, and
the masks hold because the forward pass multiplies by them.

Resuming from a checkpoint taken after the expansion: the Trainer loads the checkpoint into the model
it was given before any callback runs, so give it the wide architecture first, with
``callback.expand_(model)`` (the checkpoint's weights and masks then replace the new ones).

Not supported (refused at ``on_train_begin``): several processes (DDP, FSDP, DeepSpeed) and
``torch_compile``, whose wrappers hold the old parameters.
"""

from __future__ import annotations

from torch import nn
from transformers import TrainerCallback

from ..core.expand import ExpansionReport
from ..core.inplace import expand_
from ..core.layouts.base import expanded_layers
from ..core.targets import find_ffn_pairs
from ..core.validation import Interval, InvalidParameterError, check_param


class FPECallback(TrainerCallback):
    """Expand the Trainer's model after optimizer step ``at_step``, carrying optimizer state and schedule.

    Args:
        at_step: the optimizer step after which to expand (``0``: before the first step).
        alpha, split: as for :func:`torchfpe.expand`.
        **expand_kwargs: the rest of :func:`torchfpe.expand`'s keyword arguments (``seed``, ``budget``,
            ``pairs``, ...). Without ``pairs``, every FFN :func:`torchfpe.find_ffn_pairs` finds is
            expanded (an ``nn.Sequential`` MLP: its hidden layers). Pass ``seed`` for a run that
            reproduces.

    After the expansion, ``report`` holds the :class:`~torchfpe.ExpansionReport` and ``expanded_at``
    the step.
    """

    def __init__(self, at_step: int, alpha: int, split="random", **expand_kwargs) -> None:
        check_param("at_step", at_step, [Interval(int, 0)], "FPECallback")
        check_param("alpha", alpha, [Interval(int, 2)], "FPECallback")
        if "return_report" in expand_kwargs:
            raise InvalidParameterError("FPECallback keeps the ExpansionReport in .report; drop return_report")
        self.at_step, self.alpha, self.split, self.expand_kwargs = int(at_step), int(alpha), split, expand_kwargs
        self.report: ExpansionReport | None = None
        self.expanded_at: int | None = None
        self.model: nn.Module | None = None

    # ------------------------------------------------------------------------------ Trainer events
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        _refuse_wrappers(args)
        self.model = model  # the module whose parameters the Trainer's optimizer holds
        if state.global_step < self.at_step or self.report is not None:
            return
        if expanded_layers(model):  # resumed from a checkpoint taken after the expansion
            self.expanded_at = self.at_step
        elif state.global_step == 0:  # at_step == 0: expand before the first step
            self._expand(model, optimizer, state.global_step)
        else:
            raise InvalidParameterError(
                f"the run resumes at step {state.global_step}, after the expansion at step {self.at_step}, but the "
                "model is not expanded: call callback.expand_(model) before "
                "trainer.train(resume_from_checkpoint=...), so the checkpoint's wide layers fit")

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.expanded_at is None and state.global_step == self.at_step:
            self._expand(self.model if self.model is not None else model, optimizer, state.global_step)

    # ------------------------------------------------------------------------------ helpers
    def expand_(self, model: nn.Module) -> ExpansionReport:
        """This callback's expansion applied to ``model`` now (for resuming from a later checkpoint)."""
        report = expand_(model, self.alpha, self.split, **self._kwargs(model))
        self.report, self.expanded_at = report, self.at_step
        return report

    def _expand(self, model: nn.Module, optimizer, step: int) -> None:
        self.report = expand_(model, self.alpha, self.split, optimizer=optimizer, **self._kwargs(model))
        self.expanded_at = step

    def _kwargs(self, model: nn.Module) -> dict:
        kwargs = dict(self.expand_kwargs)
        if kwargs.get("pairs") is None and kwargs.get("layers") is None and not isinstance(model, nn.Sequential):
            kwargs["pairs"] = find_ffn_pairs(model)
        return kwargs


def _refuse_wrappers(args) -> None:
    """Refuse the Trainer setups whose model wrappers keep references to the parameters ``expand_`` replaces."""
    reasons = []
    if getattr(args, "world_size", 1) > 1:
        reasons.append(f"{args.world_size} processes (DDP)")
    if getattr(args, "fsdp", None):
        reasons.append("FSDP")
    if getattr(args, "deepspeed", None):
        reasons.append("DeepSpeed")
    if getattr(args, "torch_compile", False):
        reasons.append("torch_compile")
    if reasons:
        raise InvalidParameterError(
            f"FPECallback expands the model in place, which a wrapper set up by the Trainer ({', '.join(reasons)}) "
            "does not follow; expand before training (torchfpe.expand) or train on one process without it")
