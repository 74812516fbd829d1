"""The learned kernel estimator's network and its kernel parametrisation.

A Gaussian kernel's covariance S = R(theta) diag(lambda1, lambda2) R(theta)^T
is represented by its matrix logarithm, written as three unconstrained numbers

    p = (p0, p1, p2),  log S = p0 I + [[p1, p2], [p2, -p1]],

so that lambda1,2 = exp(p0 +- r) with r = sqrt(p1^2 + p2^2) and
(cos 2 theta, sin 2 theta) = (p1, p2) / r. This map is one-to-one and smooth:
theta modulo pi and the meaningless theta of an isotropic kernel (r = 0) need no
special case, so p can be averaged and regressed with a squared error.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .gaussian import gaussian_weights

__all__ = ["KernelNet", "params_from_gaussian", "gaussian_from_params", "kernels_from_params", "luma",
           "LAMBDA_RANGE"]

# Variances the estimator can answer with: a little beyond the 0.2..5 it was trained on.
LAMBDA_RANGE = (0.1, 8.0)
# ITU-R BT.601 luma weights: the blur acts on each channel alike, so one channel suffices.
LUMA = (0.299, 0.587, 0.114)


def luma(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] RGB (or [B, 1, H, W]) -> [B, 1, H, W] luma."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def params_from_gaussian(theta: torch.Tensor, lambda1: torch.Tensor, lambda2: torch.Tensor) -> torch.Tensor:
    """[...] theta, lambda1, lambda2 -> p [..., 3] (matrix-log parametrisation)."""
    p0 = 0.5 * (torch.log(lambda1) + torch.log(lambda2))
    r = 0.5 * (torch.log(lambda1) - torch.log(lambda2))
    return torch.stack([p0, r * torch.cos(2 * theta), r * torch.sin(2 * theta)], -1)


def gaussian_from_params(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """p [..., 3] -> (theta in [0, pi), lambda1 >= lambda2), each [...], variances clamped to LAMBDA_RANGE."""
    lo, hi = math.log(LAMBDA_RANGE[0]), math.log(LAMBDA_RANGE[1])
    r = torch.sqrt(p[..., 1] ** 2 + p[..., 2] ** 2 + 1e-12)
    lambda1 = torch.exp((p[..., 0] + r).clamp(lo, hi))
    lambda2 = torch.exp((p[..., 0] - r).clamp(lo, hi))
    theta = torch.remainder(0.5 * torch.atan2(p[..., 2], p[..., 1]), math.pi)
    return theta, lambda1, lambda2


def kernels_from_params(p: torch.Tensor, size: int = 21) -> torch.Tensor:
    """p [..., 3] -> [..., size, size] kernels (differentiable)."""
    return gaussian_weights(*gaussian_from_params(p), size)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU(inplace=True))


class KernelNet(nn.Module):
    """LR luma -> matrix-log kernel parameters p, for direct or bicubic subsampling.

    A fully convolutional trunk (two full-resolution layers keep the finest
    detail, where blur and aliasing show, then two stride-2 stages) gives a
    feature vector and an attention logit per location; features are averaged
    with softmax(attention) weights over the whole image, so textured regions
    count and flat ones do not, and any image size works. A small head maps
    the pooled features and the subsampling mode to p.

    forward(x [B, 1, H, W] in [0, 1], bicubic [B] bool) -> p [B, 3].
    """

    def __init__(self, width: int = 32):
        super().__init__()
        self.trunk = nn.Sequential(
            _conv(1, 16), _conv(16, 16),
            _conv(16, width, 2), _conv(width, width), _conv(width, width),
            _conv(width, 2 * width, 2), _conv(2 * width, 2 * width), _conv(2 * width, 2 * width),
        )
        self.attention = nn.Conv2d(2 * width, 1, 1)
        self.head = nn.Sequential(nn.Linear(2 * width + 1, 64), nn.ReLU(inplace=True), nn.Linear(64, 3))

    def forward(self, x: torch.Tensor, bicubic: torch.Tensor) -> torch.Tensor:
        # Contrast normalisation: the kernel does not depend on the image's brightness or contrast.
        mean = x.mean((1, 2, 3), keepdim=True)
        std = x.std((1, 2, 3), keepdim=True)
        f = self.trunk((x - mean) / (std + 1e-2))
        w = torch.softmax(self.attention(f).flatten(1), 1)  # [B, h*w]
        pooled = torch.einsum("bcn,bn->bc", f.flatten(2), w)
        return self.head(torch.cat([pooled, bicubic.to(pooled.dtype)[:, None]], 1))
