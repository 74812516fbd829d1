"""Adaptation on a pixel budget: the crops of large images that each test-time step sees.

An adaptation task whose images hold more than `pixels` pixels is not adapted
on the whole images: every step sees `count` windows of wh x ww pixels
(`pixels` at most in all), cut at the same places from the son-upsampled
image (the network's input) and from the LR image (its target). A task has
one image, or several that share one adaptation (frames of one video); its
windows are drawn from all of them. They are drawn anew for every step, each
with a probability proportional to the texture under it (the mean gradient
magnitude of the LR image, plus a floor), so flat sky is seen less often than
edges, and a seeded generator makes the draw repeatable.

The network's output near a window's edge depends on pixels outside the
window, which zero padding stands in for. The loss therefore leaves out a
margin of `margin` pixels (the network's receptive radius) on every side of a
window that is not also its image's edge: there the crop's output equals the
whole image's, so a step on windows is a step on a sample of the whole
image's loss terms.

    plan = Budget.plan([[lr.shape]], pixels=65536, margin=8)     # None: the task is adapted whole
    weights = [[texture_weights(lr, plan)]]                        # per task, per image
    windows = plan.draw(weights, generator)                        # [T, count, 3] (image, top, left)
    x = plan.crop([[son_up]], windows); y = plan.crop([[lr]], windows); mask = plan.loss_mask(windows)
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Budget", "texture_weights", "WINDOW", "MIN_PIXELS", "GRID", "TEXTURE_FLOOR"]

# Side of a square window (pixels, margins included) when the images allow it.
WINDOW = 128
# The smallest budget: a window of 32 x 32 pixels.
MIN_PIXELS = 32 * 32
# Window corners are drawn on a grid of this step (pixels).
GRID = 8
# Added to each window's mean gradient magnitude, as a fraction of its
# image's mean, so that no part of an image is never drawn.
TEXTURE_FLOOR = 0.1


@dataclass(frozen=True)
class Budget:
    """How the images of T tasks are cut for one adaptation step: `count`
    windows of wh x ww pixels per task, with a loss margin of `margin`
    pixels. sizes[t][j]: (height, width) of image j of task t."""

    sizes: tuple[tuple[tuple[int, int], ...], ...]
    wh: int
    ww: int
    count: int
    margin: int

    @classmethod
    def plan(cls, shapes: Sequence[Sequence[Sequence[int]]], pixels: int, margin: int) -> "Budget | None":
        """The windows for tasks of images of shapes[t][j] ([..., H, W]) and a
        budget of `pixels` per step; None when every task is one image of at most
        `pixels` pixels, or several of one size and `pixels` in all (adapted whole)."""
        sizes = tuple(tuple((int(s[-2]), int(s[-1])) for s in task) for task in shapes)
        if all(len(set(task)) == 1 and len(task) * task[0][0] * task[0][1] <= pixels for task in sizes):
            return None
        h = min(size[0] for task in sizes for size in task)
        w = min(size[1] for task in sizes for size in task)
        side = min(WINDOW, math.isqrt(pixels))
        wh, ww = min(side, h), min(side, w)
        if wh < side:  # a strip: the window takes its whole height and the budget's width
            ww = min(w, max(side, pixels // wh))
        elif ww < side:
            wh = min(h, max(side, pixels // ww))
        return cls(sizes, wh, ww, max(1, pixels // (wh * ww)), margin)

    def positions(self, height: int, width: int) -> tuple[int, int]:
        """How many window corners the grid has along each axis of an image."""
        return (height - self.wh) // GRID + 1, (width - self.ww) // GRID + 1

    def draw(self, weights: Sequence[Sequence[torch.Tensor]], generator: torch.Generator) -> torch.Tensor:
        """`count` windows per task, drawn with replacement from all its images,
        with probability proportional to weights[t][j] [nh, nw]
        (texture_weights). The last grid row and column are moved to the
        image's edge, so that the edges can be drawn.
        Returns [T, count, 3] int64 (image, top, left) on the CPU."""
        out = []
        for task_weights, sizes in zip(weights, self.sizes):
            flat = torch.cat([w.reshape(-1) for w in task_weights]).double().cpu()
            picks = torch.multinomial(flat, self.count, replacement=True, generator=generator)
            starts = torch.tensor([0] + [w.numel() for w in task_weights]).cumsum(0)
            image = torch.searchsorted(starts, picks, right=True) - 1
            rows = []
            for j, at in zip(image.tolist(), (picks - starts[image]).tolist()):
                (height, width), (nh, nw) = sizes[j], task_weights[j].shape
                top = height - self.wh if at // nw == nh - 1 else (at // nw) * GRID
                left = width - self.ww if at % nw == nw - 1 else (at % nw) * GRID
                rows.append((j, top, left))
            out.append(rows)
        return torch.tensor(out, dtype=torch.int64).reshape(len(self.sizes), self.count, 3)

    def crop(self, images: Sequence[Sequence[torch.Tensor]], windows: torch.Tensor) -> torch.Tensor:
        """The windows of images[t][j] ([C, H, W]): [T, count, C, wh, ww] (a copy)."""
        return torch.stack([torch.stack([images[t][j][:, top:top + self.wh, left:left + self.ww]
                                         for j, top, left in task.tolist()])
                            for t, task in enumerate(windows)])

    def loss_mask(self, windows: torch.Tensor, device=None) -> torch.Tensor:
        """[T, count, 1, wh, ww] float: 1 where a window's output equals its
        whole image's (the margin is left out except along the image's edges)."""
        m = self.margin
        heights = torch.tensor([[self.sizes[t][j][0] for j in task[:, 0].tolist()] for t, task in enumerate(windows)])
        widths = torch.tensor([[self.sizes[t][j][1] for j in task[:, 0].tolist()] for t, task in enumerate(windows)])
        top, left = windows[..., 1, None], windows[..., 2, None]
        rows, cols = torch.arange(self.wh), torch.arange(self.ww)
        row_ok = ((rows >= m) | (top == 0)) & ((rows < self.wh - m) | (top + self.wh == heights[..., None]))
        col_ok = ((cols >= m) | (left == 0)) & ((cols < self.ww - m) | (left + self.ww == widths[..., None]))
        mask = row_ok[..., :, None] & col_ok[..., None, :]
        return mask[:, :, None].float().to(device)


def texture_weights(y: torch.Tensor, plan: Budget) -> torch.Tensor:
    """The weight of every window corner of plan's grid on image y [C, H, W]:
    the mean gradient magnitude under the window plus TEXTURE_FLOOR times the
    image's mean. The magnitude is summed in GRID x GRID blocks first and a
    window covers the blocks its corner starts (its size rounded to whole
    blocks), so the cost is one pass over the image.
    Returns [nh, nw] float64 on the CPU."""
    y = y.detach().float()
    dx = (y[:, :, 1:] - y[:, :, :-1]).abs().sum(0)
    dy = (y[:, 1:, :] - y[:, :-1, :]).abs().sum(0)
    magnitude = F.pad(dx, (0, 1)) + F.pad(dy, (0, 0, 0, 1))  # [H, W]
    height, width = magnitude.shape
    blocks = F.pad(magnitude, (0, -width % GRID, 0, -height % GRID))
    blocks = blocks.reshape(blocks.shape[0] // GRID, GRID, -1, GRID).sum((1, 3)).double().cpu()
    integral = F.pad(blocks.cumsum(0).cumsum(1), (1, 0, 1, 0))  # [H / GRID + 1, W / GRID + 1]
    nh, nw = plan.positions(height, width)
    bh, bw = max(1, round(plan.wh / GRID)), max(1, round(plan.ww / GRID))
    top, left = torch.arange(nh), torch.arange(nw)
    bottom, right = (top + bh).clamp(max=blocks.shape[0]), (left + bw).clamp(max=blocks.shape[1])
    box = (integral[bottom][:, right] - integral[top][:, right] - integral[bottom][:, left]
           + integral[top][:, left])
    area = ((bottom - top)[:, None] * (right - left)[None, :]).double() * GRID * GRID
    return box / area + TEXTURE_FLOOR * float(magnitude.mean()) + 1e-12
