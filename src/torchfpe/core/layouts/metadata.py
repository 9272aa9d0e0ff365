"""An expanded layer's metadata as a tensor: the ``fpe_layout`` entry of its ``state_dict``.

A layer's non-tensor state (its layout's name, shapes, the parent's shape, frozen roles, the tensors
it stores, a layout's own options such as ``row_factor`` or DropConnect's ``p``) is a small JSON
object. It is written to the ``state_dict`` as the UTF-8 bytes of that JSON in a 1-D ``uint8``
tensor under ``<layer>.fpe_layout``, so every tool that saves tensors carries it (safetensors, Hugging
Face ``save_pretrained``, ``Trainer`` checkpoints, ONNX and DDP), where a Python dict in
``_extra_state`` made them fail ("'dict' object has no attribute 'device'").

Why bytes of JSON rather than a row of integers: the registry of layouts is open (a user's layout
has a name no integer table knows), and options differ per layout (a float ``p``, a string
``grouping``); one encoder keeps every layout's fields and ``format`` tells versions apart.

``format`` 2 is this encoding. Files written before it hold the same object as a Python dict under
``<layer>._extra_state`` (format 1); :func:`saved_layout_state` reads both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, MutableMapping

import torch
from torch import Tensor

from ..validation import InvalidParameterError

#: the ``state_dict`` key (after the layer's prefix) holding the layer's metadata
LAYOUT_KEY = "fpe_layout"
#: the key files of format 1 used (a Python dict, written by ``get_extra_state``)
LEGACY_KEY = "_extra_state"
#: the version of the encoding written by :func:`encode_layout_state`
FORMAT = 2


def encode_layout_state(state: Mapping) -> Tensor:
    """``state`` (JSON-able, with a ``layout`` name) as a 1-D uint8 tensor of its UTF-8 JSON."""
    text = json.dumps({"format": FORMAT, **state}, separators=(",", ":"))
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)


def decode_layout_state(value: object, key: str) -> dict:
    """The metadata dict in a saved ``fpe_layout`` tensor; one-line ``InvalidParameterError`` naming ``key``."""
    if not isinstance(value, Tensor) or value.dtype != torch.uint8 or value.dim() != 1:
        held = f"a {value.dtype} tensor of shape {tuple(value.shape)}" if isinstance(value, Tensor) else \
            f"a {type(value).__name__}"
        raise InvalidParameterError(f"state_dict key {key!r} holds {held}; an expanded layer's metadata is a 1-D "
                                    "uint8 tensor (UTF-8 JSON written by torchfpe)")
    try:
        state = json.loads(bytes(value.detach().cpu().tolist()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidParameterError(f"state_dict key {key!r} is not UTF-8 JSON ({error}); the file is damaged or was "
                                    "not written by torchfpe") from None
    if not isinstance(state, dict) or not isinstance(state.get("layout"), str):
        raise InvalidParameterError(f"state_dict key {key!r} holds no layout name; expected a JSON object with "
                                    "'layout'")
    if not isinstance(state.get("format"), int) or state["format"] > FORMAT:
        raise InvalidParameterError(f"state_dict key {key!r} is of format {state.get('format')!r}; this torchfpe "
                                    f"reads formats up to {FORMAT} (upgrade torchfpe)")
    return state


def is_layout_key(key: str) -> bool:
    """Whether ``key`` is a layer's ``fpe_layout`` entry (at the top level or under a prefix)."""
    return key == LAYOUT_KEY or key.endswith("." + LAYOUT_KEY)


def saved_layout_state(state_dict: Mapping, prefix: str, *, pop: bool = False) -> dict | None:
    """The metadata saved for the layer at ``prefix`` (format 2 or 1), or ``None`` when there is none.

    ``pop=True`` removes both keys from ``state_dict`` (a ``MutableMapping``), as a layer's
    ``_load_from_state_dict`` does so that strict loading does not report them as unexpected.
    """
    key, legacy = prefix + LAYOUT_KEY, prefix + LEGACY_KEY
    encoded, old = state_dict.get(key), state_dict.get(legacy)
    if pop and isinstance(state_dict, MutableMapping):
        state_dict.pop(key, None)
        if isinstance(old, Mapping):
            state_dict.pop(legacy, None)
    if encoded is not None:
        return decode_layout_state(encoded, key)
    if isinstance(old, Mapping) and isinstance(old.get("layout"), str):
        return {"format": 1, **old}
    return None


def check_stored(saved: Mapping, state_dict: Mapping, prefix: str, where: str) -> None:
    """Refuse a state missing a tensor the saved metadata lists under ``stored`` (format 2), naming the key."""
    missing = [name for name in saved.get("stored", ()) if prefix + name not in state_dict]
    if missing:
        raise InvalidParameterError(
            f"{where}: state_dict key {prefix + missing[0]!r} is missing, but the saved {saved['layout']!r} layer "
            f"stores it (its {prefix + LAYOUT_KEY!r} lists {list(saved['stored'])}); the state_dict is incomplete")
