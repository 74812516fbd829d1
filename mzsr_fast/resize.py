"""MATLAB-compatible bicubic imresize (docs/method.md section 4), differentiable.

Each axis is resized separately: the P taps per output pixel and their weights
are computed once in float64 and cached per (length in, length out, scale,
antialias), as a dense [out, in] matrix (a matmul) or, for very long axes, as
a gather of the taps and a weighted sum.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from . import _checks

__all__ = ["imresize", "resize_weights", "symmetric_index"]


def symmetric_index(index: np.ndarray, length: int) -> np.ndarray:
    """Map any integer index onto 0..length-1 with the half-sample symmetric
    border ... c b a | a b c ... (periodic with period 2 * length)."""
    m = np.mod(index, 2 * length)
    return np.where(m >= length, 2 * length - 1 - m, m)


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel with a = -0.5."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


@lru_cache(maxsize=256)
def resize_weights(in_length: int, out_length: int, scale: float, antialias: bool):
    """Taps of one axis: (index [out, P] int64, weight [out, P] float64), numpy.

    Output pixel x (1-based) sits at input coordinate u = x / scale + (1 - 1 / scale) / 2.
    """
    if antialias and scale < 1:
        width = 4.0 / scale
        def kernel(t):
            return scale * _cubic(scale * t)
    else:
        width = 4.0
        kernel = _cubic
    u = np.arange(1, out_length + 1, dtype=np.float64) / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = int(math.ceil(width)) + 2
    index = left[:, None] + np.arange(taps) - 1
    weight = kernel(u[:, None] - index - 1)
    total = weight.sum(axis=1, keepdims=True)
    weight = weight / np.where(total == 0, 1.0, total)
    used = np.any(weight != 0, axis=0)
    index = symmetric_index(index[:, used].astype(np.int64), in_length)
    return index, weight[:, used]


# Dense [out, in] resize matrices up to this many entries (64 MB in float32):
# a matmul with them was 10-80x faster on CPU than gathering the P taps
# (measured from 32x32 patches to 1024x1024 images); beyond, the gather's
# O(out * P) work and memory win.
DENSE_LIMIT = 1 << 24


@lru_cache(maxsize=256)
def _device_weights(in_length, out_length, scale, antialias, dtype, device):
    index, weight = resize_weights(in_length, out_length, scale, antialias)
    if in_length * out_length <= DENSE_LIMIT:
        matrix = np.zeros((out_length, in_length))
        np.add.at(matrix, (np.repeat(np.arange(out_length), index.shape[1]), index.ravel()), weight.ravel())
        return torch.from_numpy(matrix).to(device=device, dtype=dtype), None
    return (torch.from_numpy(weight).to(device=device, dtype=dtype), torch.from_numpy(index).to(device))


def _resize_axis(x: torch.Tensor, dim: int, out_length: int, scale: float, antialias: bool) -> torch.Tensor:
    weight, index = _device_weights(x.shape[dim], out_length, scale, antialias, x.dtype, x.device)
    last = dim == x.dim() - 1
    if index is None:  # dense [out, in]
        return torch.matmul(x, weight.T) if last else torch.matmul(weight, x)
    taps = index.shape[1]
    gathered = x.index_select(dim, index.reshape(-1))
    if last:  # columns: [..., H, out * P] -> [..., H, out, P]
        return (gathered.unflatten(-1, (out_length, taps)) * weight).sum(-1)
    # rows: [..., out * P, W] -> [..., out, P, W]
    return (gathered.unflatten(-2, (out_length, taps)) * weight[..., None]).sum(-2)


def _pair(value, name: str, integer: bool):
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name}: expected one value or a pair (height, width), got {value!r}")
        pair = tuple(value)
    else:
        pair = (value, value)
    for v in pair:
        bad_type = isinstance(v, bool) or not isinstance(v, (int, float))
        if bad_type or not math.isfinite(v) or v <= 0 or (integer and int(v) != v):
            kind = "positive integer" if integer else "positive finite number"
            raise ValueError(f"{name}: expected a {kind} or a pair of them, got {value!r}")
    return tuple(int(v) for v in pair) if integer else tuple(float(v) for v in pair)


# The longest antialiasing kernel imresize builds, in input lengths (its
# weights take memory in proportion; MATLAB's would too).
MAX_SPAN = 100


def imresize(x: torch.Tensor, scale=None, size=None, antialias: bool = True) -> torch.Tensor:
    """Bicubic resize as MATLAB's imresize, up or down.

    x: [C, H, W] or [B, C, H, W]. scale: number or (sh, sw); size: (H_out, W_out).
    scale alone: output ceil(in * scale); size alone: scale = size / in per
    axis; both: the coordinates use scale and the output has exactly size.
    antialias widens the kernel when downscaling, as MATLAB does.
    """
    x4, was_3d = _checks.as_batched_image(x, "x")
    if scale is None and size is None:
        raise ValueError("scale, size: expected at least one of them, got neither")
    in_size = x4.shape[-2:]
    if scale is not None:
        scale = _pair(scale, "scale", integer=False)
    if size is not None:
        size = _pair(size, "size", integer=True)
    if scale is None:
        scale = tuple(o / i for o, i in zip(size, in_size))
    elif any(4 / s > MAX_SPAN * i for s, i in zip(scale, in_size)):  # the antialiasing kernel spans 4 / scale
        raise ValueError(f"scale: {scale} is too small for an input of {in_size[0]}x{in_size[1]} (its antialiasing "
                         f"kernel would span more than {MAX_SPAN} times the input); expected at least "
                         f"{4 / (MAX_SPAN * min(in_size)):.3g}")
    if size is None:
        # ceil with a guard against float noise such as 48 * (1 / 3) = 15.999...
        size = tuple(max(1, math.ceil(i * s - 1e-9)) for i, s in zip(in_size, scale))
    out = x4
    # Resize the axis with the smaller scale first (less work when downscaling).
    for axis in sorted((0, 1), key=lambda a: scale[a]):
        dim = 2 + axis
        if scale[axis] == 1.0 and size[axis] == in_size[axis]:
            continue
        out = _resize_axis(out, dim, size[axis], scale[axis], antialias)
    return out.squeeze(0) if was_3d else out
