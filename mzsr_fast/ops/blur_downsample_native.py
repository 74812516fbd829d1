"""Python side of the C++/CUDA ops mzsr_fast::blur_downsample,
blur_downsample_backward and gaussian_blur_downsample (schemas in
csrc/ops/blur_downsample.cpp): fake kernels for torch.compile, autograd, and
the two calls the public functions in blur_downsample.py make.

Shapes: x [B, C, H, W]; kernel [Bk, k, k] with Bk in {1, B} and k odd;
theta / lambda1 / lambda2 [Bk]; output [B, C, ceil(H / s), ceil(W / s)].
Backward of backward is not implemented and raises.
"""
from __future__ import annotations

import torch

from .. import _extension
from ..gaussian import gaussian_weights

__all__ = ["blur", "gaussian_blur", "DOUBLE_BACKWARD_ERROR"]

DOUBLE_BACKWARD_ERROR = "double backward through blur_downsample is not implemented"

_OPS_LOADED = _extension.LOAD_ERROR is None


def _out_hw(x: torch.Tensor, stride: int):
    h, w = x.shape[-2:]
    return (h + stride - 1) // stride, (w + stride - 1) // stride


if _OPS_LOADED:
    @torch.library.register_fake("mzsr_fast::blur_downsample")
    def _blur_fake(x, kernel, stride):
        torch._check(x.dim() == 4, lambda: f"blur_downsample: x must be [B, C, H, W], got {tuple(x.shape)}")
        torch._check(kernel.dim() == 3, lambda: f"blur_downsample: kernel must be [Bk, k, k], got {tuple(kernel.shape)}")
        torch._check(stride >= 1, lambda: f"blur_downsample: stride must be >= 1, got {stride}")
        return x.new_empty((x.shape[0], x.shape[1], *_out_hw(x, stride)))

    @torch.library.register_fake("mzsr_fast::blur_downsample_backward")
    def _blur_backward_fake(grad_out, x, kernel, stride, need_x, need_kernel):
        grad_x = x.new_empty(x.shape) if need_x else x.new_empty((0,))
        grad_kernel = kernel.new_empty(kernel.shape) if need_kernel else kernel.new_empty((0,))
        return grad_x, grad_kernel

    @torch.library.register_fake("mzsr_fast::gaussian_blur_downsample")
    def _gaussian_fake(x, theta, lambda1, lambda2, size, stride):
        torch._check(x.dim() == 4, lambda: f"gaussian_blur_downsample: x must be [B, C, H, W], got {tuple(x.shape)}")
        torch._check(size % 2 == 1, lambda: f"gaussian_blur_downsample: size must be odd, got {size}")
        return x.new_empty((x.shape[0], x.shape[1], *_out_hw(x, stride)))

    # blur_downsample: grads wrt x and kernel from one backward call.
    def _blur_setup(ctx, inputs, output):
        x, kernel, stride = inputs
        ctx.save_for_backward(x, kernel)
        ctx.stride = stride

    def _blur_backward(ctx, grad):
        x, kernel = ctx.saved_tensors
        need_x, need_kernel = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x, grad_kernel = torch.ops.mzsr_fast.blur_downsample_backward(
            grad, x, kernel, ctx.stride, need_x, need_kernel)
        return (grad_x if need_x else None), (grad_kernel if need_kernel else None), None

    torch.library.register_autograd("mzsr_fast::blur_downsample", _blur_backward, setup_context=_blur_setup)

    # The backward op is linear in grad_out and x / kernel, but its own
    # gradient is not written: refuse loudly instead of returning zeros.
    def _no_double_backward(ctx, grad_x, grad_kernel):
        raise RuntimeError(DOUBLE_BACKWARD_ERROR)

    def _backward_setup(ctx, inputs, output):
        pass

    torch.library.register_autograd("mzsr_fast::blur_downsample_backward", _no_double_backward,
                                    setup_context=_backward_setup)

    # gaussian_blur_downsample: grad wrt x through the materialised kernel; grads
    # wrt theta / lambda1 / lambda2 by chaining the kernel gradient through
    # the Gaussian formula (mzsr_fast.gaussian.gaussian_weights, the one
    # gaussian_kernel uses, without its data-dependent checks) with autograd.
    def _gaussian_setup(ctx, inputs, output):
        x, theta, lambda1, lambda2, size, stride = inputs
        ctx.save_for_backward(x, theta, lambda1, lambda2)
        ctx.size, ctx.stride = size, stride

    class _RefuseDoubleBackward(torch.autograd.Function):
        """Identity whose backward raises: marks gradients computed from
        detached values, so that create_graph=True cannot give wrong numbers."""

        @staticmethod
        def forward(value, *depends_on):
            return value.clone()

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, grad):
            raise RuntimeError(DOUBLE_BACKWARD_ERROR)

    def _gaussian_backward(ctx, grad):
        x, theta, lambda1, lambda2 = ctx.saved_tensors
        need_x = ctx.needs_input_grad[0]
        need_params = ctx.needs_input_grad[1:4]
        dtype = torch.promote_types(torch.promote_types(theta.dtype, lambda1.dtype), lambda2.dtype)
        with torch.enable_grad():
            params = [p.detach().to(dtype).requires_grad_(need) for p, need in
                      zip((theta, lambda1, lambda2), need_params)]
            kernel = gaussian_weights(*params, size=ctx.size)
        grad_x, grad_kernel = torch.ops.mzsr_fast.blur_downsample_backward(
            grad, x, kernel.detach(), ctx.stride, need_x, any(need_params))
        grads = [None, None, None]
        if any(need_params):
            wanted = [p for p, need in zip(params, need_params) if need]
            found = iter(torch.autograd.grad(kernel, wanted, grad_kernel.to(kernel.dtype)))
            grads = [next(found).to(p.dtype) if need else None
                     for p, need in zip((theta, lambda1, lambda2), need_params)]
        if torch.is_grad_enabled():
            # create_graph=True: these gradients were computed from detached
            # values; any attempt to differentiate them again must fail.
            deps = (grad, x, theta, lambda1, lambda2)
            grads = [_RefuseDoubleBackward.apply(g, *deps) if g is not None else None for g in grads]
            grad_x = _RefuseDoubleBackward.apply(grad_x, *deps) if need_x else grad_x
        return (grad_x if need_x else None), *grads, None, None

    torch.library.register_autograd("mzsr_fast::gaussian_blur_downsample", _gaussian_backward,
                                    setup_context=_gaussian_setup)


def blur(x: torch.Tensor, kernel3: torch.Tensor, stride: int) -> torch.Tensor:
    """x [B, C, H, W], kernel3 [1 or B, k, k] -> [B, C, ceil(H / s), ceil(W / s)]."""
    return torch.ops.mzsr_fast.blur_downsample(x.contiguous(), kernel3.contiguous(), int(stride))


def gaussian_blur(x: torch.Tensor, theta: torch.Tensor, lambda1: torch.Tensor, lambda2: torch.Tensor,
                  size: int, stride: int) -> torch.Tensor:
    """x [B, C, H, W]; theta, lambda1, lambda2 [1 or B] -> [B, C, ceil(H / s), ceil(W / s)],
    blurred with the normalised anisotropic Gaussian of size x size."""
    return torch.ops.mzsr_fast.gaussian_blur_downsample(
        x.contiguous(), theta.contiguous(), lambda1.contiguous(), lambda2.contiguous(), int(size), int(stride))
