"""Plain-PyTorch blur + downsample: symmetric padding and a grouped conv2d.

This is the reference the hand-written kernels are tested against, and the
"torch" backend. It is also exactly the plain way a user would write it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..resize import imresize, symmetric_index


def symmetric_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """[..., H, W] -> [..., H + 2 pad, W + 2 pad], half-sample symmetric border
    (edge pixel repeated), mirroring as often as needed for small images."""
    if pad == 0:
        return x
    h, w = x.shape[-2:]
    rows = torch.from_numpy(symmetric_index(torch.arange(-pad, h + pad).numpy(), h)).to(x.device)
    cols = torch.from_numpy(symmetric_index(torch.arange(-pad, w + pad).numpy(), w)).to(x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def blur(x: torch.Tensor, kernel: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Correlate each channel with kernel, symmetric border, keep every stride-th
    row and column starting at 0.

    x: [B, C, H, W]; kernel: [k, k] shared or [B, k, k] per image (k odd);
    returns [B, C, ceil(H / stride), ceil(W / stride)].
    """
    b, c = x.shape[:2]
    k = kernel.shape[-1]
    padded = symmetric_pad(x, k // 2)
    kernel = kernel.to(x.dtype)
    if kernel.dim() == 2:
        weight = kernel.expand(c, 1, k, k)
        return F.conv2d(padded, weight, stride=stride, groups=c)
    weight = kernel[:, None].expand(b, c, k, k).reshape(b * c, 1, k, k)
    out = F.conv2d(padded.reshape(1, b * c, *padded.shape[-2:]), weight, stride=stride, groups=b * c)
    return out.view(b, c, *out.shape[-2:])


def blur_downsample(x: torch.Tensor, kernel: torch.Tensor, scale: int, mode: str = "direct") -> torch.Tensor:
    """docs/method.md section 3 steps 1-2. x: [B, C, H, W]; kernel [k, k] or [B, k, k];
    returns [B, C, ceil(H / scale), ceil(W / scale)]."""
    if mode == "direct":
        return blur(x, kernel, scale)
    h, w = x.shape[-2:]
    out_size = (-(-h // scale), -(-w // scale))
    return imresize(blur(x, kernel, 1), scale=1.0 / scale, size=out_size)
