"""ZSSR (Shocher et al., CVPR 2018), the zero-shot baseline MZSR is compared with:
the same network from a random initialisation, trained on the test image alone
for many steps with Adam, with ZSSR's published defaults."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import _checks
from .adapt import back_projection
from .degradation import degrade, load_kernel
from .model import MZSRNet, functional_forward
from .resize import imresize

__all__ = ["ZSSRConfig", "zssr"]


@dataclass(frozen=True)
class ZSSRConfig:
    """ZSSR's defaults (configs.py of the ZSSR code)."""

    max_steps: int = 3000
    min_steps: int = 256
    crop_size: int = 128
    learning_rate: float = 1e-3
    min_learning_rate: float = 9e-6
    policy_check_every: int = 60
    slope_range: int = 256
    change_ratio: float = 1.5
    back_projection_iterations: int = 10


def _augment(x: torch.Tensor, index: int) -> torch.Tensor:
    """One of the 8 flips/rotations of [B, C, H, W]."""
    x = torch.rot90(x, index % 4, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if index >= 4 else x


def _lower_rate(losses: list[float], config: ZSSRConfig) -> bool:
    """ZSSR's policy: fit a line to the recent losses; lower the rate when the
    fall per step is within change_ratio standard errors of zero."""
    recent = np.asarray(losses[-config.slope_range:])
    (slope, _), covariance = np.polyfit(np.arange(len(recent)), recent, 1, cov=True)
    return -config.change_ratio * slope < np.sqrt(covariance[0, 0])


def zssr(lr: torch.Tensor, kernel, scale: int = 2, steps: int | None = None, mode: str = "direct",
         config: ZSSRConfig = ZSSRConfig(), generator: torch.Generator | None = None,
         return_losses: bool = False):
    """Train a fresh network on the LR image alone, then super-resolve it.

    lr: [C, H, W] or [1, C, H, W] in [0, 1]; kernel: anything load_kernel
    accepts. steps: maximum training steps (default config.max_steps).
    Returns SR [(1,) C, sH, sW] (with return_losses also the loss per step).
    """
    y, was_3d = _checks.as_batched_image(lr, "lr")
    if y.shape[0] != 1:
        raise ValueError(f"lr: zssr adapts one image at a time, got a batch of {y.shape[0]}")
    scale = _checks.integer_scale(scale)
    steps = config.max_steps if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps: expected an integer >= 0, got {steps!r}")
    _checks.unit_range(y, "lr", require_finite=True)
    y = y.float()
    kernel_tensor = load_kernel(kernel)[0].to(y.device)
    if min(y.shape[-2:]) < kernel_tensor.shape[-1]:
        raise ValueError(f"lr: image of {_checks.size_text(y.shape)} is smaller than the kernel")
    generator = generator or torch.Generator().manual_seed(0)
    net = MZSRNet()
    net.reset_parameters(generator)
    params = {n: p.detach().to(y.device).requires_grad_() for n, p in net.named_parameters()}
    optimizer = torch.optim.Adam(params.values(), lr=config.learning_rate)
    losses, rate, last_change = [], config.learning_rate, 0
    for step in range(steps):
        h, w = y.shape[-2:]
        ch, cw = min(config.crop_size, h), min(config.crop_size, w)
        top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
        father = _augment(y[..., top:top + ch, left:left + cw], int(torch.randint(0, 8, (1,), generator=generator)))
        son = imresize(degrade(father, kernel_tensor, scale, mode=mode, check=False), scale=scale,
                       size=father.shape[-2:])
        loss = F.l1_loss(functional_forward(params, son), father)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        check = (step + 1) % config.policy_check_every == 0 and step + 1 - last_change > config.min_steps
        if check and _lower_rate(losses, config):
            rate, last_change = rate / 10, step + 1
            if rate < config.min_learning_rate:
                break
            for group in optimizer.param_groups:
                group["lr"] = rate
    with torch.no_grad():
        sr = functional_forward(params, imresize(y, scale=scale)).clamp(0, 1)
    sr = back_projection(sr, y, scale, config.back_projection_iterations)
    sr = sr.squeeze(0) if was_3d else sr
    return (sr, losses) if return_losses else sr
