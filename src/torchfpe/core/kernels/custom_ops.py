"""The Triton products as ``torch.library`` custom ops, with fake (shape) impls and autograd.

``torch.compile`` sees each op as one opaque node (no graph break); the backward is written in the
same ops, so a compiled training step traces through it too. The ops take plain tensors and ints:
the layer adapters in :mod:`torchfpe.core.kernels` read them off a layer.

- ``torchfpe::block_product(x, values, bias, gather, position, out_width, holes, atomic)``;
- ``torchfpe::parent_product(x, values, child_bits, bias, gather, alpha, holes)``;

``holes`` (flat positions of pruned values, or ``None``) get gradient 0.0; ``atomic`` says that
some input is read by more than one block (see :mod:`.block_triton`).
"""

from typing import Optional

import torch
from torch import Tensor

from . import block_triton, parent_triton


# ------------------------------------------------------------------------------------------ block
@torch.library.custom_op("torchfpe::block_product", mutates_args=())
def block_product(x: Tensor, values: Tensor, bias: Optional[Tensor], gather: Optional[Tensor], position: Tensor,
                  out_width: int, holes: Optional[Tensor], atomic: bool) -> Tensor:
    """The block layout's product (see :mod:`.block_triton`); ``holes`` and ``atomic`` serve the backward."""
    return block_triton.forward(x, values, bias, gather, position, out_width)


@block_product.register_fake
def _(x, values, bias, gather, position, out_width, holes, atomic):
    return x.new_empty(x.shape[0], out_width)


@torch.library.custom_op("torchfpe::block_grad_input", mutates_args=())
def block_grad_input(grad: Tensor, values: Tensor, gather: Optional[Tensor], position: Tensor, in_features: int,
                     atomic: bool) -> Tensor:
    return block_triton.grad_input(grad, values, gather, position, in_features, atomic)


@block_grad_input.register_fake
def _(grad, values, gather, position, in_features, atomic):
    return grad.new_empty(grad.shape[0], in_features)


@torch.library.custom_op("torchfpe::block_grad_values", mutates_args=())
def block_grad_values(grad: Tensor, x: Tensor, values: Tensor, gather: Optional[Tensor], position: Tensor,
                      holes: Optional[Tensor]) -> Tensor:
    return block_triton.grad_values(grad, x, values, gather, position, holes)


@block_grad_values.register_fake
def _(grad, x, values, gather, position, holes):
    return values.new_empty(values.shape)


def _block_setup(ctx, inputs, output) -> None:
    x, values, bias, gather, position, _, holes, atomic = inputs
    ctx.save_for_backward(x, values, gather, position, holes)
    ctx.has_bias, ctx.atomic, ctx.in_features = bias is not None, atomic, x.shape[1]


def _block_backward(ctx, grad: Tensor):
    x, values, gather, position, holes = ctx.saved_tensors
    need_x, need_values, need_bias = ctx.needs_input_grad[:3]
    grad_x = block_grad_input(grad, values, gather, position, ctx.in_features, ctx.atomic) if need_x else None
    grad_values = block_grad_values(grad, x, values, gather, position, holes) if need_values else None
    grad_bias = block_triton.grad_bias(grad, position) if ctx.has_bias and need_bias else None
    return grad_x, grad_values, grad_bias, None, None, None, None, None


block_product.register_autograd(_block_backward, setup_context=_block_setup)


# ----------------------------------------------------------------------------------------- parent
@torch.library.custom_op("torchfpe::parent_product", mutates_args=())
def parent_product(x: Tensor, values: Tensor, child_bits: Tensor, bias: Optional[Tensor], gather: Optional[Tensor],
                   alpha: int, holes: Optional[Tensor]) -> Tensor:
    """The parent layout's product (see :mod:`.parent_triton`); ``holes`` serves the backward."""
    return parent_triton.forward(x, values, child_bits, bias, gather, alpha)


@parent_product.register_fake
def _(x, values, child_bits, bias, gather, alpha, holes):
    return x.new_empty(x.shape[0], alpha * values.shape[0])


@torch.library.custom_op("torchfpe::parent_grad_input", mutates_args=())
def parent_grad_input(grad: Tensor, values: Tensor, child_bits: Tensor, gather: Optional[Tensor],
                      alpha: int) -> Tensor:
    return parent_triton.grad_input(grad, values, child_bits, gather, alpha)


@parent_grad_input.register_fake
def _(grad, values, child_bits, gather, alpha):
    return grad.new_empty(grad.shape[0], values.shape[1])


@torch.library.custom_op("torchfpe::parent_grad_values", mutates_args=())
def parent_grad_values(grad: Tensor, x: Tensor, values: Tensor, child_bits: Tensor, gather: Optional[Tensor],
                       alpha: int, holes: Optional[Tensor]) -> Tensor:
    return parent_triton.grad_values(grad, x, values, child_bits, gather, alpha, holes)


@parent_grad_values.register_fake
def _(grad, x, values, child_bits, gather, alpha, holes):
    return values.new_empty(values.shape)


def _parent_setup(ctx, inputs, output) -> None:
    x, values, child_bits, bias, gather, alpha, holes = inputs
    ctx.save_for_backward(x, values, child_bits, gather, holes)
    ctx.has_bias, ctx.alpha = bias is not None, alpha


def _parent_backward(ctx, grad: Tensor):
    x, values, child_bits, gather, holes = ctx.saved_tensors
    need_x, need_values, _, need_bias = ctx.needs_input_grad[:4]
    grad_x = parent_grad_input(grad, values, child_bits, gather, ctx.alpha) if need_x else None
    grad_values = parent_grad_values(grad, x, values, child_bits, gather, ctx.alpha, holes) if need_values else None
    grad_bias = grad.sum(dim=0, dtype=torch.float32).to(grad.dtype) if ctx.has_bias and need_bias else None
    return grad_x, grad_values, None, grad_bias, None, None, None


parent_product.register_autograd(_parent_backward, setup_context=_parent_setup)
