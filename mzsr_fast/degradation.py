"""The degradation model of MZSR (SPEC section 3) and the paper's benchmark kernels."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .gaussian import gaussian_kernel
from .ops.blur_downsample import blur_downsample

__all__ = ["Preset", "preset", "PRESETS", "degrade"]


@dataclass(frozen=True)
class Preset:
    """A benchmark kernel of the paper: Gaussian parameters and subsampling mode."""

    name: str
    theta: float
    lambda1: float
    lambda2: float
    mode: str
    size: int = 21

    @property
    def kernel(self) -> torch.Tensor:
        """[size, size] float64 kernel."""
        return gaussian_kernel(torch.tensor(self.theta, dtype=torch.float64),
                               self.lambda1, self.lambda2, self.size)


PRESETS = {
    p.name: p for p in (
        Preset("g_d_0.2", 0.0, 0.2, 0.2, "direct"),
        Preset("g_d_2.0", 0.0, 2.0, 2.0, "direct"),
        Preset("g_d_ani", -0.5, 4.0, 1.0, "direct"),
        Preset("g_b_1.3", 0.0, 1.3, 1.3, "bicubic"),
    )
}


def preset(name: str) -> Preset:
    """The paper's benchmark kernels: "g_d_0.2", "g_d_2.0", "g_d_ani", "g_b_1.3"."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"name: unknown kernel preset {name!r}; expected one of {sorted(PRESETS)}") from None


def degrade(x: torch.Tensor, kernel: torch.Tensor, scale: int, mode: str = "direct",
            noise_sigma: float = 0.0, generator: torch.Generator | None = None,
            backend: str | None = None) -> torch.Tensor:
    """HR -> LR: blur_downsample, optional Gaussian noise, clip to [0, 1].

    x: [C, H, W] or [B, C, H, W]; kernel: [k, k] or [B, k, k];
    returns [(B,) C, ceil(H / scale), ceil(W / scale)].
    """
    y = blur_downsample(x, kernel, scale, mode=mode, backend=backend)
    if isinstance(noise_sigma, bool) or not isinstance(noise_sigma, (int, float)) \
            or not math.isfinite(noise_sigma) or noise_sigma < 0:
        raise ValueError(f"noise_sigma: expected a number >= 0, got {noise_sigma!r}")
    if noise_sigma > 0:
        noise = torch.randn(y.shape, generator=generator, dtype=y.dtype,
                            device=generator.device if generator is not None else y.device)
        y = y + noise_sigma * noise.to(y.device)
    return y.clamp(0, 1)
