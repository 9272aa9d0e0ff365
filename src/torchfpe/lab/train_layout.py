"""In which layout phase 2 of the protocol trains an expanded model: a runtime option, like the device.

``expand`` returns the masked layout (a dense weight times a mask, the reference); ``torchfpe.pack``
stores only the parent's non-zeros and computes the same products (outputs and gradients equal up to
float rounding). Both train to the same records, so the choice is a runtime option that never enters a
config: run keys, stacks and stored results are those of any layout, and a folder filled with one is
completed with the other. The choices (:data:`TRAIN_LAYOUTS`):

- ``masked``: every model trains as ``expand`` built it;
- ``packed``: every model trained one at a time whose expanded layers all pack (``torchfpe.pack(model)``,
  the layout ``auto`` of the core) trains packed;
- ``auto`` (the default): packed where that is known to be faster (:func:`auto_packs`), else masked.

What never packs, whatever the option: models trained as stacks (:mod:`torchfpe.lab.batched` trains
many seeds as batched masked matrix products; a packed layer has no stacked form), a model with no
expanded layer (dense, ``wide<scale>``), a DropConnect control (its drop needs the dense masked
weight), and ``@carry`` variants (:func:`torchfpe.carry_optimizer` maps the warm-up optimizer's state
onto the masked layout's parameters; a packed model has other parameters).

**Why packing is exact for training.** The packed parameters hold the masked weight's live entries
only. A masked hole has weight 0.0 and gradient 0.0, so every optimizer the protocol uses (Adam,
AdamW, SGD with momentum: element-wise updates) leaves it 0.0, and the live entries see the same
gradients and updates in both layouts; a global gradient norm (the LM's clipping) gets nothing from
the holes. Records are computed on the model unpacked again (:func:`for_records`), so every record
field reads the masked layout it always read.

**The rule of ``auto``, and the measurement behind it.** ``bench/phase2_layout.py`` times one
training step (forward, backward, Adam) masked against packed, with one thread, back to back in
alternating rounds (best of 5-7 kept), at the shapes the studies train one model at a time. On the
development machine (2 shared x86-64 cores under load, torch 2.13.0, 2026-12-07, the packed layouts
of main before issue 21's rework), packed / masked:

==========================================  ======  ======  ========  ===========
case                                        random  random  grouped   grouped
                                            α = 2   α = 4   α = 2     @structured
==========================================  ======  ======  ========  ===========
Boolean 48 → 16 → 1, 4000 full batch        1.12    1.08    1.08      —
heads 1280 → 32 → 10, batch 2048            1.12    0.95    6.10      —
heads 1280 → 4 → 10, batch 2048             0.85    1.12    1.23      —
deep 1280 → 4 × 16 → 62, batch 256          0.91    0.98    1.23      —
CNN, head 256 → 32 → 10, batch 128          0.99    0.99    1.11      —
byte-level GPT-2, d_ff = 16                 0.91    1.05    1.16      —
byte-level GPT-2, d_ff = 256                0.96    1.10    1.20      see below
==========================================  ======  ======  ========  ===========

No study shape trains meaningfully faster packed today (the best, 0.85-0.96, is within the
machine's noise, and grouped splits under the global budget are up to 6x slower), so ``auto``
packs nothing yet: :func:`auto_packs` keeps every model masked, and ``--layout auto`` is what
``--layout masked`` was, with no slowdown anywhere. It is the one place to change when the packed
layouts beat masked (issue 21's rework): rerun the benchmark and let :func:`auto_packs` return True
for the rows that win. ``--layout packed`` trains packed now, for anyone who measures otherwise
(another machine, larger models) and to test the layouts in training.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core import expanded_layers, pack, unpack
from ..core.validation import Options, check_param

#: The choices of the runtime option (``--layout``); ``auto`` is the default.
TRAIN_LAYOUTS = ("auto", "masked", "packed")


def check_train_layout(layout: str | None, owner: str = "layout") -> str:
    """``layout`` checked against :data:`TRAIN_LAYOUTS` (None: ``"auto"``); raises InvalidParameterError."""
    if layout is None:
        return "auto"
    check_param("layout", layout, [Options(TRAIN_LAYOUTS)], owner)
    return layout


def packable(model: nn.Module) -> bool:
    """Whether ``torchfpe.pack(model)`` takes ``model``: it has expanded layers and none refuses (a
    DropConnect control, an already packed layer)."""
    layers = expanded_layers(model)
    return bool(layers) and all(layer.refuses_packing() is None for _, layer in layers)


def auto_packs(model: nn.Module, device: torch.device) -> bool:
    """The rule of ``auto``: whether packing ``model`` makes its training faster on ``device``.

    From ``bench/phase2_layout.py`` (the module docstring's table): no shape the studies train is faster
    packed with today's layouts, so no model is packed. Change this where a new measurement says otherwise.
    """
    return False


def for_training(model: nn.Module, layout: str, device: torch.device) -> nn.Module:
    """The model phase 2 trains for the expanded ``model`` (on the CPU, before it moves to ``device``):
    ``torchfpe.pack(model)`` where ``layout`` says so and the model packs, else ``model`` itself."""
    if layout == "masked" or not packable(model):
        return model
    if layout == "auto" and not auto_packs(model, device):
        return model
    with torch.random.fork_rng(devices=[]):
        return pack(model)


def for_records(model: nn.Module) -> nn.Module:
    """``model`` in the masked layout (a packed model unpacked, anything else as it is): what records read."""
    if any(layer.packable for _, layer in expanded_layers(model)):
        # unpack builds nn.Linear layers, whose init draws from torch's global generator; the DropConnect
        # control draws its masks from it, so a later variant would see another stream than masked runs
        with torch.random.fork_rng(devices=[]):
            return unpack(model)
    return model
