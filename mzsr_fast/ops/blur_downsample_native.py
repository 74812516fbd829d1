"""Python side of the C++/CUDA ops mzsr_fast::blur_downsample,
blur_downsample_backward and gaussian_blur_downsample (schemas in
csrc/ops/blur_downsample.cpp): fake kernels for torch.compile, autograd (the
formulas in blur_downsample_autograd.py), and the two calls the public
functions in blur_downsample.py make.

Shapes: x [B, C, H, W]; kernel [Bk, k, k] with Bk in {1, B} and k odd;
theta / lambda1 / lambda2 [Bk]; output [B, C, ceil(H / s), ceil(W / s)].
Backward of backward is not implemented and raises.
"""
from __future__ import annotations

import torch

from .. import _extension
from .blur_downsample_autograd import gaussian_input_grads, gaussian_setup_context, register_blur_autograd

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

    register_blur_autograd(torch.ops.mzsr_fast.blur_downsample.default,
                           torch.ops.mzsr_fast.blur_downsample_backward.default, DOUBLE_BACKWARD_ERROR)

    # gaussian_blur_downsample: create_graph=True is allowed, but the
    # gradients it gives refuse to be differentiated again.
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
        dtype = torch.promote_types(torch.promote_types(theta.dtype, lambda1.dtype), lambda2.dtype)
        grad_x, grads = gaussian_input_grads(torch.ops.mzsr_fast.blur_downsample_backward.default, grad, ctx,
                                             dtype)
        need_x = ctx.needs_input_grad[0]
        if torch.is_grad_enabled():
            # create_graph=True: these gradients were computed from detached
            # values; any attempt to differentiate them again must fail.
            deps = (grad, x, theta, lambda1, lambda2)
            grads = [_RefuseDoubleBackward.apply(g, *deps) if g is not None else None for g in grads]
            grad_x = _RefuseDoubleBackward.apply(grad_x, *deps) if need_x else grad_x
        return (grad_x if need_x else None), *grads, None, None

    torch.library.register_autograd("mzsr_fast::gaussian_blur_downsample", _gaussian_backward,
                                    setup_context=gaussian_setup_context)


def blur(x: torch.Tensor, kernel3: torch.Tensor, stride: int) -> torch.Tensor:
    """x [B, C, H, W], kernel3 [1 or B, k, k] -> [B, C, ceil(H / s), ceil(W / s)]."""
    return torch.ops.mzsr_fast.blur_downsample(x.contiguous(), kernel3.contiguous(), int(stride))


def gaussian_blur(x: torch.Tensor, theta: torch.Tensor, lambda1: torch.Tensor, lambda2: torch.Tensor,
                  size: int, stride: int) -> torch.Tensor:
    """x [B, C, H, W]; theta, lambda1, lambda2 [1 or B] -> [B, C, ceil(H / s), ceil(W / s)],
    blurred with the normalised anisotropic Gaussian of size x size."""
    return torch.ops.mzsr_fast.gaussian_blur_downsample(
        x.contiguous(), theta.contiguous(), lambda1.contiguous(), lambda2.contiguous(), int(size), int(stride))
