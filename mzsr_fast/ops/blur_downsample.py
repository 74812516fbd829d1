"""blur_downsample and anisotropic_blur_downsample: the degradation op.

Correlation with a blur kernel under a half-sample symmetric border, then
direct subsampling (rows and columns 0, s, 2s, ...) or MATLAB bicubic
downscaling by 1/s. The blur itself ("blur at stride s") is what the backends
implement; bicubic mode is blur at stride 1 followed by imresize.

Backends (mzsr_fast.dispatch): "cpu" and "cuda" (mzsr_fast._C; schemas in
csrc/ops/blur_downsample.cpp), "triton" (the launchers of
mzsr_fast.kernels.blur_downsample, imported at their first call) and "torch"
(the reference, mzsr_fast.reference.blur_downsample). A fused backend is three
custom ops of the schemas in _SCHEMAS, named mzsr_fast::<name> (C++/CUDA) and
mzsr_fast::<name>_triton (Triton, defined here):

    blur_downsample           x [B, C, H, W], kernel [Bk, k, k] (Bk in {1, B},
                              k odd), stride -> [B, C, ceil(H / s), ceil(W / s)]
    blur_downsample_backward  (grad_x, grad_kernel) of a grad_out, each an
                              empty tensor when not asked for
    gaussian_blur_downsample  blur_downsample with the Gaussian of theta,
                              lambda1, lambda2 [Bk] computed inside the kernel

Both fused backends get the same fake kernels (torch.compile) and autograd
from _register. Derivatives of every order, on every backend: the blur is
bilinear in x and the kernel, so the backward op's own backward is made of the
two ops again (exact, and itself differentiable), and the Gaussian op's
parameter gradients go through gaussian_weights under torch's autograd. So
create_graph=True gives the numbers of the "torch" backend.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from .. import _checks, _extension, dispatch
from ..gaussian import check_kernel_size, gaussian_weights
from ..reference import blur_downsample as reference
from ..resize import imresize

__all__ = ["blur_downsample", "anisotropic_blur_downsample", "MODES"]

MODES = ("direct", "bicubic")


# ---------------------------------------------------------------------------
# Argument checks (once, at the public functions)
# ---------------------------------------------------------------------------

def _check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")


def _check_kernel(kernel, batch: int, x: torch.Tensor) -> torch.Tensor:
    """kernel [k, k] or [B, k, k] -> [1 or B, k, k] in x's dtype and device."""
    if not isinstance(kernel, torch.Tensor):
        raise TypeError(f"kernel: expected a torch.Tensor, got {type(kernel).__name__}")
    if kernel.dim() not in (2, 3) or kernel.shape[-1] != kernel.shape[-2] or kernel.shape[-1] % 2 == 0 \
            or kernel.numel() == 0:
        raise ValueError(f"kernel: expected [k, k] or [B, k, k] with k odd, got shape {tuple(kernel.shape)}")
    if kernel.dim() == 3 and kernel.shape[0] != batch:
        raise ValueError(f"kernel: expected one kernel per image ({batch}), got {kernel.shape[0]}")
    if not kernel.is_floating_point():
        raise TypeError(f"kernel: expected a floating-point tensor, got dtype {kernel.dtype}")
    _checks.same_device(x, kernel, "x", "kernel")
    if not torch.compiler.is_compiling():
        _checks.finite_on_host(kernel, "kernel")
    kernel = kernel.to(x.dtype)
    return kernel if kernel.dim() == 3 else kernel.unsqueeze(0)


def _check_gaussian_params(theta, lambda1, lambda2, batch: int, x: torch.Tensor):
    """Numbers, 0-D, [1] or [B] tensors -> three [1] or [B] tensors of one float
    dtype (float64 when x or a parameter tensor is float64, else float32)."""
    values = ((theta, "theta"), (lambda1, "lambda1"), (lambda2, "lambda2"))
    for value, name in values:
        if isinstance(value, torch.Tensor):
            if not value.is_floating_point():
                raise TypeError(f"{name}: expected a number or a floating-point tensor, got dtype {value.dtype}")
            if value.dim() > 1 or (value.dim() == 1 and value.shape[0] not in (1, batch)):
                raise ValueError(f"{name}: expected a number, a 0-D tensor, [1] or [B] (B = {batch}), "
                                 f"got shape {tuple(value.shape)}")
            _checks.same_device(x, value, "x", name)
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name}: expected a number or a floating-point tensor, got {type(value).__name__}")
    tensors = [v for v, _ in values if isinstance(v, torch.Tensor)]
    dtype = torch.float64 if x.dtype == torch.float64 or any(t.dtype == torch.float64 for t in tensors) \
        else torch.float32
    params = [v.to(dtype) if isinstance(v, torch.Tensor) else torch.tensor(float(v), dtype=dtype, device=x.device)
              for v, _ in values]
    n = max(p.numel() for p in params)
    params = [p.reshape(-1).expand(n) for p in params]
    # Value checks where they need no device sync (_checks.finite_on_host): every
    # parameter when x is on the CPU; on a GPU the Python numbers, as the kernel
    # will see them, made on the host (GPU tensors are not checked).
    if not torch.compiler.is_compiling():
        for p, (v, name) in zip(params, values):
            if x.device.type == "cpu":
                host = p
            elif not isinstance(v, torch.Tensor):
                host = torch.tensor(float(v), dtype=dtype)
            else:
                continue
            _checks.finite_tensor(host, name)
            if name != "theta" and not bool((host > 0).all()):
                raise ValueError(f"{name}: expected variances > 0, got a minimum of {host.min().item()}")
    return params


# ---------------------------------------------------------------------------
# The fused ops: schemas, fake kernels and autograd of every backend
# ---------------------------------------------------------------------------

_SCHEMAS = {
    "blur_downsample": "(Tensor x, Tensor kernel, int stride) -> Tensor",
    "blur_downsample_backward": "(Tensor grad_out, Tensor x, Tensor kernel, int stride, bool need_x, "
                                "bool need_kernel) -> (Tensor, Tensor)",
    "gaussian_blur_downsample": "(Tensor x, Tensor theta, Tensor lambda1, Tensor lambda2, int size, "
                                "int stride) -> Tensor",
}


class _Ops(NamedTuple):
    """The three ops of one fused backend, in the order of _SCHEMAS
    (OpOverloads or CustomOpDefs: both are called and registered alike)."""
    blur: Callable
    backward: Callable
    gaussian: Callable


def _out_hw(x: torch.Tensor, stride: int):
    h, w = x.shape[-2:]
    return (h + stride - 1) // stride, (w + stride - 1) // stride


def _blur_fake(x, kernel, stride):
    torch._check(x.dim() == 4, lambda: f"blur_downsample: x must be [B, C, H, W], got {tuple(x.shape)}")
    torch._check(kernel.dim() == 3, lambda: f"blur_downsample: kernel must be [Bk, k, k], got {tuple(kernel.shape)}")
    torch._check(stride >= 1, lambda: f"blur_downsample: stride must be >= 1, got {stride}")
    return x.new_empty((x.shape[0], x.shape[1], *_out_hw(x, stride)))


def _backward_fake(grad_out, x, kernel, stride, need_x, need_kernel):
    grad_x = x.new_empty(x.shape) if need_x else x.new_empty((0,))
    grad_kernel = kernel.new_empty(kernel.shape) if need_kernel else kernel.new_empty((0,))
    return grad_x, grad_kernel


def _gaussian_fake(x, theta, lambda1, lambda2, size, stride):
    torch._check(x.dim() == 4, lambda: f"gaussian_blur_downsample: x must be [B, C, H, W], got {tuple(x.shape)}")
    torch._check(size % 2 == 1, lambda: f"gaussian_blur_downsample: size must be odd, got {size}")
    torch._check(stride >= 1, lambda: f"gaussian_blur_downsample: stride must be >= 1, got {stride}")
    return x.new_empty((x.shape[0], x.shape[1], *_out_hw(x, stride)))


def _blur_setup_context(ctx, inputs, output):
    x, kernel, stride = inputs
    ctx.save_for_backward(x, kernel)
    ctx.stride = stride


def _backward_setup_context(ctx, inputs, output):
    grad_out, x, kernel, stride, need_x, need_kernel = inputs
    ctx.save_for_backward(grad_out, x, kernel)
    ctx.stride, ctx.need_x, ctx.need_kernel = stride, need_x, need_kernel


def _gaussian_setup_context(ctx, inputs, output):
    x, theta, lambda1, lambda2, size, stride = inputs
    ctx.save_for_backward(x, theta, lambda1, lambda2)
    ctx.size, ctx.stride = size, stride


def _register(ops: _Ops) -> None:
    """Fake kernels and autograd of one fused backend's ops."""

    def blur_backward(ctx, grad):
        x, kernel = ctx.saved_tensors
        need_x, need_kernel = ctx.needs_input_grad[:2]
        grad_x, grad_kernel = ops.backward(grad, x, kernel, ctx.stride, need_x, need_kernel)
        return (grad_x if need_x else None), (grad_kernel if need_kernel else None), None

    def backward_backward(ctx, grad_grad_x, grad_grad_kernel):
        # With Bx(g, w) and Bw(g, x) the two adjoints the backward op computes
        # (the blur is linear in x and in w), the cotangents a of grad_x =
        # Bx(g, w) and b of grad_kernel = Bw(g, x) give
        #   <a, Bx(g, w)> + <b, Bw(g, x)> = <g, blur(a, w)> + <g, blur(x, b)>,
        # so d/dg = blur(a, w) + blur(x, b), d/dx = Bx(g, b), d/dw = Bw(g, a).
        grad_out, x, kernel = ctx.saved_tensors
        need_grad_out, need_x, need_kernel = ctx.needs_input_grad[:3]
        a = grad_grad_x if ctx.need_x else None  # an output that was not computed is empty
        b = grad_grad_kernel if ctx.need_kernel else None
        grad_grad_out = None
        if need_grad_out and a is not None:
            grad_grad_out = ops.blur(a, kernel, ctx.stride)
        if need_grad_out and b is not None:
            term = ops.blur(x, b, ctx.stride)
            grad_grad_out = term if grad_grad_out is None else grad_grad_out + term
        grad_x = ops.backward(grad_out, x, b, ctx.stride, True, False)[0] if need_x and b is not None else None
        grad_kernel = ops.backward(grad_out, a, kernel, ctx.stride, False, True)[1] \
            if need_kernel and a is not None else None
        return grad_grad_out, grad_x, grad_kernel, None, None, None

    def gaussian_backward(ctx, grad):
        x, *params = ctx.saved_tensors
        need_x, *need_params = ctx.needs_input_grad[:4]
        create_graph = torch.is_grad_enabled()
        # The kernel rebuilt from the parameters (gaussian_weights, the formula
        # of gaussian_kernel without its data-dependent checks) under autograd:
        # from the saved parameters themselves when the gradients will be
        # differentiated again, else from detached copies (a graph of its own,
        # freed at once). Like the CPU forward, it is computed in float64 and
        # rounded to the parameters' dtype (float32 at least).
        dtype = functools.reduce(torch.promote_types, (p.dtype for p in params), torch.float32)
        with torch.enable_grad():
            sources = [p if create_graph else p.detach().requires_grad_(need) for p, need in zip(params, need_params)]
            kernel = gaussian_weights(*(s.double() for s in sources), size=ctx.size).to(dtype)
        grad_x, grad_kernel = ops.backward(grad, x, kernel if create_graph else kernel.detach(), ctx.stride,
                                           need_x, any(need_params))
        wanted = [s for s, need in zip(sources, need_params) if need]
        found = iter(torch.autograd.grad(kernel, wanted, grad_kernel, create_graph=create_graph) if wanted else ())
        return (grad_x if need_x else None), *(next(found) if need else None for need in need_params), None, None

    for op, fake in zip(ops, (_blur_fake, _backward_fake, _gaussian_fake), strict=True):
        torch.library.register_fake(op, fake)
    torch.library.register_autograd(ops.blur, blur_backward, setup_context=_blur_setup_context)
    torch.library.register_autograd(ops.backward, backward_backward, setup_context=_backward_setup_context)
    torch.library.register_autograd(ops.gaussian, gaussian_backward, setup_context=_gaussian_setup_context)


_TRITON = _Ops(*(torch.library.custom_op(f"mzsr_fast::{name}_triton",
                                         dispatch.triton_launcher("blur_downsample", name),
                                         mutates_args=(), schema=schema)
                 for name, schema in _SCHEMAS.items()))
_register(_TRITON)
_NATIVE = _Ops(*(_extension.native_op(name) for name in _SCHEMAS))
if None in _NATIVE:  # no extension, or one built from older sources (dispatch reports it unavailable)
    _NATIVE = None
else:
    _register(_NATIVE)

# backend name -> its ops (dispatch.choose picks only available backends)
_FUSED = {"cpu": _NATIVE, "cuda": _NATIVE, "triton": _TRITON}


# ---------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------

def _reference_blur(x, kernel3, stride):
    """reference.blur in the fused backends' arithmetic: float32 (float64 for
    float64 x) with the kernel as given, the result rounded once to x's dtype."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    kernel = kernel3 if kernel3.shape[0] > 1 else kernel3[0]
    return reference.blur(x.to(compute), kernel.to(compute), stride).to(x.dtype)


def _apply(x4, blur_fn, scale: int, mode: str):
    if mode == "direct":
        return blur_fn(scale)
    h, w = x4.shape[-2:]
    return imresize(blur_fn(1), scale=1.0 / scale, size=(math.ceil(h / scale), math.ceil(w / scale)))


def blur_downsample(x: torch.Tensor, kernel: torch.Tensor, scale: int, mode: str = "direct",
                    backend: str | None = None) -> torch.Tensor:
    """Blur with a symmetric border, then subsample by an integer scale.

    x: [C, H, W] or [B, C, H, W]; kernel: [k, k] (shared) or [B, k, k] (per
    image), k odd; mode "direct" (rows/columns 0, s, 2s, ...) or "bicubic"
    (MATLAB imresize by 1/s). Returns [(B,) C, ceil(H / s), ceil(W / s)].
    Differentiable with respect to x and kernel, to any order.
    """
    x4, was_3d = _checks.as_batched_image(x, "x")
    scale = _checks.integer_scale(scale)
    _check_mode(mode)
    kernel3 = _check_kernel(kernel, x4.shape[0], x4)
    backend = dispatch.choose("blur_downsample", x4.device, backend)
    if backend == "torch":
        blur = functools.partial(_reference_blur, x4, kernel3)
    else:
        blur = functools.partial(_FUSED[backend].blur, x4.contiguous(), kernel3.contiguous())
    out = _apply(x4, blur, scale, mode)
    return out.squeeze(0) if was_3d else out


def anisotropic_blur_downsample(x: torch.Tensor, theta, lambda1, lambda2, size: int, scale: int,
                                mode: str = "direct", backend: str | None = None) -> torch.Tensor:
    """blur_downsample with the anisotropic Gaussian kernel of docs/method.md section 2,
    computed inside the kernel from its parameters (no [B, k, k] tensor on the
    fused backends).

    x: [C, H, W] or [B, C, H, W]; theta (radians), lambda1, lambda2
    (variances > 0): numbers, 0-D, [1] (shared) or [B] (per image) tensors;
    size: odd kernel size; scale: integer >= 1; mode "direct" or "bicubic".
    Equals blur_downsample(x, gaussian_kernel(theta, lambda1, lambda2, size),
    scale, mode) to float rounding. Returns [(B,) C, ceil(H / s), ceil(W / s)].
    Differentiable with respect to x, theta, lambda1 and lambda2, to any order.
    """
    x4, was_3d = _checks.as_batched_image(x, "x")
    scale = _checks.integer_scale(scale)
    _check_mode(mode)
    size = check_kernel_size(size)
    theta, lambda1, lambda2 = _check_gaussian_params(theta, lambda1, lambda2, x4.shape[0], x4)
    backend = dispatch.choose("blur_downsample", x4.device, backend)
    if backend == "torch":
        blur = functools.partial(_reference_blur, x4, gaussian_weights(theta, lambda1, lambda2, size))
    else:
        blur = functools.partial(_FUSED[backend].gaussian, x4.contiguous(), theta.contiguous(),
                                 lambda1.contiguous(), lambda2.contiguous(), size)
    out = _apply(x4, blur, scale, mode)
    return out.squeeze(0) if was_3d else out
