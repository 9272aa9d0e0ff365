"""``save_pretrained`` / ``from_pretrained``: an expanded model as a directory it can be rebuilt from alone.

The directory holds ``config.json`` and the weights in ``model.safetensors`` (tensors only: each
expanded layer's metadata is its ``fpe_layout`` tensor, see :mod:`torchfpe.core.layouts.metadata`).

- A Hugging Face model (a ``PreTrainedModel``) is saved by its own ``save_pretrained``: the model's
  ``config.json`` gains an ``fpe_config`` block (:class:`~torchfpe.core.config.FPEConfig`), and
  ``from_pretrained(dir)`` builds the parent from that config (the class named in ``architectures``,
  else ``AutoModelForCausalLM``, else ``AutoModel``), then loads the weights into it.
- Any other model: ``config.json`` holds the ``fpe_config`` block only, and ``from_pretrained(dir,
  parent=model)`` takes the parent architecture (a fresh instance of the model before expansion).

Why the weights are loaded with :func:`torchfpe.load_expanded` rather than by running ``expand``
again with the stored config: each layer's saved metadata rebuilds it exactly in its saved layout
(packed ones included), for every split (those that need ``data``, or tensors and callables, cannot
be re-run from a config), without the cost of drawing the splits. The ``fpe_config`` block is then
checked against the loaded model (layer widths and non-zero counts) and set on it as ``model.fpe_config``.

``transformers`` and ``safetensors`` are imported inside these functions only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..core.config import ATTRIBUTE, FPEConfig, describe
from ..core.expand import load_expanded
from ..core.validation import InvalidParameterError, check_param

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
#: the key of the FPE block in ``config.json``
CONFIG_KEY = "fpe_config"


def _is_hugging_face(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return callable(getattr(model, "save_pretrained", None)) and callable(getattr(config, "to_dict", None))


def save_pretrained(model: nn.Module, directory: str | os.PathLike, **hf_kwargs) -> FPEConfig:
    """Write ``model`` (expanded, masked or packed) to ``directory``; returns the ``FPEConfig`` written.

    A Hugging Face model is saved by its own ``save_pretrained(directory, **hf_kwargs)`` with
    ``config.fpe_config`` set; any other model as ``config.json`` (the ``fpe_config`` block) plus
    ``model.safetensors``. Needs ``safetensors`` (``pip install safetensors``).
    """
    check_param("model", model, [nn.Module], "save_pretrained")
    config = describe(model)
    directory = Path(directory)
    if _is_hugging_face(model):
        setattr(model.config, CONFIG_KEY, config.to_dict())
        model.save_pretrained(directory, **hf_kwargs)
        return config
    if hf_kwargs:
        raise InvalidParameterError(f"save_pretrained got {sorted(hf_kwargs)}, which only a Hugging Face model's "
                                    "save_pretrained reads; this model is a plain torch module")
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    save_file(state, directory / WEIGHTS_NAME, metadata={"format": "pt"})
    (directory / CONFIG_NAME).write_text(json.dumps({CONFIG_KEY: config.to_dict()}, indent=2) + "\n")
    return config


def read_config(directory: str | os.PathLike) -> tuple[dict, FPEConfig | None]:
    """``config.json`` of a saved directory and its ``fpe_config`` block (``None`` in a Hugging Face
    config without one: the model's own ``save_pretrained`` wrote it); one-line errors naming the file."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise InvalidParameterError(f"{str(path)!r} does not exist; from_pretrained reads a directory written by "
                                    "torchfpe.save_pretrained")
    try:
        whole = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InvalidParameterError(f"{str(path)!r} is not JSON ({error})") from None
    if not isinstance(whole, dict) or (CONFIG_KEY not in whole and "model_type" not in whole):
        raise InvalidParameterError(f"{str(path)!r} has no {CONFIG_KEY!r} block; it was not written by "
                                    "torchfpe.save_pretrained")
    return whole, FPEConfig.from_dict(whole[CONFIG_KEY]) if CONFIG_KEY in whole else None


def read_weights(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors`` (or of every shard its index names)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if (directory / WEIGHTS_NAME).is_file():
        return load_file(directory / WEIGHTS_NAME)
    if (directory / INDEX_NAME).is_file():
        shards = sorted(set(json.loads((directory / INDEX_NAME).read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(directory / shard))
        return state
    raise InvalidParameterError(f"{str(directory)!r} holds neither {WEIGHTS_NAME} nor {INDEX_NAME}")


def _hugging_face_parent(directory: Path) -> nn.Module:
    """The parent architecture from ``config.json`` alone: the class in ``architectures``, else an Auto class."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(directory)
    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls._from_config(config)
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoModel):
        try:
            return auto.from_config(config)
        except ValueError:
            continue
    raise InvalidParameterError(f"no transformers class builds the config in {str(directory)!r}; pass parent=")


def _check_tied(model: nn.Module, missing: set[str], directory: Path) -> None:
    """Keys absent from the weights are allowed only where they share a tensor with a saved key (tied weights)."""
    state = model.state_dict(keep_vars=True)
    saved = {state[key].data_ptr() for key in state if key not in missing}
    untied = sorted(key for key in missing if state[key].data_ptr() not in saved)
    if untied:
        raise InvalidParameterError(f"the weights in {str(directory)!r} lack {untied[0]!r} (and {len(untied) - 1} "
                                    "more); the directory is incomplete" if len(untied) > 1 else
                                    f"the weights in {str(directory)!r} lack {untied[0]!r}; the directory is incomplete")


def from_pretrained(directory: str | os.PathLike, parent: nn.Module | None = None, *,
                    dtype: torch.dtype | None = None) -> nn.Module:
    """The expanded model saved in ``directory`` by :func:`save_pretrained`, in its saved layouts.

    Args:
        directory: the saved directory.
        parent: the parent architecture (a fresh model as it was before ``expand``); required for a
            model that is not a Hugging Face one; for one, built from ``config.json`` when omitted.
        dtype: cast the parent to this dtype before loading (the weights take the parent's dtype).

    The loaded model is in eval mode (as Hugging Face's ``from_pretrained`` returns models), carries
    ``model.fpe_config``, and its layer widths and non-zero counts are checked against the block. A
    Hugging Face directory written by the model's own ``save_pretrained`` (no block) loads too: each
    layer's saved metadata is enough; its ``fpe_config`` is then described from the loaded model.
    """
    directory = Path(directory)
    whole, config = read_config(directory)
    if parent is None:
        if "architectures" not in whole and "model_type" not in whole:
            raise InvalidParameterError(f"{str(directory / CONFIG_NAME)!r} describes a plain torch model; pass its "
                                        "architecture: from_pretrained(directory, parent=<the model before expand>)")
        parent = _hugging_face_parent(directory)
    check_param("parent", parent, [nn.Module], "from_pretrained")
    if dtype is not None:
        parent = parent.to(dtype)
    state = read_weights(directory)
    model = load_expanded(parent, state, strict=False)
    missing = set(model.state_dict()) - set(state)
    unexpected = set(state) - set(model.state_dict())
    if unexpected:
        raise InvalidParameterError(f"the weights in {str(directory)!r} hold {sorted(unexpected)[0]!r}, which the "
                                    "model does not have; pass the parent architecture it was saved from")
    _check_tied(model, missing, directory)
    if config is None:  # written by the model's own save_pretrained: the layers' metadata is all there is
        config = describe(model)  # refuses a model without expanded layers
    else:
        _check_against(model, config, directory)
    setattr(model, ATTRIBUTE, config)
    return model.eval()


def _check_against(model: nn.Module, config: FPEConfig, directory: Path) -> None:
    loaded = describe(model)
    if config.widths and loaded.widths != config.widths:
        layer = next(name for name in {**config.widths, **loaded.widths}
                     if config.widths.get(name) != loaded.widths.get(name))
        raise InvalidParameterError(f"{CONFIG_KEY} in {str(directory / CONFIG_NAME)!r} gives layer {layer!r} widths "
                                    f"{config.widths.get(layer)} but the weights give {loaded.widths.get(layer)}")
    if config.layer_nonzero and loaded.layer_nonzero != config.layer_nonzero:
        layer = next(name for name in config.layer_nonzero
                     if config.layer_nonzero[name] != loaded.layer_nonzero.get(name))
        raise InvalidParameterError(f"{CONFIG_KEY} in {str(directory / CONFIG_NAME)!r} records "
                                    f"{config.layer_nonzero[layer]} non-zero weights in layer {layer!r} but the "
                                    f"loaded weights hold {loaded.layer_nonzero.get(layer)}")
