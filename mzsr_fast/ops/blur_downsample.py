"""blur_downsample and anisotropic_blur_downsample: the degradation op.

Correlation with a blur kernel under a half-sample symmetric border, then
direct subsampling (rows and columns 0, s, 2s, ...) or MATLAB bicubic
downscaling by 1/s. The blur itself ("blur at stride s") is what the backends
implement; bicubic mode is blur at stride 1 followed by imresize.
"""
from __future__ import annotations

import importlib
import math

import torch

from .. import _checks, dispatch
from ..gaussian import check_kernel_size, gaussian_weights
from ..reference import blur_downsample as reference
from ..resize import imresize

__all__ = ["blur_downsample", "anisotropic_blur_downsample", "MODES"]

MODES = ("direct", "bicubic")


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


def _blur_native(x, kernel, stride):
    from . import blur_downsample_native
    return blur_downsample_native.blur(x, kernel, stride)


def _blur_triton(x, kernel, stride):
    return importlib.import_module(dispatch.TRITON_MODULES["blur_downsample"]).blur(x, kernel, stride)


def _blur_torch(x, kernel, stride):
    return reference.blur(x, kernel if kernel.shape[0] > 1 else kernel[0], stride)


# backend name -> blur(x [B, C, H, W], kernel [1 or B, k, k], stride) -> [B, C, ceil(H/s), ceil(W/s)]
_BLUR = {"cpu": _blur_native, "cuda": _blur_native, "triton": _blur_triton, "torch": _blur_torch}


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
    Differentiable with respect to x and kernel.
    """
    x4, was_3d = _checks.as_batched_image(x, "x")
    scale = _checks.integer_scale(scale)
    _check_mode(mode)
    kernel3 = _check_kernel(kernel, x4.shape[0], x4)
    blur = _BLUR[dispatch.choose("blur_downsample", x4.device, backend)]
    out = _apply(x4, lambda stride: blur(x4, kernel3, stride), scale, mode)
    return out.squeeze(0) if was_3d else out


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


def _gaussian_native(x, theta, lambda1, lambda2, size, stride):
    from . import blur_downsample_native
    return blur_downsample_native.gaussian_blur(x, theta, lambda1, lambda2, size, stride)


def _gaussian_triton(x, theta, lambda1, lambda2, size, stride):
    return importlib.import_module(dispatch.TRITON_MODULES["blur_downsample"]).gaussian_blur(
        x, theta, lambda1, lambda2, size, stride)


def _gaussian_torch(x, theta, lambda1, lambda2, size, stride):
    return _blur_torch(x, gaussian_weights(theta, lambda1, lambda2, size).to(x.dtype), stride)


# backend name -> blur with the Gaussian of theta, lambda1, lambda2 [1 or B] at stride
_GAUSSIAN = {"cpu": _gaussian_native, "cuda": _gaussian_native, "triton": _gaussian_triton,
             "torch": _gaussian_torch}


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
    Differentiable with respect to x, theta, lambda1 and lambda2.
    """
    x4, was_3d = _checks.as_batched_image(x, "x")
    scale = _checks.integer_scale(scale)
    _check_mode(mode)
    size = check_kernel_size(size)
    theta, lambda1, lambda2 = _check_gaussian_params(theta, lambda1, lambda2, x4.shape[0], x4)
    blur = _GAUSSIAN[dispatch.choose("blur_downsample", x4.device, backend)]
    out = _apply(x4, lambda stride: blur(x4, theta, lambda1, lambda2, size, stride), scale, mode)
    return out.squeeze(0) if was_3d else out
