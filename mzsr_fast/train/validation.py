"""Validation during training on held-out images (a folder, or images of the
training folder kept out of training: RunSettings.holdout).

Pretraining: PSNR of the network on bicubically degraded images (what it is
trained for). Meta-training: MZSR(n) PSNR for a fixed set of benchmark kernels,
through mzsr_fast.evaluation's degraded_lr and super_resolve, exactly as
`mzsr-fast eval` scores. Scores follow docs/method.md
section 9 (Y channel, shave, peak 255).
"""
from __future__ import annotations

import copy
import os

import torch

from ..degradation import PRESETS
from ..evaluation import degraded_lr, quantise, super_resolve
from ..io import read_image
from ..metrics import psnr
from ..resize import imresize
from .data import DataError, find_images

__all__ = ["central_crop", "load_images", "pretrain_psnr", "mzsr_psnr"]


def central_crop(height: int, width: int, crop: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the central crop x crop pixels of an image
    (crop 0, or an image smaller than crop along an axis: that whole axis)."""
    if not crop:
        return 0, 0, height, width
    return max(0, (height - crop) // 2), max(0, (width - crop) // 2), min(crop, height), min(crop, width)


def load_images(source, scale: int, min_lr_size: int = 3, crop: int = 0) -> list[tuple[str, torch.Tensor]]:
    """(name, image [3, H, W] float32) for every image in source (a folder, or
    a list of image paths), cropped to a multiple of scale and, with crop > 0,
    to its central crop x crop pixels at most. Raises DataError (before any
    training) for an image whose LR would be smaller than min_lr_size (the
    adapter needs at least the kernel's size)."""
    images = []
    paths = list(source) if isinstance(source, (list, tuple)) else find_images(source)
    if not paths:
        raise DataError("no validation images (an empty list)")
    # names relative to the folder, or to the images' common folder (T91/x.png and BSD/x.png differ)
    root = source if not isinstance(source, (list, tuple)) else \
        os.path.dirname(paths[0]) if len(paths) == 1 else os.path.commonpath(paths)
    for path in paths:
        image = read_image(path, torch.float32)
        top, left, height, width = central_crop(image.shape[-2], image.shape[-1], crop)
        image = image[:, top:top + height, left:left + width]
        h, w = (image.shape[-2] // scale) * scale, (image.shape[-1] // scale) * scale
        if min(h, w) // scale < min_lr_size:
            raise DataError(f"{path}: validation image of {image.shape[-2]}x{image.shape[-1]} is too small: its "
                            f"x{scale} LR must be at least {min_lr_size}x{min_lr_size} (at least "
                            f"{min_lr_size * scale} pixels a side)")
        name = os.path.relpath(path, root)
        images.append((name, image[:, :h, :w].contiguous()))
    if not images:
        raise DataError(f"{source}: no validation images")
    return images


@torch.no_grad()
def pretrain_psnr(model: torch.nn.Module, images, scale: int, device) -> float:
    """Mean PSNR of model(bicubic-up(bicubic-down(gt))) over images, and nothing else changed."""
    values = []
    for _, gt in images:
        gt = gt.to(device)
        lr = quantise(imresize(gt, scale=1.0 / scale))
        sr = model(imresize(lr, scale=scale, size=gt.shape[-2:])[None]).clamp(0, 1)
        values.append(psnr(sr, gt[None], scale))
    return sum(values) / len(values)


def mzsr_psnr(model: torch.nn.Module, images, kernels: list[str], scale: int, steps=(1, 10), schedule=None,
              mode: str | None = None, device=None, adapt_loss: str | None = None,
              step_search=None) -> dict[str, float]:
    """{"psnr_<kernel>_mzsr<n>": mean PSNR} for each kernel preset and number of steps,
    by the evaluation protocol (mzsr_fast.evaluation: the LR degraded with the
    kernel in mode, default the preset's, and rounded to 8 bits; SR by MZSR(n)
    with a copy of model, schedule, adapt_loss and step_search (None: the
    model's; adapt's arguments), rounded to 8 bits).
    """
    net = copy.deepcopy(model).eval()
    out = {}
    for name in kernels:
        preset = PRESETS[name]
        kernel = preset.kernel
        subsample = mode or preset.mode
        scores = {n: [] for n in steps}
        for _, gt in images:
            gt = gt.to(device)
            lr = degraded_lr(gt, kernel, scale, subsample)
            for n in steps:
                sr = super_resolve(lr, kernel, scale, n, model=net, mode=subsample, schedule=schedule,
                                   adapt_loss=adapt_loss, step_search=step_search)
                scores[n].append(psnr(sr, gt.double(), scale))
        for n in steps:
            out[f"psnr_{name}_mzsr{n}"] = sum(scores[n]) / len(scores[n])
    return out
