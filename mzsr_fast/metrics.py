"""PSNR and SSIM as the SR papers (and the MZSR paper) report them (docs/method.md section 9).

Both take images in [0, 1], [C, H, W] or [B, C, H, W] (RGB, or one channel),
quantise them to 0..255, crop the ground truth to a multiple of scale (top
left kept) and the SR image to the same size, take MATLAB's rounded Y channel,
shave scale pixels on every border and score in float64.
"""
from __future__ import annotations

import math

import torch

from . import _checks

__all__ = ["psnr", "ssim", "psnr_ssim", "rgb_to_y", "prepare"]


def rgb_to_y(rgb255: torch.Tensor) -> torch.Tensor:
    """MATLAB rgb2ycbcr luma of [B, 3, H, W] values in 0..255, rounded: [B, H, W]."""
    r, g, b = rgb255.unbind(1)
    return torch.round(16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255)


def _luma(x: torch.Tensor, name: str) -> torch.Tensor:
    x4, _ = _checks.as_batched_image(x, name)
    if x4.shape[1] not in (1, 3):
        raise ValueError(f"{name}: expected 1 or 3 channels, got {x4.shape[1]}")
    _checks.unit_range(x4, name, stacklevel=5)
    x255 = x4.detach().to(torch.float64, copy=True).clamp_(0, 1).mul_(255).round_()
    return rgb_to_y(x255) if x4.shape[1] == 3 else x255[:, 0]


def prepare(sr: torch.Tensor, gt: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two Y images that are scored, [B, h, w] float64 on 0..255."""
    scale = _checks.integer_scale(scale)
    y_sr, y_gt = _luma(sr, "sr"), _luma(gt, "gt")
    h, w = (y_gt.shape[-2] // scale) * scale, (y_gt.shape[-1] // scale) * scale
    if y_sr.shape[-2] < h or y_sr.shape[-1] < w:
        raise ValueError(f"sr: expected at least the ground truth's size cropped to a multiple of "
                         f"scale, {_checks.size_text((h, w))}, got {_checks.size_text(y_sr.shape)}")
    if y_sr.shape[0] != y_gt.shape[0]:
        raise ValueError(f"sr: expected as many images as gt ({y_gt.shape[0]}), got {y_sr.shape[0]}")
    if h <= 2 * scale or w <= 2 * scale:
        raise ValueError(f"gt: image of {_checks.size_text((h, w))} is too small to shave {scale} pixels from "
                         f"each border")
    crop = (slice(None), slice(scale, h - scale), slice(scale, w - scale))
    return y_sr[crop], y_gt[crop]


def _psnr_of(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a - b) ** 2).flatten(1).mean(1)
    values = [math.inf if m == 0 else 10 * math.log10(255.0 ** 2 / m) for m in mse.tolist()]
    return sum(values) / len(values)


def psnr(sr: torch.Tensor, gt: torch.Tensor, scale: int) -> float:
    """Mean PSNR (dB, peak 255) over the batch."""
    return _psnr_of(*prepare(sr, gt, scale))


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """The normalised 1-D Gaussian [size] float64; the 2-D SSIM window is its outer product."""
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - size // 2) ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _window_means(maps: torch.Tensor) -> torch.Tensor:
    """Gaussian-weighted means over the 'valid' 11x11 windows, [N, H, W] ->
    [N, H - 10, W - 10]: the separable window as a pass down the columns, then
    one along the rows, each a weighted sum of 11 shifted views accumulated
    in place (float64 convolutions take a slow generic path on the CPU)."""
    g = _gaussian_1d().tolist()
    size = len(g)
    h, w = maps.shape[-2:]
    cols = maps[:, : h - size + 1] * g[0]
    for i in range(1, size):
        cols.add_(maps[:, i:h - size + 1 + i], alpha=g[i])
    out = cols[:, :, : w - size + 1] * g[0]
    for i in range(1, size):
        out.add_(cols[:, :, i:w - size + 1 + i], alpha=g[i])
    return out


def _ssim_of(a: torch.Tensor, b: torch.Tensor) -> float:
    if min(a.shape[-2:]) < 11:
        raise ValueError(f"gt: the scored region of {_checks.size_text(a.shape)} is smaller than the 11x11 SSIM "
                         f"window")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    # The map ((2 mu_a mu_b + c1)(2 cov + c2)) / ((mu_a^2 + mu_b^2 + c1)(var_a + var_b + c2))
    # needs only var_a + var_b = mean(a^2 + b^2) - mu_a^2 - mu_b^2: four window means, in place.
    mu_a, mu_b, squares, ab = _window_means(torch.cat([a, b, a * a + b * b, a * b])).split(a.shape[0])
    mu_ab = mu_a * mu_b
    mu_squares = mu_a.square_().add_(mu_b.square_())
    numerator = (2 * mu_ab + c1).mul_(ab.sub_(mu_ab).mul_(2).add_(c2))
    denominator = (mu_squares + c1).mul_(squares.sub_(mu_squares).add_(c2))
    return numerator.div_(denominator).flatten(1).mean(1).mean().item()


def ssim(sr: torch.Tensor, gt: torch.Tensor, scale: int) -> float:
    """Mean SSIM (Wang et al.: 11x11 Gaussian window, sigma 1.5, K1 0.01,
    K2 0.03, L 255) over the 'valid' window positions and the batch."""
    return _ssim_of(*prepare(sr, gt, scale))


def psnr_ssim(sr: torch.Tensor, gt: torch.Tensor, scale: int) -> tuple[float, float]:
    """(psnr(sr, gt, scale), ssim(sr, gt, scale)), preparing the Y images once."""
    a, b = prepare(sr, gt, scale)
    return _psnr_of(a, b), _ssim_of(a, b)
