"""Layouts of an expanded layer: how its weights are stored and multiplied, one module per layout.

An expanded layer stored as a dense weight times a mask (``masked``, the reference) costs alpha
times its parent (alpha squared for a middle layer of a deep expansion). FPE's structure allows
better: a *packed* layout stores only what the parent stored, so its time and bytes follow the
parent's non-zero count. :func:`pack` converts a model's masked layers, :func:`unpack` converts back.

Modules:

- :mod:`.base`: the contract (:class:`ExpandedLayer`), the registry (:data:`LAYOUTS`,
  :func:`register_layout`) and :class:`LayoutError`;
- :mod:`.masked`: ``masked`` (:class:`MaskedLinear`, the reference every layout is tested against)
  and ``dropconnect`` (:class:`DropConnectLinear`, a control; never packed);
- :mod:`.packed`: :class:`PackedLinear`, the base of the packed layouts, and their shared helpers;
- :mod:`.block`: ``block`` (:class:`BlockLinear`), dense blocks where groups of parents share input
  partitions, one batched product at the parent's cost;
- :mod:`.parent`: ``parent`` (:class:`ParentLinear`), the parent's weights in the parent's order
  plus a child id per entry, for splits whose parents partition their inputs independently (the
  default ``random``); its compiled CPU kernels are in :mod:`.native`;
- :mod:`.ell`: ``ell`` (:class:`EllLinear`), each row's live values and input indices (ELLPACK),
  for any masks;
- :mod:`.packing`: :func:`pack`, :func:`unpack`, :func:`stored_bytes`, :func:`mark_fixed_buffers` (for DDP).

**The contract.** Every layout subclasses :class:`ExpandedLayer` and implements ``effective_weight``,
``effective_bias``, ``dense_weight_mask``, ``dense_bias_mask`` (dense views in natural unit order),
``to_masked``, ``masked_out_nonzero``, ``apply_mask_`` and the classmethod ``empty_from_state(extra,
tensors, device)``; registering a class that leaves one abstract is refused. Its metadata
(``layout_state``, its name first) goes to the ``state_dict`` as the uint8 tensor ``fpe_layout``
(:mod:`.metadata`): a layer's ``state_dict`` holds tensors only. A packed layout (subclass
of :class:`PackedLinear`, trait ``packable``) also provides the classmethod ``from_masked(layer,
alpha, **options)``, which builds it from a :class:`MaskedLinear` or raises :class:`LayoutError`
when the masks do not fit, and ``check_saved``, which refuses tampered index tensors naming the key.
Every packed layer answers ``.weight`` with its stored weight parameter (packed values, not the
dense matrix), so models that read ``layer.weight.dtype`` or ``.device`` in their forward pass (T5)
run with packed layers. Traits are class attributes beside the code: ``layout`` (the name), ``packable``, ``auto_order``
(place in ``pack(layout="auto")``'s tries; ``None`` keeps ``auto`` away), ``reads_input_order``
(``from_masked`` accepts ``input_order``, so the previous layer may emit its own order).

**Adding a layout** is one new module in this package (or anywhere): a class meeting the contract,
decorated with :func:`register_layout`, and, if it lives here, one import line below so it registers
when the package loads. Then ``pack(model, layout="name")`` accepts it, ``auto`` tries it if it has an
``auto_order``, and its tests compare it with ``MaskedLinear`` (outputs, gradients, training).

**How loading finds a layout.** Saving writes ``{"layout": name, ...}`` as JSON bytes in the tensor
``<layer>.fpe_layout`` (files before it held the dict in ``<layer>._extra_state``; both load);
:func:`torchfpe.load_expanded` looks the name up in :data:`LAYOUTS`, calls the class's
``empty_from_state`` for a layer of the saved shapes, and loads the tensors into it (a packed layer
checks them first and rebuilds its derived tensors after). Pruned entries stay at exactly 0.0 under
any torch.optim optimizer, for the reason given in :mod:`.masked`: their gradient is 0.0.
"""

from .metadata import LAYOUT_KEY, decode_layout_state, encode_layout_state, saved_layout_state
from .base import LAYOUTS, ExpandedLayer, LayoutError, auto_layouts, effective_parameters, expanded_layers, \
    layout_of, packable_layouts, register_layout
from .masked import DropConnectLinear, MaskedLinear, apply_masks_
from .packed import PackedLinear
from .block import BlockLinear  # each layout registers itself when its module is imported
from .ell import EllLinear
from .parent import ParentLinear
from .nested import NestedLinear  # after block: it reuses block's support grouping
from .packing import fixed_buffer_names, mark_fixed_buffers, pack, pack_layer, stored_bytes, unpack

__all__ = [
    "LAYOUTS", "LAYOUT_KEY", "decode_layout_state", "encode_layout_state", "saved_layout_state", "BlockLinear", "DropConnectLinear", "EllLinear", "ExpandedLayer", "LayoutError", "MaskedLinear",
    "PackedLinear", "ParentLinear", "apply_masks_", "auto_layouts", "effective_parameters", "expanded_layers", "layout_of",
    "pack", "pack_layer", "packable_layouts", "register_layout", "stored_bytes", "unpack",
]
