"""Test-time adaptation, MZSR(n) (docs/method.md section 8).

Given an LR image y, its blur kernel k and the scale s:
1. son = degrade(y, k, s) with the model's subsampling mode;
2. n plain SGD steps on L1(f(imresize(son) to y's shape), y) over the whole image,
   with the model's per-step learning rates (the loss is the model's,
   ModelInfo.adapt_loss: L1 for every model but one trained with another);
3. SR = f(imresize(y, s)), clipped to [0, 1].
The given model is never changed: adaptation works on copies of its weights.
With a step search (the model's, ModelInfo.step_search, unless the caller
gives one), each step's length is chosen on the image itself: the
step's weights are moved along the step to the multiple of it (of
step_search) whose loss on the same son -> y pair is lowest (one forward
pass per multiple over the central window of the step's input, a quarter
of it where it is 64 pixels a side or more; no gradient beyond the step's
own).
"""
from __future__ import annotations

import contextlib
import numbers
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from . import _checks, _tf32
from ._heap import give_back, reuse_freed_memory
from .adapt_step import PRECISIONS, sgd_loss_step_
from .budget import MIN_PIXELS, Budget, texture_weights
from .degradation import degrade, load_kernel
from .losses import check_loss, task_losses
from .maml import sgd_update_, stacked_forward
from .model import PARAMETER_NAMES, MZSRNet
from .catalogue import ONE_STEP, kind_of
from .pretrained import ModelInfo, check_scale, mode_mismatch, resolve_model, unadapted_warning
from .resize import imresize

__all__ = ["adapt", "adapt_model", "UnadaptedModelWarning", "learning_rates", "forward_tiled", "upscale_tiled",
           "back_projection", "available_memory", "RECEPTIVE_RADIUS", "AUTO_TILE", "ADAPT_PIXELS", "STEP_SEARCH"]


class UnadaptedModelWarning(UserWarning):
    """steps=0 with a meta-learned model, which is meant to be adapted."""


# Eight 3x3 convolutions: an output pixel sees 8 pixels on each side.
RECEPTIVE_RADIUS = 8
# The final inference runs on tiles of this many output pixels when tile is
# None: its peak (three 64-channel float32 maps of a tile with its margins) is
# about 0.8 GB, and the margins add 3% of work.
AUTO_TILE = 1024
# The default pixel budget of an adaptation step (adapt_pixels): see budget.py and the README.
ADAPT_PIXELS = 32768
# The step lengths step_search=True tries (multiples of the scheduled step),
# chosen on held-out training images with a one-step model: the image's own
# choice among them gained 0.10 dB over the fixed step (README). A model file
# may name its own (ModelInfo.step_search).
STEP_SEARCH = (0.5, 1.0, 2.0)
# The step search scores its candidates on the central part of the step's
# input: half of each side (a quarter of the pixels), but at least
# SEARCH_MIN_SIDE pixels where the side has them. On held-out training images
# it chose as well as on the whole input, at a quarter of the search's cost.
SEARCH_SIDE_FRACTION = 0.5
SEARCH_MIN_SIDE = 4 * RECEPTIVE_RADIUS
# Peak bytes per LR pixel an adaptation step sees (what autograd keeps of the
# eight 64-channel layers for the backward pass): 2.2 KB measured (peak RSS,
# 1024x1024 LR, fp32, CPU), with a margin.
ADAPT_BYTES_PER_PIXEL = 2560
# Bytes per LR pixel held through the adaptation: the image, its son, the
# son upsampled, the texture map of the windows.
IMAGE_BYTES_PER_PIXEL = 64
# Bytes per output pixel: the SR image (float32).
OUTPUT_BYTES_PER_PIXEL = 16
# Bytes per output pixel of an inference tile with its margins (three
# 64-channel float32 maps and the upsampled input).
TILE_BYTES_PER_PIXEL = 800


def learning_rates(schedule: Sequence, steps: int) -> list:
    """The first `steps` entries of a schedule whose last entry repeats (an
    entry: one rate, or one rate per parameter tensor)."""
    return [schedule[min(i, len(schedule) - 1)] for i in range(steps)]


def _autocast(device: torch.device, precision: str, cache: bool = True):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext()


def _spans(length: int, tile: int, margin: int):
    """One axis of _tiles: ((start, stop), (window start, window stop)) of
    ceil(length / tile) tiles of equal length (the last one shorter by less
    than their count), each window min(tile length + 2 margin, length) long."""
    size = -(-length // -(-length // tile))
    span = min(size + 2 * margin, length)
    for start in range(0, length, size):
        window = min(max(start - margin, 0), length - span)
        yield (start, min(start + size, length)), (window, window + span)


def _tiles(height: int, width: int, tile: int | None, margin: int):
    """The tiles of at most tile x tile pixels covering an image, row by row,
    each as (top, left, bottom, right) and its window (t0, l0, t1, l1): the
    tile with at least `margin` pixels of context where the image has them.
    The tiles split each side evenly, and every window has the same size:
    near an edge it is shifted inwards rather than cut, so each tile's maps
    take the same memory and malloc reuses one tile's for the next (windows
    of several sizes fragment its heap: 4.7 GB peak instead of 1.1 GB for a
    1500x2000 LR at x2)."""
    if tile is None:
        tile = max(height, width)
    for (top, bottom), (t0, t1) in _spans(height, tile, margin):
        for (left, right), (l0, l1) in _spans(width, tile, margin):
            yield (top, left, bottom, right), (t0, l0, t1, l1)


def _more_than_one_tile(height: int, width: int, tile: int | None) -> bool:
    """Whether an output of height x width pixels takes several tiles of tile x tile (None: one)."""
    return tile is not None and (height > tile or width > tile)


def forward_tiled(fn, x: torch.Tensor, tile: int | None, margin: int = RECEPTIVE_RADIUS) -> torch.Tensor:
    """fn(x) computed on tiles of tile x tile output pixels, each with `margin`
    pixels of context, so memory stays bounded. For a network whose receptive
    radius is at most margin (zero 'same' padding), the result equals fn(x).

    x: [B, C, H, W] -> [B, C, H, W].
    """
    h, w = x.shape[-2:]
    if not _more_than_one_tile(h, w, tile):
        return fn(x)
    out = torch.empty_like(x)
    for (top, left, bottom, right), (t0, l0, t1, l1) in _tiles(h, w, tile, margin):
        piece = fn(x[..., t0:t1, l0:l1])
        out[..., top:bottom, left:right] = piece[..., top - t0:bottom - t0, left - l0:right - l0]
    return out


# LR pixels of context a tile's bicubic upsampling needs on each side (its
# taps reach 2 pixels beyond the output's position; one more for safety).
RESIZE_CONTEXT = 3


def upscale_tiled(fn, lr: torch.Tensor, scale: int, tile: int | None, margin: int = RECEPTIVE_RADIUS,
                  on_tile: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """fn(imresize(lr, scale)) computed on tiles of tile x tile output pixels:
    each tile's input is upsampled from the LR pixels it needs (RESIZE_CONTEXT
    of them around it), so neither the upsampled image nor fn's maps of it are
    ever held whole. Equals the untiled computation up to float rounding.
    on_tile(done, total) is called after each tile.

    lr: [B, C, H, W] -> [B, C, scale H, scale W] (fn's dtype).
    """
    h, w = lr.shape[-2:]
    out_h, out_w = h * scale, w * scale
    tiles = list(_tiles(out_h, out_w, tile, margin))
    out = None
    for done, ((top, left, bottom, right), (t0, l0, t1, l1)) in enumerate(tiles, 1):
        a0, b0 = max(t0 // scale - RESIZE_CONTEXT, 0), max(l0 // scale - RESIZE_CONTEXT, 0)  # in LR pixels
        a1, b1 = min(-(-t1 // scale) + RESIZE_CONTEXT, h), min(-(-l1 // scale) + RESIZE_CONTEXT, w)
        up = imresize(lr[..., a0:a1, b0:b1], scale=scale)
        up = up[..., t0 - a0 * scale:t1 - a0 * scale, l0 - b0 * scale:l1 - b0 * scale]
        piece = fn(up.contiguous(memory_format=torch.channels_last))
        if out is None:
            out = torch.empty(*lr.shape[:-2], out_h, out_w, dtype=piece.dtype, device=piece.device)
        out[..., top:bottom, left:right] = piece[..., top - t0:bottom - t0, left - l0:right - l0]
        if on_tile is not None:
            on_tile(done, len(tiles))
    return out


def available_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on device (CPU: MemAvailable of
    /proc/meminfo; CUDA: free plus cached by torch), None where unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # not Linux
        pass
    return None


def _check_memory(images: list[torch.Tensor], scale: int, steps: int, plan: Budget | None, share: bool,
                  tile: int | None) -> None:
    """Refuse (ValueError) an adaptation of images ([C, H, W] each) that cannot
    fit in memory: what the steps see (the whole images, or plan's windows)
    and, unless tile is None (no inference follows), the outputs and a tile."""
    pixels = [im.shape[-2] * im.shape[-1] for im in images]
    if not steps:
        seen = 0
    elif plan is not None:
        seen = len(plan.sizes) * plan.count * plan.wh * plan.ww
    else:
        seen = sum(pixels)
    # the adaptation, the images and their sons, the outputs, and one inference tile
    # the images and their sons throughout, then the steps, then the outputs and one tile at a time
    steps_need = ADAPT_BYTES_PER_PIXEL * seen
    inference_need = 0
    if tile is not None:
        tile_pixels = min(max(pixels) * scale ** 2, (tile + 2 * RECEPTIVE_RADIUS) ** 2)
        inference_need = OUTPUT_BYTES_PER_PIXEL * sum(pixels) * scale ** 2 + TILE_BYTES_PER_PIXEL * tile_pixels
    need = IMAGE_BYTES_PER_PIXEL * sum(pixels) + max(steps_need, inference_need)
    free = available_memory(images[0].device)
    if free is not None and need > free:
        shape = images[int(torch.tensor(pixels).argmax())].shape
        work = "the adaptation (forward and backward passes) and the output" if steps else "the output"
        raise ValueError(f"lr: {_checks.size_text(shape)}{' and more' if len(images) > 1 else ''} x{scale} needs "
                         f"about {_bytes_text(need)} for {work}, more than the {_bytes_text(free)} available on "
                         f"{images[0].device}; expected a smaller image (crop or split it)"
                         f"{', a smaller adapt_pixels' if steps and (plan or not share) else ''}")


def _bytes_text(n: int) -> str:
    return f"{n / 2 ** 30:.1f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.0f} MiB"


def back_projection(sr: torch.Tensor, lr: torch.Tensor, scale: int, iterations: int = 4) -> torch.Tensor:
    """Iterative back-projection with bicubic resizes: sr += up(lr - down(sr)).

    sr: [B, C, sH, sW], lr: [B, C, H, W] -> [B, C, sH, sW] clipped to [0, 1].
    """
    for _ in range(iterations):
        residual = lr - imresize(sr, scale=1 / scale, size=lr.shape[-2:])
        sr = (sr + imresize(residual, scale=scale, size=sr.shape[-2:])).clamp(0, 1)
    return sr


def _kernels(kernel, batch: int) -> tuple[torch.Tensor, str | None]:
    """kernel spec -> ([k, k] or [B, k, k] float64, the preset's subsampling
    mode or None). The son always uses the model's mode; the preset's is only
    compared with it."""
    if isinstance(kernel, torch.Tensor) and kernel.dim() == 3:
        if kernel.shape[0] != batch:
            raise ValueError(f"kernel: expected one kernel per image ({batch}), got {kernel.shape[0]}")
        return torch.stack([load_kernel(k)[0] for k in kernel]), None
    return load_kernel(kernel)


def _estimated_kernels(images: list[torch.Tensor], scale: int, mode: str, share: bool) -> torch.Tensor:
    """kernel="auto": the blind-mode estimate of each image [C, H, W], [B, 21, 21]
    float64; with share the one kernel of all of them (blind.joint_estimate), [21, 21]."""
    from .blind import estimate_kernel, joint_estimate

    estimates = estimate_kernel(images, scale, mode=mode)
    if share:
        return joint_estimate(estimates).kernel
    return torch.stack([e.kernel for e in estimates])


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"steps: expected an integer >= 0, got {steps!r}")
    return int(steps)


def _is_rate(r) -> bool:
    return not isinstance(r, bool) and isinstance(r, numbers.Real) and 0 <= r < 1


def _schedule(schedule, info: ModelInfo, steps: int) -> list:
    """The rates of each of the steps: a number, or a tuple of one per parameter tensor."""
    if schedule is None:
        return learning_rates(info.schedule, steps)
    entries = [schedule] if isinstance(schedule, numbers.Real) else list(schedule)
    rates = []
    for entry in entries:
        if isinstance(entry, (torch.Tensor, np.ndarray)):
            entry = entry.tolist()
        if _is_rate(entry):
            rates.append(float(entry))
        elif isinstance(entry, (list, tuple)) and len(entry) == len(PARAMETER_NAMES) and all(map(_is_rate, entry)):
            rates.append(tuple(float(v) for v in entry))
        else:
            raise ValueError(f"schedule: expected per-step learning rates in [0, 1) (each a number, or "
                             f"{len(PARAMETER_NAMES)} numbers, one per parameter tensor), got {schedule!r}")
    if not rates:
        raise ValueError("schedule: expected at least one learning rate, got an empty schedule")
    return learning_rates(rates, steps)


# A loss before the last step this many times the first one's: the steps diverged.
DIVERGED_GROWTH = 4.0


def _check_converged(losses: torch.Tensor, srs: list[torch.Tensor], rates: list[float],
                     same_pixels: bool = True) -> None:
    """Raise ValueError when the adaptation diverged: a loss ([T, steps]) or an
    output pixel (srs, before clipping) that is not finite; warn when the
    loss grew DIVERGED_GROWTH-fold over steps that saw the same pixels (finite,
    but far off)."""
    def trace() -> str:
        return ", ".join(f"{v:.3g}" for v in losses.amax(0).tolist())

    if bool(torch.isfinite(losses).all()) and all(bool(torch.isfinite(sr).all()) for sr in srs):
        if same_pixels and losses.shape[1] > 1 and bool((losses[:, -1] > DIVERGED_GROWTH * losses[:, 0]).any()):
            warnings.warn(f"the adaptation diverged: loss before each step {trace()} with learning rates {rates}; "
                          f"the output is likely far off; expected smaller learning rates", UserWarning,
                          stacklevel=3)
        return
    raise ValueError(f"the adaptation diverged: loss before each step {trace()} with learning rates {rates}, "
                     f"and the output is not finite; expected smaller learning rates or a model whose outputs stay "
                     f"in range")


# Eager steps before a CUDA-graph capture: lazy initialisation and cuDNN's
# algorithm choice must happen outside the capture. They are real steps.
WARMUP_STEPS = 3


@contextlib.contextmanager
def _side_stream(device: torch.device):
    """Run the enclosed CUDA work on a fresh stream (as graph warm-up needs)."""
    with torch.cuda.device(device):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            yield
        torch.cuda.current_stream().wait_stream(stream)


# Memory pool shared by every capture of this process: graphs of successive
# adapt calls reuse its blocks instead of each reserving its own.
_GRAPH_POOL = None


def _capture(step: Callable[[], torch.Tensor], device: torch.device) -> Callable[[], torch.Tensor]:
    """step recorded (not run) as a CUDA graph; returns replay() -> step's
    output, a static tensor that every replay overwrites.

    Captures with CUDAGraph.capture_begin/capture_end on a side stream rather
    than the torch.cuda.graph context manager, which synchronises the device
    and empties the caching allocator (and the pinned host cache) on every
    entry: a cost paid by every adapt(cuda_graph=True) call for nothing here,
    and a stall of every other stream."""
    global _GRAPH_POOL
    with torch.cuda.device(device):
        if _GRAPH_POOL is None:
            _GRAPH_POOL = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with _side_stream(device):
            graph.capture_begin(pool=_GRAPH_POOL)
            try:
                out = step()
            finally:
                graph.capture_end()

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    return replay


# Each step's network input, target and loss mask: [T, N, C, h, w] twice and
# [T, N, 1, h, w] (None: every output pixel of the N = 1 whole image counts).
StepInputs = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]


def _check_search(step_search) -> tuple[float, ...] | None:
    """step_search as multiples: True is STEP_SEARCH, False none, None the model's (kept None)."""
    if step_search is None:
        return None
    if isinstance(step_search, bool):
        return STEP_SEARCH if step_search else ()
    if isinstance(step_search, (str, bytes)) or not isinstance(step_search, Sequence) or not all(
            not isinstance(m, bool) and isinstance(m, numbers.Real) and 0 < m < float("inf") for m in step_search):
        raise ValueError(f"step_search: expected None (the model's), True (STEP_SEARCH, {STEP_SEARCH}), False, "
                         f"or a sequence of positive finite multiples of the step, got {step_search!r}")
    return tuple(float(m) for m in step_search)


def _search_window(*maps: torch.Tensor | None) -> list[torch.Tensor | None]:
    """The central window the step search scores on (SEARCH_SIDE_FRACTION of
    each side, at least SEARCH_MIN_SIDE pixels where the side has them) of
    each of maps ([..., h, w], all of one h x w; None stays None)."""
    h, w = next(m for m in maps if m is not None).shape[-2:]
    wh, ww = (min(side, max(int(side * SEARCH_SIDE_FRACTION), SEARCH_MIN_SIDE)) for side in (h, w))
    top, left = (h - wh) // 2, (w - ww) // 2
    return [None if m is None else m[..., top:top + wh, left:left + ww] for m in maps]


def _search_step(weights: list[torch.Tensor], before: list[torch.Tensor], names: list[str], x: torch.Tensor,
                 target: torch.Tensor, mask: torch.Tensor | None, multiples: tuple[float, ...],
                 precision: str, loss: str) -> None:
    """Move each task's weights, just stepped from `before`, to before + m
    (weights - before) for the m of multiples whose loss on the central
    window (_search_window) of (x, target, mask) is lowest (the first of
    equals; a multiple whose loss is not finite is never kept); in place.
    weights, before: [T, ...] per parameter tensor; x, target [T, N, C, h, w]."""
    steps = [w.detach() - b for w, b in zip(weights, before)]
    x, target, mask = _search_window(x, target, mask)
    losses = []
    with torch.no_grad():
        for m in multiples:  # w + (m - 1) step: m = 1 is the step itself, bit for bit
            candidate = {n: w.detach() + (m - 1) * d for n, w, d in zip(names, weights, steps)}
            with _autocast(x.device, precision):
                losses.append(task_losses(loss, stacked_forward(candidate, x), target, mask))
        losses = torch.stack(losses).nan_to_num(nan=float("inf"))  # [multiples, T]
        shrink = 1 - torch.tensor(multiples, device=x.device)[losses.argmin(0)]  # [T]
    # w - (1 - m) step = before + m step
    sgd_update_(weights, steps, [shrink.view(-1, *([1] * (d.dim() - 1))) for d in steps])


def _adapt_weights(params: dict[str, torch.Tensor], tasks: int, inputs: Callable[[int], StepInputs],
                   rates: list[float], precision: str, cuda_graph: bool = False,
                   on_step: Callable[[int, int], None] | None = None, step_search: tuple[float, ...] = (),
                   loss: str = "l1") -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Plain SGD on the loss (a losses.LOSSES name) of every image t at once,
    each with its own copy of the weights (the tasks of the batched inner loop).

    params: shared weights (on the images' device); tasks: T, the number of
    images; inputs(i): step i's (x, target, mask), StepInputs. On the CPU a
    step is adapt_step.sgd_loss_step_ (its gradients written out), elsewhere
    autograd through stacked_forward.
    cuda_graph: the first WARMUP_STEPS steps run eagerly on a side stream,
    the step (forward, backward, update, with the rate in a device tensor) is
    then captured once as a CUDA graph and replayed for the remaining steps,
    each step's inputs copied into the captured ones. on_step(done, total) is
    called after each step (without waiting for the device). step_search:
    the multiples of each step tried after it (_search_step; () for none).
    Returns the adapted stacked weights {name: [T, ...]} and the loss before
    each step, [T, steps].
    """
    current = list(inputs(0)) if rates else []
    names = list(params)
    device = next(iter(params.values())).device
    weights = [p.detach().unsqueeze(0).repeat(tasks, *([1] * p.dim())).requires_grad_(True)
               for p in params.values()]
    # the rate of every tensor at every step, on the device once; `rate` holds the current step's row
    table = torch.tensor([[r] * len(names) if isinstance(r, float) else list(r) for r in rates] or [[0.0] * len(names)],
                         device=device)
    rate = table[0].clone()
    rate_of_tensor = list(rate.unbind())

    def step() -> torch.Tensor:
        x, target, mask = current
        if device.type == "cpu":
            return sgd_loss_step_(dict(zip(names, weights)), x, target, mask, rate_of_tensor, precision, loss)
        with _autocast(x.device, precision, cache=not cuda_graph):
            out = stacked_forward(dict(zip(names, weights)), x)
        per_task = task_losses(loss, out, target, mask)  # [T]; task t depends on its weights only
        grads = torch.autograd.grad(per_task.sum(), weights)
        sgd_update_(list(weights), list(grads), rate_of_tensor)
        return per_task.detach()

    def load(i: int) -> None:  # step i's inputs into `current` (into the captured tensors once captured)
        if i == 0:
            return
        for held, new in zip(current, inputs(i)):
            if held is not None and new is not held:
                held.copy_(new)

    before = [torch.empty_like(w) for w in weights] if step_search else []

    def searched(run_step: Callable[[], torch.Tensor]) -> torch.Tensor:
        if not step_search:
            return run_step()
        for held, w in zip(before, weights):
            held.copy_(w.detach())
        value = run_step()
        _search_step(weights, before, names, *current, step_search, precision, loss)
        return value

    losses = torch.zeros(tasks, len(rates), device=device)
    eager = min(len(rates), WARMUP_STEPS) if cuda_graph else len(rates)
    with _side_stream(device) if cuda_graph else contextlib.nullcontext():
        for i in range(eager):
            load(i)
            rate.copy_(table[i])
            losses[:, i] = searched(step)
            if on_step is not None:
                on_step(i + 1, len(rates))
    if eager < len(rates):
        replay = _capture(step, device)
        for i in range(eager, len(rates)):
            load(i)
            rate.copy_(table[i])
            losses[:, i] = searched(replay)
            if on_step is not None:
                on_step(i + 1, len(rates))
    return {n: w.detach() for n, w in zip(names, weights)}, losses


def _son_up(image: torch.Tensor, kernel: torch.Tensor, scale: int, mode: str, backend: str | None) -> torch.Tensor:
    """The network's adaptation input for an LR image [C, H, W]: its son
    (degraded once more with kernel [k, k]) upsampled to its size; [1, C, H, W]
    channels-last (the convolutions run about 1.3x (fp32) to 2x (bf16) faster
    on the CPU in that layout)."""
    son = degrade(image[None], kernel.to(image.device), scale, mode=mode, backend=backend, check=False)
    return imresize(son, scale=scale, size=image.shape[-2:]).contiguous(memory_format=torch.channels_last)


def _whole_image_inputs(son_ups: list[list[torch.Tensor]], tasks: list[list[torch.Tensor]],
                        ) -> Callable[[int], StepInputs]:
    """Every step on the whole images: son_ups[t][j] ([1, C, H, W]) and
    tasks[t][j] ([C, H, W]), one image per task, or several of one size in one task."""
    if all(len(task) == 1 for task in tasks):
        x = torch.cat([task[0] for task in son_ups])[:, None]  # [T, 1, C, H, W]
        target = torch.stack([task[0] for task in tasks])[:, None]
    else:
        x = torch.cat(son_ups[0])[None]  # [1, N, C, H, W]
        target = torch.stack(tasks[0])[None]
    return lambda i: (x, target, None)


def _son_context(kernel_size: int, scale: int, mode: str) -> int:
    """LR pixels of context around a window that its son needs: the blur
    kernel's radius, plus the reach of the son's bicubic upsampling
    (RESIZE_CONTEXT son pixels and one more) and, for bicubic subsampling, of
    the antialiased downsampling (2 x scale)."""
    return kernel_size // 2 + scale * (RESIZE_CONTEXT + 1) + (2 * scale if mode == "bicubic" else 0)


def _son_up_window(image: torch.Tensor, kernel: torch.Tensor, scale: int, mode: str, backend: str | None,
                   top: int, left: int, height: int, width: int) -> torch.Tensor:
    """The window [top:top + height, left:left + width] of _son_up(image, ...)
    ([C, H, W] -> [C, height, width]), made from the LR pixels around it alone
    (a region starting on the son's grid, _son_context pixels wider): equal to
    the whole image's up to float rounding, at a cost that does not grow with
    the image."""
    h, w = image.shape[-2:]
    context = _son_context(kernel.shape[-1], scale, mode)
    a0, b0 = max(top - context, 0) // scale * scale, max(left - context, 0) // scale * scale
    a1, b1 = min(top + height + context, h), min(left + width + context, w)
    up = _son_up(image[:, a0:a1, b0:b1], kernel, scale, mode, backend)[0]
    return up[:, top - a0:top - a0 + height, left - b0:left - b0 + width]


def _budget_inputs(tasks: list[list[torch.Tensor]], kernels: list[torch.Tensor], scale: int, mode: str,
                   backend: str | None, plan: Budget, seed: int) -> Callable[[int], StepInputs]:
    """Step i on plan.count windows per task of tasks[t][j] ([C, H, W]),
    degraded with task t's kernels[t] ([k, k]), drawn for that
    step by texture_weights with a generator seeded by seed (step i is the
    generator's i-th draw). Each window's son is made from the pixels around
    it (_son_up_window), so a step costs the same for any image size."""
    weights = [[texture_weights(image, plan) for image in task] for task in tasks]
    generator = torch.Generator().manual_seed(seed)

    def inputs(i: int) -> StepInputs:
        windows = plan.draw(weights, generator)
        x = torch.stack([torch.stack([
            _son_up_window(tasks[t][j], kernels[t], scale, mode, backend, top, left, plan.wh, plan.ww)
            for j, top, left in task.tolist()]) for t, task in enumerate(windows)])
        return x, plan.crop(tasks, windows), plan.loss_mask(windows, tasks[0][0].device)

    return inputs


def _step_inputs(tasks: list[list[torch.Tensor]], kernels: torch.Tensor, scale: int, mode: str,
                 backend: str | None, plan: Budget | None, seed: int) -> Callable[[int], StepInputs]:
    """The adaptation steps' inputs for tasks[t][j] ([C, H, W]) degraded with
    kernels ([k, k], or [T, k, k] one per task): the whole images, or plan's windows."""
    task_kernels = [kernels[t] if kernels.dim() == 3 else kernels for t in range(len(tasks))]
    if plan is not None:
        return _budget_inputs(tasks, task_kernels, scale, mode, backend, plan, seed)
    son_ups = [[_son_up(image, kernel, scale, mode, backend) for image in task]
               for task, kernel in zip(tasks, task_kernels)]
    return _whole_image_inputs(son_ups, tasks)


def _infer(adapted: dict[str, torch.Tensor], images: list[torch.Tensor], share: bool, scale: int, precision: str,
           tile: int | None, on_tile: Callable[[int, int], None] | None) -> list[torch.Tensor]:
    """SR of every image [C, H, W] with its task's adapted weights ({name: [T, ...]};
    with share, task 0's for all), tiled. Returns [C, sH, sW] float32 each, not clipped."""
    srs = []
    for i, image in enumerate(images):
        weights = {n: w[0 if share else i][None] for n, w in adapted.items()}

        def run(x, weights=weights):
            with torch.no_grad(), _autocast(x.device, precision):
                return stacked_forward(weights, x[:, None])[:, 0].float()

        srs.append(upscale_tiled(run, image[None], scale, tile or AUTO_TILE, on_tile=on_tile)[0])
    return srs


def _adapted_net(adapted: dict[str, torch.Tensor], task: int, info: ModelInfo, steps: int) -> MZSRNet:
    """An MZSRNet holding task's adapted weights, with info naming what it was adapted from."""
    net = MZSRNet(initialise=False)
    net.load_state_dict({n: w[task].detach().cpu() for n, w in adapted.items()})
    net.model_info = replace(info, name=f"{info.name}-adapted", notes={**info.notes, "adapted_steps": steps})
    return net.to(next(iter(adapted.values())).device)


def _images(lr) -> tuple[list[torch.Tensor], str]:
    """The LR images [C, H, W] of lr, and the form to answer in: "image" (a
    [C, H, W] tensor), "batch" ([B, C, H, W]) or "list" (images of any sizes)."""
    if isinstance(lr, (list, tuple)):
        if not lr:
            raise ValueError("lr: expected at least one image, got an empty list")
        images = []
        for i, image in enumerate(lr):
            if not isinstance(image, torch.Tensor) or image.dim() != 3:
                raise ValueError(f"lr[{i}]: expected an image [C, H, W], got "
                                 f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
            images.append(_checks.as_batched_image(image, f"lr[{i}]")[0][0])
        if len({im.device for im in images}) > 1:
            raise ValueError("lr: expected images on one device")
        for i, image in enumerate(images):
            _check_rgb(image, f"lr[{i}]")
        return images, "list"
    y, was_3d = _checks.as_batched_image(lr, "lr")
    _check_rgb(y[0], "lr")
    return list(y.unbind(0)), "image" if was_3d else "batch"


def _check_rgb(image: torch.Tensor, name: str) -> None:
    """The network takes RGB images [3, H, W]."""
    if image.shape[0] != 3:
        hint = " (an [H, W, 3] image? permute it to [3, H, W])" if image.shape[-1] == 3 else \
            " (a grey image: repeat its channel, image.expand(3, -1, -1))" if image.shape[0] == 1 else ""
        raise ValueError(f"{name}: expected 3 channels (RGB) [3, H, W], got {image.shape[0]} in shape "
                         f"{tuple(image.shape)}{hint}")


def _check_tile(tile) -> None:
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, int) or tile < 1):
        raise ValueError(f"tile: expected a positive integer or None, got {tile!r}")


def check_options(adapt_pixels: int = ADAPT_PIXELS, seed: int = 0, tile: int | None = None) -> None:
    """adapt's checks of these arguments (a ValueError naming the argument),
    for a caller that wants them made before any work (the command line)."""
    _check_pixels(adapt_pixels)
    _checks.seed(seed)
    _check_tile(tile)


def _check_pixels(adapt_pixels) -> int:
    if isinstance(adapt_pixels, bool) or not isinstance(adapt_pixels, numbers.Integral) or \
            (adapt_pixels != 0 and adapt_pixels < MIN_PIXELS):
        raise ValueError(f"adapt_pixels: expected 0 (whole images) or an integer >= {MIN_PIXELS}, got "
                         f"{adapt_pixels!r}")
    return int(adapt_pixels)


@dataclass
class _Adapted:
    """What _adapt gives: the adapted weights {name: [T, ...]}, the loss before
    each step [T, steps], the model's info, the float images [C, H, W] (task
    by task), the form lr came in (see _images), the steps' rates and whether
    every step saw the same pixels (no budget windows: losses comparable)."""

    weights: dict[str, torch.Tensor]
    losses: torch.Tensor
    info: ModelInfo
    images: list[torch.Tensor]
    form: str
    rates: list
    same_pixels: bool = True


def _adapt(lr, kernel, scale, steps, model, mode, schedule, precision, backend, cuda_graph, on_step, adapt_pixels,
           seed, share, tile, step_search, adapt_loss) -> _Adapted:
    """The checks and the adaptation of adapt and adapt_model (tile: the
    inference's, for the memory check; None: no inference follows)."""
    images, form = _images(lr)
    scale = _checks.integer_scale(scale)
    steps = _check_steps(steps)
    adapt_pixels = _check_pixels(adapt_pixels)
    seed = _checks.seed(seed)
    step_search = _check_search(step_search)
    if adapt_loss is not None:
        check_loss(adapt_loss, "adapt_loss")
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    for name, flag in (("cuda_graph", cuda_graph), ("share", share)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name}: expected True or False, got {flag!r}")
    device = images[0].device
    if cuda_graph and device.type != "cuda":
        raise ValueError(f"cuda_graph: needs lr on a CUDA device, got {device}")
    if not torch.compiler.is_compiling():
        for i, image in enumerate(images):
            name = f"lr[{i}]" if form == "list" else "lr"
            _checks.unit_range(image, name, stacklevel=4, require_finite=True)
    if share and adapt_pixels == 0 and len({im.shape for im in images}) > 1:
        raise ValueError("adapt_pixels: 0 (whole images) with share=True needs images of one size; give a pixel "
                         "budget, e.g. the default")
    if isinstance(kernel, str) and kernel == "auto":
        net, info = resolve_model(model, mode, scale, steps=steps)
        # MZSR(0) never degrades the image: no kernel is estimated for it
        kernels = _estimated_kernels(images, scale, mode or info.mode, share) if steps else None
        kernel_mode = None
    else:
        if share and isinstance(kernel, torch.Tensor) and kernel.dim() == 3:
            raise ValueError(f"kernel: share=True adapts all images with one kernel [k, k], got "
                             f"{kernel.shape[0]} kernels")
        kernels, kernel_mode = _kernels(kernel, len(images))
        net, info = resolve_model(model, mode or kernel_mode, scale, steps=steps)
    check_scale(model, info, scale)
    if steps > 1 and info.name.endswith(ONE_STEP) and schedule is None:
        warnings.warn(f"steps={steps}: the model {info.name!r} is sized for one step; for more use "
                      f"{kind_of(info.name)!r}", UserWarning, stacklevel=3)
    mismatch = mode_mismatch(kernel_mode, info, scale, steps) if mode is None and steps > 0 else None
    if mismatch:
        warnings.warn(mismatch, UserWarning, stacklevel=3)
    unadapted = unadapted_warning(info) if steps == 0 else None
    if unadapted:
        warnings.warn(unadapted, UnadaptedModelWarning, stacklevel=3)
    mode = mode or info.mode
    if mode not in ("direct", "bicubic"):
        raise ValueError(f"mode: expected 'direct' or 'bicubic', got {mode!r}")
    k = 0 if kernels is None else kernels.shape[-1]
    for i, image in enumerate(images):
        if min(image.shape[-2:]) < k:
            name = f"lr[{i}]" if form == "list" else "lr"
            raise ValueError(f"{name}: image of {_checks.size_text(image.shape)} is smaller than the {k}x{k} kernel")
    rates = _schedule(schedule, info, steps)
    # what the steps do, as the adapted network's info records it
    info = replace(info, adapt_loss=adapt_loss or info.adapt_loss,
                   step_search=info.step_search if step_search is None else step_search)
    tasks = [images] if share else [[im] for im in images]
    if share and adapt_pixels:  # a shared step sees no more than one image's steps would: it costs as much
        adapt_pixels = min(adapt_pixels, max(MIN_PIXELS, *(im.shape[-2] * im.shape[-1] for im in images)))
    plan = Budget.plan([[im.shape for im in task] for task in tasks], adapt_pixels, RECEPTIVE_RADIUS) \
        if adapt_pixels and steps else None
    if not torch.compiler.is_compiling():
        _check_memory(images, scale, steps, plan, share, tile)

    tasks = [[im.float() for im in task] for task in tasks]
    params = {n: p.detach().to(device, torch.float32) for n, p in net.named_parameters()}
    if not torch.compiler.is_compiling():
        for name, p in params.items():
            _checks.finite_tensor(p, f"model: {name}")
    with _precision(precision), reuse_freed_memory():
        inputs = _step_inputs(tasks, kernels, scale, mode, backend, plan, seed) if steps else None
        adapted, losses = _adapt_weights(params, len(tasks), inputs, rates, precision, cuda_graph, on_step,
                                         info.step_search, info.adapt_loss)
    return _Adapted(adapted, losses, info, [im for task in tasks for im in task], form, rates, plan is None)


def _precision(precision: str):
    """The float32 convolution precision of `precision` for the enclosed work (TF32 or IEEE)."""
    if precision == "tf32":
        return _tf32.fp32_precision("tf32")
    return _tf32.fp32_precision("ieee") if precision == "fp32" else contextlib.nullcontext()


def adapt(lr, kernel, scale: int = 2, steps: int = 10, model=None, mode: str | None = None,
          schedule: Sequence[float] | None = None, precision: str = "fp32", return_losses: bool = False,
          backprojection: bool = False, tile: int | None = None, backend: str | None = None,
          cuda_graph: bool = False, on_step: Callable[[int, int], None] | None = None,
          adapt_pixels: int = ADAPT_PIXELS, seed: int = 0, share: bool = False, return_model: bool = False,
          on_tile: Callable[[int, int], None] | None = None, step_search: bool | Sequence[float] | None = None,
          adapt_loss: str | None = None):
    """Super-resolve LR images with MZSR(steps).

    lr: [C, H, W], a batch [B, C, H, W] or a list of [C, H, W] images of any
    sizes, in [0, 1]. Without share each image is adapted on its own (a batch
    at once, each image with its own weights: the tasks of the batched inner
    loop); with share=True all of them share one kernel (one estimate from all
    of them for "auto") and one adaptation, whose windows are drawn across the
    images, and each image is then inferred with the shared weights (frames
    of one video, a burst, photos of one camera).
    kernel: [k, k] tensor, [B, k, k] (one per image), a preset name, a
    (theta, lambda1, lambda2) triple, a .npy/.mat path, or "auto": each
    image's kernel estimated from the image (mzsr_fast.blind.estimate_kernel,
    x2, x3 or x4, for the subsampling mode of the son; with steps=0, which
    reads no kernel, none is estimated). model: None (the
    shipped bundled model for the preset's subsampling mode and the scale,
    pretrained.default_model), a bundled name, a .safetensors path or an
    MZSRNet (left unchanged). mode: "direct" or "bicubic" subsampling of the son
    (default: the model's). schedule: per-step learning rates in [0, 1), each
    a number or one number per parameter tensor (default: the model's,
    ModelInfo.schedule); a diverging adaptation (non-finite loss or output)
    raises ValueError. precision: "fp32" (IEEE float32: no TF32 in CUDA
    convolutions, so a GPU matches the CPU up to summation order; on the CPU
    the adaptation steps' forward and input-gradient convolutions are
    oneDNN's direct kernels, the arithmetic of the original TensorFlow
    implementation, their weight gradients and the final inference the
    Winograd kernels, as accurate), "tf32" (the fast float32 mode: CUDA
    convolutions in TF32, faster on Ampere and later GPUs, about 1e-3
    relative from fp32; on the CPU the Winograd kernel for every convolution
    of the adaptation steps, a step in about 0.85x fp32's time, outputs up
    to about 1e-4 from fp32's after ten steps: see mzsr_fast.adapt_step) or
    "bf16" (autocast).
    adapt_pixels: the pixel budget of an adaptation step (mzsr_fast.budget):
    an image (or the images of a shared adaptation) of more LR pixels is
    adapted on windows of at most that many pixels in all, drawn anew for
    every step from a generator seeded with `seed`; one at or under it is
    adapted whole, exactly as with 0 (whole images, the paper's protocol).
    A shared step sees at most as many pixels as the largest of its images
    holds, so one adaptation for many images costs what one image's does.
    tile: final inference on tiles of this many output pixels (bounded
    memory; None: AUTO_TILE); the result equals the untiled one. An
    adaptation (about ADAPT_BYTES_PER_PIXEL per LR pixel it sees) and output
    that do not fit in the memory available are refused with a ValueError.
    on_step(done, total): called after each adaptation step; on_tile(done,
    total): after each inference tile (progress).
    step_search: multiples of each step to try after it (True: STEP_SEARCH);
    each image keeps the one whose loss on its own son -> LR pair is lowest
    (one forward pass over the step's pixels per multiple); False: the
    scheduled step alone, the paper's protocol and the lowest latency; None
    (default): the model's (ModelInfo.step_search; `mzsr-fast info` lists
    the shipped models').
    adapt_loss: the loss the steps descend, one of mzsr_fast.losses.LOSSES
    (None: the model's, ModelInfo.adapt_loss; "l1", the paper's, for every
    model not trained with another). The adapted networks (return_model)
    record the loss and search their steps used in their model_info.
    cuda_graph: (CUDA only) after WARMUP_STEPS eager steps, capture one
    adaptation step as a CUDA graph and replay it for the remaining steps:
    one launch per step instead of one per kernel (launches dominate small
    images on a fast GPU); the capture itself costs about a step per call.
    Returns SR in lr's form ([C, sH, sW], [B, C, sH, sW] or a list); with
    return_losses also the loss before each step, [B, steps] ([1, steps]
    with share); with return_model also the adapted network(s): one MZSRNet
    with share or for a [C, H, W] image, else a list of one per image.
    return_losses and return_model add to a tuple in that order.
    """
    _check_tile(tile)
    if not isinstance(return_model, bool):
        raise TypeError(f"return_model: expected True or False, got {return_model!r}")
    images, form = _images(lr)
    if form == "list" and not share and len({im.shape for im in images}) > 1:
        # images of different sizes adapted each on its own: one call per image
        results = [adapt(im, kernel[i] if isinstance(kernel, torch.Tensor) and kernel.dim() == 3 else kernel,
                         scale, steps, model, mode, schedule, precision, True, backprojection, tile, backend,
                         cuda_graph, on_step, adapt_pixels, seed, False, True, on_tile, step_search, adapt_loss)
                   for i, im in enumerate(images)]
        out = ([r[0] for r in results],)
        out += (torch.cat([r[1] for r in results]),) if return_losses else ()
        out += ([r[2] for r in results],) if return_model else ()
        return out if len(out) > 1 else out[0]
    with reuse_freed_memory():  # the adaptation's freed memory, for the inference too
        done = _adapt(lr, kernel, scale, steps, model, mode, schedule, precision, backend, cuda_graph, on_step,
                      adapt_pixels, seed, share, tile or AUTO_TILE, step_search, adapt_loss)
        scale = int(scale)
        with _precision(precision):
            srs = _infer(done.weights, done.images, share, scale, precision, tile, on_tile)
    if any(_more_than_one_tile(im.shape[-2] * scale, im.shape[-1] * scale, tile or AUTO_TILE) for im in done.images):
        give_back()  # a tiled image's maps, kept by malloc, would lie under its large output
    if steps and not torch.compiler.is_compiling():
        _check_converged(done.losses, srs, done.rates, done.same_pixels)
    srs = [sr.clamp_(0, 1) for sr in srs]
    if backprojection:
        srs = [back_projection(sr[None], im[None], scale)[0] for sr, im in zip(srs, done.images)]
    out = (srs[0] if done.form == "image" else torch.stack(srs) if done.form == "batch" else srs,)
    if return_losses:
        out += (done.losses,)
    if return_model:
        nets = [_adapted_net(done.weights, t, done.info, steps) for t in range(done.losses.shape[0])]
        out += (nets[0] if share or done.form == "image" else nets,)
    return out if len(out) > 1 else out[0]


def adapt_model(lr, kernel, scale: int = 2, steps: int = 10, model=None, mode: str | None = None,
                schedule: Sequence[float] | None = None, precision: str = "fp32", backend: str | None = None,
                on_step: Callable[[int, int], None] | None = None, adapt_pixels: int = ADAPT_PIXELS,
                seed: int = 0, step_search: bool | Sequence[float] | None = None,
                adapt_loss: str | None = None) -> MZSRNet:
    """The network of MZSR(steps) adapted to lr, without super-resolving it:
    adapt once, then apply it to anything (adapt(x, kernel, steps=0,
    model=net), or net itself on upsampled images) and save it
    (pretrained.save_model(path, net, net.model_info)).

    lr: an image [C, H, W], a batch [B, C, H, W] or a list of images of any
    sizes; more than one image share the adaptation (adapt's share=True). The
    other arguments are adapt's. Returns an MZSRNet with model_info naming
    the model it was adapted from ("NAME-adapted", notes["adapted_steps"]).
    """
    done = _adapt(lr, kernel, scale, steps, model, mode, schedule, precision, backend, False, on_step,
                  adapt_pixels, seed, True, None, step_search, adapt_loss)
    if steps:
        _check_converged(done.losses, [], done.rates, done.same_pixels)
    return _adapted_net(done.weights, 0, done.info, steps)
