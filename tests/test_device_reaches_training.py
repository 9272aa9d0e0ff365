"""The device given to every registered experiment reaches its training (no GPU needed: the protocol's one
device check is replaced by a recorder that stops the run there)."""

from __future__ import annotations

import pytest

from torchfpe.lab.experiments import protocol
from torchfpe.lab.experiments.registry import experiments


class Reached(Exception):
    """Raised by the recorder once the device has reached the protocol."""


def protocol_experiments() -> list[str]:
    """The registered experiments the protocol trains (their config names a task): every one trains tensors."""
    return [name for name, registered in experiments().items() if hasattr(registered.config, "task")]


def test_every_protocol_experiment_is_found():
    assert {"boolean", "heads", "deep", "cnn", "lm"} <= set(protocol_experiments())


@pytest.mark.parametrize("name", protocol_experiments())
@pytest.mark.parametrize("path", ["run", "run_single"])
def test_the_device_given_reaches_the_protocols_training(monkeypatch, name, path):
    seen = []

    def recorder(device, owner="device"):
        seen.append(device)
        raise Reached

    monkeypatch.setattr(protocol, "resolve_device", recorder)
    registered = experiments()[name]
    config = registered.config()  # defaults; nothing is loaded before the device is resolved
    with pytest.raises(Reached):
        if path == "run":
            registered.run([config], device="cuda:3")
        else:
            registered.run_single(config, device="cuda:3")
    assert seen == ["cuda:3"], f"{name}: the device given is not the device it trains on"
