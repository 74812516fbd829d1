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

__all__ = ["KernelNet", "orientation", "params_from_gaussian", "gaussian_from_params", "kernels_from_params", "luma",
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


def _conv(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, dilation, dilation), nn.ReLU(inplace=True))


def orientation(x: torch.Tensor, window: int = 5) -> torch.Tensor:
    """[B, 1, H, W] -> [B, 2, H, W] local gradient orientation as a doubled-angle vector.

    From the structure tensor J (products of the central-difference gradients
    gx (along columns) and gy (along rows), averaged over window x window):
    z = (Jxx - Jyy, 2 Jxy) / (Jxx + Jyy). |z| <= 1 is the coherence (1 on a
    straight edge, 0 on isotropic texture or flat ground); its angle is twice
    the gradient's, in the convention of the kernel's theta (docs/method.md
    section 2), so a kernel elongated along theta blurs most where z points
    along 2 theta.
    """
    padded = nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = 0.5 * (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2])
    gy = 0.5 * (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1])
    j = nn.functional.avg_pool2d(torch.cat([gx * gx, gy * gy, gx * gy], 1), window, 1, window // 2,
                                 count_include_pad=False)
    # The floor of the denominator makes z vanish on flat ground (x is contrast-normalised).
    return torch.stack([j[:, 0] - j[:, 1], 2 * j[:, 2]], 1) / (j[:, :1] + j[:, 1:2] + 1e-4)


class KernelNet(nn.Module):
    """LR luma -> matrix-log kernel parameters p, for direct or bicubic subsampling.

    A fully convolutional trunk at the LR's own pixel grid (no stride: blur
    and aliasing show at the finest scale; dilations widen the view to 29
    pixels) gives features f [C] and an attention weight per location
    (softmax over the image, so textured regions count and flat ones do not;
    any image size works). Two summaries, both weighted by the attention:

    - size: the mean of f, fed with the subsampling mode to an MLP that
      gives p0 and per-channel coefficients alpha [C];
    - shape: for each channel, the least-squares slope [2] of f against the
      local orientation z [2] (`orientation`): how much a feature grows on
      edges of one orientation compared with the others. An elongated kernel
      widens edges across its long axis, an isotropic one all alike.
      (p1, p2) = sum_c alpha_c slope_c, which turns with the image as the
      kernel does. Subtracting the mean orientation keeps the image's own
      dominant edge direction from reading as elongation.

    forward(x [B, 1, H, W] in [0, 1], bicubic [B] bool) -> p [B, 3].
    """

    def __init__(self, width: int = 24, features: int = 32):
        super().__init__()
        self.trunk = nn.Sequential(
            _conv(1, width), _conv(width, width), _conv(width, width, 2), _conv(width, width, 2),
            _conv(width, width, 4), _conv(width, features, 4),
        )
        self.attention = nn.Conv2d(features, 1, 1)
        self.head = nn.Sequential(nn.Linear(features + 1, 64), nn.ReLU(inplace=True), nn.Linear(64, 1 + features))

    def forward(self, x: torch.Tensor, bicubic: torch.Tensor) -> torch.Tensor:
        # Contrast normalisation: the kernel does not depend on the image's brightness or contrast.
        mean = x.mean((1, 2, 3), keepdim=True)
        std = x.std((1, 2, 3), keepdim=True)
        x = (x - mean) / (std + 1e-2)
        f = self.trunk(x).flatten(2)  # [B, C, N]
        w = torch.softmax(self.attention(f.unflatten(2, x.shape[-2:])).flatten(1), 1)  # [B, N]
        z = orientation(x).flatten(2)  # [B, 2, N]
        z = z - torch.einsum("bkn,bn->bk", z, w)[..., None]
        # The ridge keeps the slope finite where the image has edges of one orientation only.
        zz = torch.einsum("bkn,bln,bn->bkl", z, z, w) + 1e-2 * torch.eye(2, dtype=x.dtype, device=x.device)
        slope = torch.linalg.solve(zz, torch.einsum("bkn,bcn,bn->bkc", z, f, w))  # [B, 2, C]
        out = self.head(torch.cat([torch.einsum("bcn,bn->bc", f, w), bicubic.to(f.dtype)[:, None]], 1))
        return torch.cat([out[:, :1], torch.einsum("bkc,bc->bk", slope, out[:, 1:])], 1)
