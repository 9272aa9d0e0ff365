"""Where experiments train: one checked device name, a runtime option that never enters a config.

The device is not a config field, so a run's key (``sweep.store.config_key`` hashes the config's
``to_dict()``) and the stacks (``without_seed()``) are the same on every device: a result folder
filled on a GPU is completed on a CPU, and the other way round, without running anything twice. A
run's records mean the same on every device (the same seeds, data, splits and optimizer steps); they
are not bitwise equal, since float rounding differs between devices (and DropConnect draws its masks
from the device's own generator).
"""

from __future__ import annotations

import re

import torch

from ..core.validation import InvalidParameterError

#: The device kinds experiments train on (``cuda`` takes an index: ``cuda:1``).
KINDS = ("cpu", "cuda", "mps")
_NAME = re.compile(r"^(cpu|cuda|mps)(?::(\d+))?$")


def resolve_device(device: str | torch.device | None, owner: str = "device") -> torch.device:
    """``device`` checked against this machine: ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (``None``: cpu).

    Raises :class:`InvalidParameterError` naming the argument for an unknown name, ``cuda`` without
    a CUDA device (or an index beyond the devices present) and ``mps`` without MPS.
    """
    if device is None:
        return torch.device("cpu")
    text = str(device) if isinstance(device, torch.device) else device
    match = _NAME.match(text.strip().lower()) if isinstance(text, str) else None
    if match is None:
        raise InvalidParameterError(f"the 'device' parameter of {owner} must be one of cpu, cuda, cuda:N or mps; "
                                    f"got {device!r}")
    kind, index = match.group(1), match.group(2)
    if kind == "cpu":
        if index not in (None, "0"):
            raise InvalidParameterError(f"the 'device' parameter of {owner} is {device!r}; the CPU has no index "
                                        "(use cpu)")
        return torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise InvalidParameterError(f"the 'device' parameter of {owner} is {device!r}, but this machine has no "
                                        "CUDA device (torch.cuda.is_available() is False); use --device cpu")
        count = torch.cuda.device_count()
        if index is not None and int(index) >= count:
            raise InvalidParameterError(f"the 'device' parameter of {owner} is {device!r}, but this machine has "
                                        f"{count} CUDA device(s): cuda:0..cuda:{count - 1}")
        return torch.device("cuda", int(index) if index is not None else 0)
    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_available():
        raise InvalidParameterError(f"the 'device' parameter of {owner} is {device!r}, but MPS is not available on "
                                    "this machine (torch.backends.mps.is_available() is False); use --device cpu")
    if index not in (None, "0"):
        raise InvalidParameterError(f"the 'device' parameter of {owner} is {device!r}; MPS has one device (use mps)")
    return torch.device("mps")


def device_name(device: str | torch.device | None, owner: str = "device") -> str:
    """:func:`resolve_device`'s device as the name the runners pass on (``"cpu"``, ``"cuda:0"``)."""
    return str(resolve_device(device, owner))


def check_dtype_on(device: torch.device, dtype_name: str, owner: str = "device") -> None:
    """MPS has no float64: refuse a float64 config there before any work."""
    if device.type == "mps" and dtype_name == "float64":
        raise InvalidParameterError(f"the 'device' parameter of {owner} is mps, which has no float64; set "
                                    "dtype=float32 or use --device cpu")
