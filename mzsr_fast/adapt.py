"""Test-time adaptation, MZSR(n) (docs/method.md section 8).

Given an LR image y, its blur kernel k and the scale s:
1. son = degrade(y, k, s) with the model's subsampling mode;
2. n plain SGD steps on L1(f(imresize(son) to y's shape), y) over the whole image,
   with the model's per-step learning rates;
3. SR = f(imresize(y, s)), clipped to [0, 1].
The given model is never changed: adaptation works on copies of its weights.
"""
from __future__ import annotations

import contextlib
import numbers
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch

from . import _checks, _tf32
from .degradation import degrade, load_kernel
from .maml import LOSSES, sgd_update_, stacked_forward
from .model import PARAMETER_NAMES
from .pretrained import ModelInfo, mode_mismatch, resolve_model
from .resize import imresize

__all__ = ["adapt", "learning_rates", "forward_tiled", "back_projection", "available_memory", "RECEPTIVE_RADIUS",
           "AUTO_TILE"]

# Eight 3x3 convolutions: an output pixel sees 8 pixels on each side.
RECEPTIVE_RADIUS = 8
PRECISIONS = ("fp32", "tf32", "bf16")
# The final inference runs on tiles of this many output pixels when tile is
# None: its peak (three 64-channel float32 maps of a tile with its margins) is
# about 0.8 GB, and the margins add 3% of work.
AUTO_TILE = 1024
# Peak bytes per LR pixel and image of an adaptation step (what autograd keeps
# of the eight 64-channel layers for the backward pass): 2.2 KB measured
# (peak RSS, 1024x1024 LR, fp32, CPU), with a margin.
ADAPT_BYTES_PER_PIXEL = 2560
# Peak bytes per output pixel besides the tiles (the upsampled LR, the SR and
# the resize's intermediates): 80 measured the same way, with a margin.
OUTPUT_BYTES_PER_PIXEL = 96


def learning_rates(schedule: Sequence, steps: int) -> list:
    """The first `steps` entries of a schedule whose last entry repeats (an
    entry: one rate, or one rate per parameter tensor)."""
    return [schedule[min(i, len(schedule) - 1)] for i in range(steps)]


def _autocast(device: torch.device, precision: str, cache: bool = True):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext()


def forward_tiled(fn, x: torch.Tensor, tile: int | None, margin: int = RECEPTIVE_RADIUS) -> torch.Tensor:
    """fn(x) computed on tiles of tile x tile output pixels, each with `margin`
    pixels of context, so memory stays bounded. For a network whose receptive
    radius is at most margin (zero 'same' padding), the result equals fn(x).

    x: [B, C, H, W] -> [B, C, H, W].
    """
    h, w = x.shape[-2:]
    if tile is None or (h <= tile and w <= tile):
        return fn(x)
    out = torch.empty_like(x)
    for top in range(0, h, tile):
        for left in range(0, w, tile):
            t0, l0 = max(top - margin, 0), max(left - margin, 0)
            t1, l1 = min(top + tile + margin, h), min(left + tile + margin, w)
            piece = fn(x[..., t0:t1, l0:l1])
            bottom, right = min(top + tile, h), min(left + tile, w)
            out[..., top:bottom, left:right] = piece[..., top - t0:bottom - t0, left - l0:right - l0]
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


def _check_memory(y: torch.Tensor, scale: int, steps: int) -> None:
    """Refuse (ValueError) an adaptation of y ([T, C, H, W]) that cannot fit in memory."""
    tasks, _, h, w = y.shape
    need = (ADAPT_BYTES_PER_PIXEL * tasks * h * w if steps else 0) + OUTPUT_BYTES_PER_PIXEL * tasks * h * w * scale ** 2
    free = available_memory(y.device)
    if free is not None and need > free:
        work = "the adaptation (forward and backward passes over the whole image) and the output" if steps else \
            "the output"
        raise ValueError(f"lr: {_checks.size_text(y.shape)} x{scale} needs about {_bytes_text(need)} for {work}, "
                         f"more than the {_bytes_text(free)} available on {y.device}; expected a smaller image "
                         f"(crop or split it){' or steps=0' if steps else ''}")


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


def _estimated_kernels(y: torch.Tensor, scale: int, mode: str) -> torch.Tensor:
    """kernel="auto": the blind-mode estimate of each image, [B, 21, 21] float64."""
    from .blind import estimate_kernel

    return torch.stack([e.kernel for e in estimate_kernel(list(y), scale, mode=mode)])


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps: expected an integer >= 0, got {steps!r}")
    return steps


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


def _check_converged(losses: torch.Tensor, sr: torch.Tensor, rates: list[float]) -> None:
    """Raise ValueError when the adaptation diverged: a loss ([T, steps]) or an
    output pixel (sr before clipping) that is not finite."""
    if bool(torch.isfinite(losses).all()) and bool(torch.isfinite(sr).all()):
        return
    trace = ", ".join(f"{v:.3g}" for v in losses.amax(0).tolist())
    raise ValueError(f"the adaptation diverged: L1 loss before each step {trace} with learning rates {rates}, "
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


def _adapt_weights(params: dict[str, torch.Tensor], x: torch.Tensor, target: torch.Tensor,
                   rates: list[float], precision: str, cuda_graph: bool = False,
                   on_step: Callable[[int, int], None] | None = None,
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Plain SGD on L1(f(x[t]), target[t]) for every image t at once, each with
    its own copy of the weights (the tasks of the batched inner loop).

    params: shared weights; x, target: [T, C, H, W]. cuda_graph: the first
    WARMUP_STEPS steps run eagerly on a side stream, the step (forward,
    backward, update, with the rate in a device tensor) is then captured once
    as a CUDA graph and replayed for the remaining steps. on_step(done, total)
    is called after each step (without waiting for the device). Returns the adapted
    stacked weights {name: [T, ...]} and the loss before each step, [T, steps].
    """
    tasks = x.shape[0]
    names = list(params)
    weights = [p.detach().unsqueeze(0).repeat(tasks, *([1] * p.dim())).requires_grad_(True)
               for p in params.values()]
    # the rate of every tensor at every step, on the device once; `rate` holds the current step's row
    table = torch.tensor([[r] * len(names) if isinstance(r, float) else list(r) for r in rates] or [[0.0] * len(names)],
                         device=x.device)
    rate = table[0].clone()
    rate_of_tensor = list(rate.unbind())

    def step() -> torch.Tensor:
        with _autocast(x.device, precision, cache=not cuda_graph):
            out = stacked_forward(dict(zip(names, weights)), x[:, None])[:, 0]
        per_task = LOSSES["l1"](out.float(), target)  # [T]; task t depends on its weights only
        grads = torch.autograd.grad(per_task.sum(), weights)
        sgd_update_(list(weights), list(grads), rate_of_tensor)
        return per_task.detach()

    losses = torch.zeros(tasks, len(rates), device=x.device)
    eager = min(len(rates), WARMUP_STEPS) if cuda_graph else len(rates)
    with _side_stream(x.device) if cuda_graph else contextlib.nullcontext():
        for i in range(eager):
            rate.copy_(table[i])
            losses[:, i] = step()
            if on_step is not None:
                on_step(i + 1, len(rates))
    if eager < len(rates):
        replay = _capture(step, x.device)
        for i in range(eager, len(rates)):
            rate.copy_(table[i])
            losses[:, i] = replay()
            if on_step is not None:
                on_step(i + 1, len(rates))
    return {n: w.detach() for n, w in zip(names, weights)}, losses


def adapt(lr: torch.Tensor, kernel, scale: int = 2, steps: int = 10, model=None, mode: str | None = None,
          schedule: Sequence[float] | None = None, precision: str = "fp32", return_losses: bool = False,
          backprojection: bool = False, tile: int | None = None, backend: str | None = None,
          cuda_graph: bool = False, on_step: Callable[[int, int], None] | None = None):
    """Super-resolve LR images with MZSR(steps).

    lr: [C, H, W] or [B, C, H, W] in [0, 1]; the B images are adapted at once,
    each with its own weights (the tasks of the batched inner loop).
    kernel: [k, k] tensor, [B, k, k] (one per image), a preset name, a
    (theta, lambda1, lambda2) triple, a .npy/.mat path, or "auto": each
    image's kernel estimated from the image (mzsr_fast.blind.estimate_kernel,
    x2, x3 or x4, for the subsampling mode of the son). model: None (the
    shipped bundled model for the preset's subsampling mode and the scale,
    pretrained.default_model), a bundled name, a .safetensors path or an
    MZSRNet (left unchanged). mode: "direct" or "bicubic" subsampling of the son
    (default: the model's). schedule: per-step learning rates in [0, 1), each
    a number or one number per parameter tensor (default: the model's,
    ModelInfo.schedule); a diverging adaptation (non-finite loss or output)
    raises ValueError. precision: "fp32" (IEEE float32: no TF32 in CUDA
    convolutions, so a GPU matches the CPU up to summation order), "tf32" (CUDA
    convolutions in TF32, faster on Ampere and later GPUs, about 1e-3 relative
    from fp32; the same as fp32 on the CPU) or "bf16" (autocast).
    tile: final inference on tiles of this many output pixels (bounded
    memory; None: AUTO_TILE); the result equals the untiled one. An image
    whose adaptation (about ADAPT_BYTES_PER_PIXEL per LR pixel) and output
    do not fit in the memory available is refused with a ValueError.
    on_step(done, total): called after each adaptation step (progress).
    cuda_graph: (CUDA only) after WARMUP_STEPS eager steps, capture one
    adaptation step as a CUDA graph and replay it for the remaining steps:
    one launch per step instead of one per kernel (launches dominate small
    images on a fast GPU); the capture itself costs about a step per call.
    Returns SR [(B,) C, sH, sW]; with return_losses also the L1 loss before
    each step, [B, steps].
    """
    y, was_3d = _checks.as_batched_image(lr, "lr")
    scale = _checks.integer_scale(scale)
    steps = _check_steps(steps)
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, int) or tile < 1):
        raise ValueError(f"tile: expected a positive integer or None, got {tile!r}")
    if not isinstance(cuda_graph, bool):
        raise TypeError(f"cuda_graph: expected True or False, got {cuda_graph!r}")
    if cuda_graph and y.device.type != "cuda":
        raise ValueError(f"cuda_graph: needs lr on a CUDA device, got {y.device}")
    if not torch.compiler.is_compiling():
        _checks.finite_tensor(y, "lr")
        _checks.unit_range(y, "lr")
    if isinstance(kernel, str) and kernel == "auto":
        net, info = resolve_model(model, mode, scale)
        kernels, kernel_mode = _estimated_kernels(y, scale, mode or info.mode), None
    else:
        kernels, kernel_mode = _kernels(kernel, y.shape[0])
        net, info = resolve_model(model, mode or kernel_mode, scale)
    if info.scales and scale not in info.scales:
        raise ValueError(f"scale: the model {info.name!r} was trained for scales {info.scales}, got {scale}")
    mismatch = mode_mismatch(kernel_mode, info) if mode is None and steps > 0 else None
    if mismatch:
        warnings.warn(mismatch, UserWarning, stacklevel=2)
    mode = mode or info.mode
    if mode not in ("direct", "bicubic"):
        raise ValueError(f"mode: expected 'direct' or 'bicubic', got {mode!r}")
    k = kernels.shape[-1]
    if min(y.shape[-2:]) < k:
        raise ValueError(f"lr: image of {_checks.size_text(y.shape)} is smaller than the {k}x{k} kernel")
    rates = _schedule(schedule, info, steps)
    if not torch.compiler.is_compiling():
        _check_memory(y, scale, steps)

    y = y.float()
    params = {n: p.detach().to(y.device, torch.float32) for n, p in net.named_parameters()}
    if not torch.compiler.is_compiling():
        for name, p in params.items():
            _checks.finite_tensor(p, f"model: {name}")
    # channels_last: the convolutions run about 1.3x (fp32) to 2x (bf16) faster on CPU.
    if steps:
        son = degrade(y, kernels.to(y.device), scale, mode=mode, backend=backend)
        son_up = imresize(son, scale=scale, size=y.shape[-2:]).contiguous(memory_format=torch.channels_last)
    else:  # no step: the son is never used
        son_up = y
    lr_up = imresize(y, scale=scale).contiguous(memory_format=torch.channels_last)
    tf32 = _tf32.fp32_precision("tf32") if precision == "tf32" else \
        _tf32.fp32_precision("ieee") if precision == "fp32" else contextlib.nullcontext()
    with tf32:
        adapted, losses = _adapt_weights(params, son_up, y, rates, precision, cuda_graph, on_step)

        def run(x):
            with torch.no_grad(), _autocast(x.device, precision):
                return stacked_forward(adapted, x[:, None])[:, 0].float()

        sr = forward_tiled(run, lr_up, tile or AUTO_TILE)
    if steps and not torch.compiler.is_compiling():
        _check_converged(losses, sr, rates)
    sr = sr.clamp(0, 1)
    if backprojection:
        sr = back_projection(sr, y, scale)
    sr = sr.squeeze(0) if was_3d else sr
    return (sr, losses) if return_losses else sr
