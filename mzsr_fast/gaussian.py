"""Anisotropic Gaussian blur kernels (docs/method.md section 2).

k(x, y) ~ exp(-1/2 [x y] S^-1 [x y]^T) with S = R(theta) diag(lambda1, lambda2)
R(theta)^T; lambda1, lambda2 are variances. x is the column offset and y the
row offset from the kernel centre; offsets are j - (size / 2 - 0.5).
"""
from __future__ import annotations

import math

import torch

from . import _checks

__all__ = ["gaussian_kernel", "gaussian_weights", "sample_kernel_params", "check_kernel_size"]


def _as_tensor(value, name: str, like: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            value = value.to(torch.get_default_dtype())
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number or a floating-point tensor, got {type(value).__name__}")
    if like is not None:
        return torch.tensor(float(value), dtype=like.dtype, device=like.device)
    return torch.tensor(float(value), dtype=torch.get_default_dtype())


def check_kernel_size(size, name: str = "size") -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise ValueError(f"{name}: expected an odd positive integer kernel size, got {size!r}")
    return size


def gaussian_kernel(theta, lambda1, lambda2, size: int = 15) -> torch.Tensor:
    """Anisotropic Gaussian blur kernels, normalised to sum 1.

    theta (radians), lambda1, lambda2 (variances, > 0): numbers or tensors of
    any broadcastable shapes [...]. Returns [..., size, size] in the promoted
    dtype of the parameters (Python numbers: the default dtype). Differentiable
    with respect to all three parameters.
    """
    check_kernel_size(size)
    tensors = [p for p in (theta, lambda1, lambda2) if isinstance(p, torch.Tensor)]
    like = tensors[0] if tensors else None
    theta = _as_tensor(theta, "theta", like)
    lambda1 = _as_tensor(lambda1, "lambda1", like)
    lambda2 = _as_tensor(lambda2, "lambda2", like)
    for value, name in ((theta, "theta"), (lambda1, "lambda1"), (lambda2, "lambda2")):
        _checks.finite_tensor(value, name)
    for value, name in ((lambda1, "lambda1"), (lambda2, "lambda2")):
        if not bool((value > 0).all()):
            raise ValueError(f"{name}: expected variances > 0, got a minimum of {value.min().item()}")
    dtype = torch.promote_types(torch.promote_types(theta.dtype, lambda1.dtype), lambda2.dtype)
    theta, lambda1, lambda2 = torch.broadcast_tensors(theta.to(dtype), lambda1.to(dtype), lambda2.to(dtype))
    return gaussian_weights(theta, lambda1, lambda2, size)


def gaussian_weights(theta: torch.Tensor, lambda1: torch.Tensor, lambda2: torch.Tensor,
                     size: int) -> torch.Tensor:
    """gaussian_kernel without argument checks, for code that must trace with
    fake tensors (backward formulas, torch.compile): [...] tensors of one
    dtype and shape -> [..., size, size]."""
    offsets = torch.arange(size, dtype=theta.dtype, device=theta.device) - (size / 2 - 0.5)
    y = offsets.view(size, 1)  # row offset
    x = offsets.view(1, size)  # column offset
    c, s = torch.cos(theta)[..., None, None], torch.sin(theta)[..., None, None]
    l1, l2 = lambda1[..., None, None], lambda2[..., None, None]
    # S = [[a, b], [b, d]]; S^-1 = [[d, -b], [-b, a]] / (l1 l2).
    a = c * c * l1 + s * s * l2
    b = c * s * (l1 - l2)
    d = s * s * l1 + c * c * l2
    quadratic = (d * x * x - 2 * b * x * y + a * y * y) / (l1 * l2)
    k = torch.exp(-0.5 * quadratic)
    return k / k.sum(dim=(-2, -1), keepdim=True)


def sample_kernel_params(n: int, scale: float, generator: torch.Generator | None = None,
                         device=None, dtype=None, min_variance: float = 1.0):
    """Draw n kernels from the meta-training distribution (docs/method.md section 2).

    theta ~ U[0, pi), lambda1 ~ U[m, 2.5 scale], lambda2 ~ U[m, lambda1], m =
    min_variance (1, the paper's; less takes in sharper kernels, down to
    g_d_0.2's 0.2). Returns (theta, lambda1, lambda2), each [n].
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive integer, got {n!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 1:
        raise ValueError(f"scale: expected a number >= 1, got {scale!r}")
    if isinstance(min_variance, bool) or not isinstance(min_variance, (int, float)) \
            or not 0 < min_variance < 2.5 * scale:
        raise ValueError(f"min_variance: expected a number in (0, {2.5 * scale:g}) (2.5 scale), got {min_variance!r}")
    dtype = dtype or torch.get_default_dtype()
    u = torch.rand(3, n, generator=generator, dtype=dtype,
                   device=generator.device if generator is not None else "cpu")
    theta = math.pi * u[0]
    lambda1 = min_variance + (2.5 * scale - min_variance) * u[1]
    lambda2 = min_variance + (lambda1 - min_variance) * u[2]
    out = (theta, lambda1, lambda2)
    return tuple(t.to(device) for t in out) if device is not None else out
