"""The degradation model of MZSR (docs/method.md section 3) and the paper's benchmark kernels."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from . import _checks
from .gaussian import gaussian_kernel
from .ops.blur_downsample import blur_downsample

__all__ = ["Preset", "preset", "PRESETS", "degrade", "load_kernel"]


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
            backend: str | None = None, *, check: bool = True) -> torch.Tensor:
    """HR -> LR: blur_downsample, optional Gaussian noise, clip to [0, 1].

    x: [C, H, W] or [B, C, H, W], an image in [0, 1]; kernel: [k, k] or
    [B, k, k]; returns [(B,) C, ceil(H / scale), ceil(W / scale)].
    check: look at x once blur_downsample has taken it (one pass; NaN or
    infinity is a ValueError, values far outside [0, 1], such as 8-bit ones,
    warn, the clip flattening them); callers that have checked x already
    pass False.
    """
    y = blur_downsample(x, kernel, scale, mode=mode, backend=backend)
    if check and not torch.compiler.is_compiling():
        _checks.unit_range(x, "x", require_finite=True)
    check_noise_sigma(noise_sigma)
    if noise_sigma > 0:
        noise = torch.randn(y.shape, generator=generator, dtype=y.dtype,
                            device=generator.device if generator is not None else y.device)
        y = y + noise_sigma * noise.to(y.device)
    return y.clamp(0, 1)


def check_noise_sigma(noise_sigma, name: str = "noise_sigma") -> None:
    """degrade's noise: a finite number >= 0."""
    if isinstance(noise_sigma, bool) or not isinstance(noise_sigma, (int, float)) \
            or not math.isfinite(noise_sigma) or noise_sigma < 0:
        raise ValueError(f"{name}: expected a number >= 0, got {noise_sigma!r}")


# How far from 1 a loaded kernel's sum may be before load_kernel normalises it
# (float32 files sum to 1 within about 1e-7).
KERNEL_SUM_TOLERANCE = 1e-3


def load_kernel(spec, size: int = 21) -> tuple[torch.Tensor, str | None]:
    """A blur kernel from what a user can type or pass: (kernel [k, k] float64, mode).

    spec: a [k, k] tensor or array, a preset name ("g_d_2.0"), a (theta,
    lambda1, lambda2) triple or the string "theta,lambda1,lambda2" (a Gaussian
    of the given size), or a .npy / .mat file (MATLAB variable "kernel").
    mode is the preset's subsampling mode, None where spec does not say.
    A blur kernel's weights are finite, non-negative and not all zero:
    anything else is a ValueError naming the file it came from. Weights whose
    sum is off 1 by more than KERNEL_SUM_TOLERANCE are divided by it, with a
    warning.
    """
    import os

    import numpy as np

    mode, source = None, ""
    if isinstance(spec, str) and spec in PRESETS:
        p = PRESETS[spec]
        return p.kernel, p.mode
    if isinstance(spec, str) and spec.count(",") == 2 and not os.path.exists(spec):
        try:
            spec = tuple(float(v) for v in spec.split(","))
        except ValueError:
            raise ValueError(f"kernel: expected 'theta,lambda1,lambda2' as three numbers, got {spec!r}") from None
    if isinstance(spec, (tuple, list)) and len(spec) == 3 and all(isinstance(v, (int, float)) for v in spec):
        theta, lambda1, lambda2 = spec
        kernel = gaussian_kernel(torch.tensor(float(theta), dtype=torch.float64), lambda1, lambda2, size)
        return kernel, mode
    if isinstance(spec, (str, os.PathLike)):
        path = os.fspath(spec)
        source = f" in {path}"
        if not os.path.isfile(path):
            raise ValueError(f"kernel: {path!r} is neither a preset ({', '.join(PRESETS)}), "
                             f"'theta,lambda1,lambda2' nor an existing .npy/.mat file")
        if path.endswith(".npy"):
            try:
                spec = np.load(path, allow_pickle=False)
            except ValueError as error:
                raise ValueError(f"kernel: {path}: not a readable .npy array ({error})") from None
        elif path.endswith(".mat"):
            try:
                from scipy.io import loadmat
            except ImportError:
                raise ValueError(f"kernel: reading {path} needs scipy (pip install scipy)") from None
            try:
                variables = loadmat(path)
            except Exception as error:  # scipy's MatReadError and the errors of damaged files
                raise ValueError(f"kernel: {path}: not a readable MATLAB file ({error})") from None
            if "kernel" not in variables:
                held = sorted(k for k in variables if not k.startswith("__"))
                raise ValueError(f"kernel: {path}: expected a MATLAB file with a variable 'kernel', it holds "
                                 f"{', '.join(held) or 'no variables'}")
            spec = variables["kernel"]
        else:
            raise ValueError(f"kernel: {path}: expected a .npy or .mat file")
    if not isinstance(spec, (torch.Tensor, np.ndarray, list, tuple)):
        raise ValueError(f"kernel: expected a preset name, 'theta,lambda1,lambda2', a (theta, lambda1, lambda2) "
                         f"triple, a [k, k] tensor or array or a .npy/.mat path, got {type(spec).__name__}")
    try:
        kernel = torch.as_tensor(np.asarray(spec) if not isinstance(spec, torch.Tensor) else spec)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"kernel: expected a [k, k] array of numbers, got {spec!r}") from None
    if kernel.is_complex() or kernel.dtype == torch.bool:
        raise ValueError(f"kernel: expected real numbers, got dtype {kernel.dtype}{source}")
    if kernel.dim() != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] % 2 == 0:
        raise ValueError(f"kernel: expected a square kernel of odd size, got shape {tuple(kernel.shape)}{source}")
    kernel = kernel.to(torch.float64)
    if not bool(torch.isfinite(kernel).all()):
        raise ValueError(f"kernel: expected finite values, got NaN or infinity{source}")
    negative = int((kernel < 0).sum())
    if negative:
        raise ValueError(f"kernel: expected non-negative weights (a blur kernel), got {negative} negative of "
                         f"{kernel.numel()} (the smallest {float(kernel.min()):.4g}){source}")
    total = float(kernel.sum())
    if total < 1e-12:
        raise ValueError(f"kernel: expected weights with a positive sum, got {total:.4g}{source}")
    if abs(total - 1) > KERNEL_SUM_TOLERANCE:  # a blur keeps the image's brightness
        warnings.warn(f"kernel: weights summing to {total:.6g}{source}; divided by their sum", UserWarning,
                      stacklevel=2)
        kernel = kernel / total
    return kernel, mode
