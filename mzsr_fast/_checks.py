"""Argument checks shared by the public functions.

Each check raises ValueError/TypeError with a message that names the argument
and says what was expected, so a user never has to read a stack of kernel code
to learn what they passed wrong.
"""
from __future__ import annotations

import math
import numbers
import warnings

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def as_batched_image(x, name: str = "x") -> tuple[torch.Tensor, bool]:
    """Accept an image [C, H, W] or batch [B, C, H, W]; return it 4-D.

    Returns (x4, was_3d) so the caller can give a 3-D answer back.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in (3, 4):
        raise ValueError(
            f"{name}: expected an image [C, H, W] or a batch [B, C, H, W], "
            f"got a {x.dim()}-D tensor of shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty image, got shape {tuple(x.shape)}")
    return (x.unsqueeze(0), True) if x.dim() == 3 else (x, False)


def integer_scale(scale, name: str = "scale") -> int:
    """An integer scale factor >= 1 (floats like 2.0 are accepted)."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"{name}: expected an integer >= 1, got {scale!r}")
    if not math.isfinite(scale) or scale < 1 or int(scale) != scale:
        raise ValueError(f"{name}: expected an integer >= 1, got {scale!r}")
    return int(scale)


def finite_tensor(t: torch.Tensor, name: str) -> None:
    """Raise if t holds NaN or infinity (use on small parameter tensors only)."""
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: expected finite values, got NaN or infinity")


# How far outside [0, 1] an image may reach before it is taken for one on
# another scale: bicubic overshoot of a [0, 1] image stays well within this.
UNIT_RANGE_SLACK = 0.5


def unit_range(x: torch.Tensor, name: str, stacklevel: int = 3, *, require_finite: bool = False) -> None:
    """Warn when an image meant to be in [0, 1] reaches beyond [-0.5, 1.5]
    (e.g. 8-bit values 0..255 not divided by 255). require_finite: NaN or
    infinity is a ValueError (finite_tensor's, from the same single pass:
    the extremes propagate NaN)."""
    low, high = (float(v) for v in torch.aminmax(x.detach()))
    if require_finite and not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{name}: expected finite values, got NaN or infinity")
    if high > 1 + UNIT_RANGE_SLACK or low < -UNIT_RANGE_SLACK:
        hint = " (8-bit values? divide by 255)" if high > 2 else ""
        warnings.warn(f"{name}: values from {low:.4g} to {high:.4g}, expected an image in [0, 1]{hint}; "
                      f"they are clipped to [0, 1]", UserWarning, stacklevel=stacklevel)


def seed(value, name: str = "seed") -> int:
    """A generator seed: an integer in [0, 2**63) (what torch.Generator.manual_seed takes)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value < 2 ** 63:
        raise ValueError(f"{name}: expected an integer in [0, 2**63), got {value!r}")
    return int(value)


def size_text(shape) -> str:
    """The size of an image of shape [..., H, W] as the messages print it: "HxW (height x width)"."""
    return f"{shape[-2]}x{shape[-1]} (height x width)"


def finite_on_host(t: torch.Tensor, name: str) -> None:
    """finite_tensor where it needs no device synchronisation: CPU tensors only.
    The fused ops check their per-call parameters (kernels, Gaussian
    parameters) this way: on a GPU the check would stall the host on every call
    and is not allowed inside CUDA-graph capture, so there NaN or infinity
    propagates to the output instead of raising."""
    if t.device.type == "cpu":
        finite_tensor(t, name)


def same_device(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.device != b.device:
        raise ValueError(f"{name_b}: expected a tensor on {a.device} like {name_a}, got {b.device}")
