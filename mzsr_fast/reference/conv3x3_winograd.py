"""Plain-PyTorch reference of conv3x3_winograd (mzsr_fast.ops.conv3x3_winograd): the oracle of its tests.

    y = conv3x3(x, weight, bias, relu)   # x [N, C, H, W], weight [O, C, 3, 3], bias [O] or None -> [N, O, H, W]

F.conv2d with stride 1 and zero padding 1, then max(y, 0) when relu.
Differentiable to any order; float64 capable.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["conv3x3"]


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
            relu: bool = False) -> torch.Tensor:
    y = F.conv2d(x, weight, bias, padding=1)
    return torch.relu(y) if relu else y
