"""Train many same-shape MLPs at once: weights stacked along a leading model axis.

Why this is exact: the loss is the *sum* of each model's own mean loss, so each model's gradient is
the one it would get alone, and Adam/AdamW/SGD update every entry independently of the others. So a
stack of B models trained together follows the same trajectories as B separate runs, up to float
rounding of the batched matrix products (tested against :mod:`torchfpe.lab.train`). What it saves is
Python and kernel-launch overhead, which dominates small networks.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.targets import ELEMENTWISE_MODULES, sequential_leaves
from ..core.layouts import ExpandedLayer, effective_parameters
from .train import TrainSettings, batch_order, make_optimizer


def _layout(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"StackedMLP stacks nn.Sequential MLPs, got {type(model).__name__}")
    leaves = sequential_leaves(model)
    for path, module in leaves:
        if isinstance(module, ExpandedLayer) and not isinstance(module, nn.Linear):
            raise TypeError(f"StackedMLP stacks the masked layout; layer {path!r} is {module.layout!r}: "
                            "torchfpe.unpack(model) first")
        if not isinstance(module, (nn.Linear, *ELEMENTWISE_MODULES)):
            raise TypeError(f"StackedMLP cannot stack module {path!r} ({type(module).__name__}): "
                            "only nn.Linear (masked or not) and element-wise modules")
    return leaves


def stack_signature(model: nn.Module) -> list:
    sig = []
    for _, module in _layout(model):
        if isinstance(module, nn.Linear):
            sig.append((getattr(module, "layout", "dense"), module.in_features, module.out_features,
                        module.bias is not None, getattr(module, "p", None), module.weight.dtype))
        else:
            sig.append(type(module).__name__)
    return sig


def can_stack(models: Sequence[nn.Module]) -> bool:
    """Whether ``models`` share one layout (module types, shapes, dtypes) and so can be stacked."""
    try:
        first = stack_signature(models[0])
        return all(stack_signature(m) == first for m in models[1:])
    except TypeError:
        return False


class StackedMLP(nn.Module):
    """B MLPs of one layout as one module: input (B, N, in) → output (B, N, out)."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        if not models:
            raise ValueError("StackedMLP needs at least one model")
        if not can_stack(models):
            raise ValueError("models differ in layout (module types, shapes or dtypes) and cannot be stacked")
        self.template = copy.deepcopy(models[0])
        self.count = len(models)
        layouts = [_layout(m) for m in models]
        self.steps: list[tuple[str, int]] = []
        self.elementwise = nn.ModuleList()  # registered so train()/eval() reach Dropout
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.dropconnect: list[float] = []
        #: Model b's DropConnect draws come from generator b (``fit_stacked`` sets its generators); None: the global one.
        self.drop_generators: Sequence[torch.Generator] | None = None
        masks: list[Tensor | None] = []
        bias_masks: list[Tensor | None] = []
        for position, (path, module) in enumerate(layouts[0]):
            if isinstance(module, nn.Linear):
                modules = [layout[position][1] for layout in layouts]
                index = len(self.weights)
                parts = [effective_parameters(m) for m in modules]
                self.weights.append(nn.Parameter(torch.stack([part[0] for part in parts])))
                has_bias = module.bias is not None
                self.biases.append(nn.Parameter(
                    torch.stack([part[1] for part in parts]) if has_bias
                    else torch.zeros(len(modules), module.out_features, dtype=module.weight.dtype),
                    requires_grad=has_bias,
                ))
                masked = isinstance(module, ExpandedLayer)
                masks.append(torch.stack([part[2] for part in parts]) if masked else None)
                bias_masks.append(torch.stack([part[3] for part in parts]) if masked and has_bias else None)
                self.dropconnect.append(float(getattr(module, "p", 0.0)) if masked else 0.0)
                self.steps.append(("linear", index))
            else:
                self.steps.append(("elementwise", len(self.elementwise)))
                self.elementwise.append(copy.deepcopy(module))
        for index, (mask, bias_mask) in enumerate(zip(masks, bias_masks)):
            self.register_buffer(f"mask_{index}", mask)
            self.register_buffer(f"bias_mask_{index}", bias_mask)
        self.paths = [path for path, module in layouts[0] if isinstance(module, nn.Linear)]

    def _weight(self, index: int) -> tuple[Tensor, Tensor]:
        weight, bias = self.weights[index], self.biases[index]
        mask, bias_mask = getattr(self, f"mask_{index}"), getattr(self, f"bias_mask_{index}")
        if mask is not None:
            weight = weight * mask
        if bias_mask is not None:
            bias = bias * bias_mask
        p = self.dropconnect[index]
        if self.training and p > 0:
            weight = weight * (self._uniform(weight) >= p) / (1.0 - p)
        return weight, bias

    def _uniform(self, weight: Tensor) -> Tensor:
        """Uniform draws shaped like the stacked ``weight``: each model's from its own generator, drawn on
        the CPU, so a run's draws do not depend on which runs share its stack (nor on the device)."""
        if self.drop_generators is None:
            return torch.rand_like(weight)
        draws = [torch.rand(weight.shape[1:], generator=g, dtype=weight.dtype) for g in self.drop_generators]
        return torch.stack(draws).to(weight.device)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, in) → (B, N, out)."""
        return self.forward_transposed(x.transpose(1, 2)).transpose(1, 2)

    def forward_transposed(self, x_t: Tensor) -> Tensor:
        """(B, in, N) → (B, out, N). Units-by-examples is the faster layout for CPU batched products
        of narrow layers (measured 2-3x on the Boolean headline shapes)."""
        for kind, item in self.steps:
            if kind == "linear":
                weight, bias = self._weight(item)
                x_t = torch.baddbmm(bias.unsqueeze(2), weight, x_t)
            else:
                x_t = self.elementwise[item](x_t)
        return x_t

    @torch.no_grad()
    def unstack(self) -> list[nn.Module]:
        """The B models as ordinary modules (masked layers keep their masks)."""
        models = []
        for b in range(self.count):
            model = copy.deepcopy(self.template)
            for index, path in enumerate(self.paths):
                layer = model.get_submodule(path)
                layer.weight.copy_(self.weights[index][b])
                if layer.bias is not None:
                    layer.bias.copy_(self.biases[index][b])
                if isinstance(layer, ExpandedLayer):  # the masked layout (checked in _layout)
                    layer.weight_mask.copy_(getattr(self, f"mask_{index}")[b])
                    if layer.bias is not None:
                        layer.bias_mask.copy_(getattr(self, f"bias_mask_{index}")[b])
            models.append(model)
        return models


def stacked_binary_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Sum over models of each model's mean BCE: per-model gradients equal separate training."""
    per_example = F.binary_cross_entropy_with_logits(logits.reshape(targets.shape), targets, reduction="none")
    return per_example.mean(dim=1).sum()


def stacked_multiclass_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Sum over models of each model's mean cross-entropy; logits (B, C, N), labels (B, N)."""
    return F.cross_entropy(logits, targets, reduction="none").mean(dim=1).sum()


def fit_stacked(
    stack: StackedMLP,
    x: Tensor,
    y: Tensor,
    epochs: int,
    settings: TrainSettings,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    generators: Sequence[torch.Generator] | None = None,
    loss_fn=stacked_binary_loss,
) -> torch.optim.Optimizer:
    """Train all models of ``stack`` on their own data ``x`` (B, N, in), ``y`` (B, N).

    ``loss_fn(logits (B, out, N), targets (B, N))`` must sum the models' own mean losses
    (a task kind's ``stacked_loss``, :mod:`torchfpe.lab.kinds`)."""
    if x.shape[0] != stack.count or y.shape[0] != stack.count:
        raise ValueError(f"x and y need a leading axis of {stack.count} models, got {tuple(x.shape)} and {tuple(y.shape)}")
    optimizer = optimizer or make_optimizer([p for p in stack.parameters() if p.requires_grad], settings)
    stack.train()
    examples = x.shape[1]
    orders = [batch_order(examples, epochs, settings.batch_size, g) for g in (generators or [None] * stack.count)]
    models = torch.arange(stack.count, device=x.device).unsqueeze(1)
    # Full batch only: a (B, in, N) copy made once. With minibatches it would copy the whole data set
    # for every model (x is often one set expanded to B views) and never be read.
    full = settings.batch_size is None or settings.batch_size >= examples
    x_t = x.transpose(1, 2).contiguous() if full else None
    # One data set seen by every model (an expanded view): minibatches are gathered into one reused
    # buffer. A fresh (B, batch, in) tensor per step is a large allocation whose page faults cost
    # about as much as the step's matmuls (measured 2x per step at B = 15, batch 2048, 1280 inputs).
    shared = x.stride(0) == 0 and y.stride(0) == 0
    buffer = None
    stack.drop_generators = list(generators) if generators else None  # each run's DropConnect draws are its own
    for indices in zip(*orders):
        if indices[0] is None:
            xb_t, yb = x_t, y
        elif shared:
            index = torch.stack(indices).to(x.device)  # the orders are drawn on the CPU: the same on every device
            rows = index.reshape(-1)
            if buffer is None or buffer.shape[0] < len(rows):
                buffer = torch.empty((len(rows), x.shape[2]), dtype=x.dtype, device=x.device)
            batch = torch.index_select(x[0], 0, rows, out=buffer[:len(rows)])
            xb_t, yb = batch.view(stack.count, -1, x.shape[2]).transpose(1, 2), y[0][index]
        else:
            index = torch.stack(indices).to(x.device)  # the orders are drawn on the CPU: the same on every device
            xb_t, yb = x[models, index].transpose(1, 2), y[models, index]
        optimizer.zero_grad(set_to_none=True)
        loss_fn(stack.forward_transposed(xb_t), yb).backward()
        optimizer.step()
    return optimizer


@torch.no_grad()
def stacked_binary_accuracy(stack: StackedMLP, x: Tensor, y: Tensor) -> Tensor:
    """Accuracy of each model, shape (B,)."""
    stack.eval()
    logits = stack.forward_transposed(x.transpose(1, 2)).reshape(y.shape)
    stack.train()
    return ((logits > 0).to(y.dtype) == y).float().mean(dim=1)


@torch.no_grad()
def stacked_multiclass_accuracy(stack: StackedMLP, x: Tensor, y: Tensor) -> Tensor:
    """Arg-max accuracy of each model on integer labels ``y`` (B, N), shape (B,)."""
    stack.eval()
    logits = stack.forward_transposed(x.transpose(1, 2))  # (B, C, N)
    stack.train()
    return (logits.argmax(dim=1) == y).float().mean(dim=1)
