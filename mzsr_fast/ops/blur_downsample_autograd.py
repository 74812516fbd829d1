"""Autograd of the blur_downsample custom ops, shared by the native (C++/CUDA,
blur_downsample_native.py) and Triton (kernels/blur_downsample.py) backends.

Each backend has a blur op (x, kernel, stride) -> out, its backward op
(grad_out, x, kernel, stride, need_x, need_kernel) -> (grad_x, grad_kernel)
(empty tensors for what is not needed), and a Gaussian op (x, theta,
lambda1, lambda2, size, stride) -> out whose gradients go through the same
backward op. Shapes: x [B, C, H, W]; kernel [Bk, k, k] with Bk in {1, B};
theta / lambda1 / lambda2 [Bk]; out [B, C, ceil(H / s), ceil(W / s)].

What differs between the backends stays with them: the message of the
double-backward error, and when the Gaussian op refuses create_graph=True.
"""
from __future__ import annotations

import torch

from ..gaussian import gaussian_weights

__all__ = ["register_blur_autograd", "gaussian_setup_context", "gaussian_input_grads"]


def register_blur_autograd(op, backward_op, double_backward_error: str) -> None:
    """Register the autograd of a blur op: grads wrt x and kernel from one call
    of backward_op, and a backward_op whose own gradient raises
    RuntimeError(double_backward_error) (it is not written; zeros would be wrong).

    op, backward_op: what torch.library.register_autograd takes (an OpOverload
    or a CustomOpDef); backward_op is also called.
    """
    def setup_context(ctx, inputs, output):
        x, kernel, stride = inputs
        ctx.save_for_backward(x, kernel)
        ctx.stride = stride

    def backward(ctx, grad):
        x, kernel = ctx.saved_tensors
        need_x, need_kernel = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x, grad_kernel = backward_op(grad, x, kernel, ctx.stride, need_x, need_kernel)
        return (grad_x if need_x else None), (grad_kernel if need_kernel else None), None

    torch.library.register_autograd(op, backward, setup_context=setup_context)

    def no_setup(ctx, inputs, output):
        pass

    def no_double_backward(ctx, *grads):
        raise RuntimeError(double_backward_error)

    torch.library.register_autograd(backward_op, no_double_backward, setup_context=no_setup)


def gaussian_setup_context(ctx, inputs, output):
    """setup_context of a Gaussian op: saves x and the three parameters, keeps size and stride."""
    x, theta, lambda1, lambda2, size, stride = inputs
    ctx.save_for_backward(x, theta, lambda1, lambda2)
    ctx.size, ctx.stride = size, stride


def gaussian_input_grads(backward_op, grad: torch.Tensor, ctx, dtype: torch.dtype):
    """Gradients of a Gaussian op from the backward op of its blur, with ctx
    as gaussian_setup_context left it.

    The kernel is rebuilt from the parameters in dtype (gaussian_weights, the
    formula gaussian_kernel uses, without its data-dependent checks) under
    autograd; backward_op gives grad_x and the kernel gradient, which is
    chained back to the parameters that need it. Returns (grad_x, [grad_theta,
    grad_lambda1, grad_lambda2]): grad_x is empty when x needs none, a
    parameter's gradient None when it needs none, else in its dtype. All are
    computed from detached values: they cannot be differentiated again.
    """
    x, theta, lambda1, lambda2 = ctx.saved_tensors
    params = (theta, lambda1, lambda2)
    need_x, need_params = ctx.needs_input_grad[0], ctx.needs_input_grad[1:4]
    with torch.enable_grad():
        leaves = [p.detach().to(dtype).requires_grad_(need) for p, need in zip(params, need_params)]
        kernel = gaussian_weights(*leaves, size=ctx.size)
    grad_x, grad_kernel = backward_op(grad, x, kernel.detach(), ctx.stride, need_x, any(need_params))
    grads = [None, None, None]
    if any(need_params):
        wanted = [p for p, need in zip(leaves, need_params) if need]
        found = iter(torch.autograd.grad(kernel, wanted, grad_kernel.to(kernel.dtype)))
        grads = [next(found).to(p.dtype) if need else None for p, need in zip(params, need_params)]
    return grad_x, grads
