"""Small builders the test modules share (pytest puts this folder on the import path)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def mlp(sizes, seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """Linear layers of ``sizes`` with ReLUs between them, initialised from ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b, dtype=dtype))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def values_grad_dense(layer) -> torch.Tensor:
    """A packed layer's ``values.grad`` laid out at its natural (out, in) positions."""
    probe = copy.deepcopy(layer)
    with torch.no_grad():
        probe.values.copy_(layer.values.grad)
    return probe.effective_weight().detach()


def bias_grad_dense(layer) -> torch.Tensor:
    """A packed layer's ``bias.grad`` laid out at its natural positions."""
    probe = copy.deepcopy(layer)
    with torch.no_grad():
        probe.bias.copy_(layer.bias.grad)
    return probe.effective_bias().detach()


def cli(*args):
    """``torchfpe ARGS`` run in-process (typer's CliRunner); arguments are turned into strings."""
    from typer.testing import CliRunner

    from torchfpe.lab.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def one_error_line(result) -> str:
    """The single ``error:`` line a failed command printed, with no traceback."""
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]
