"""Test-time adaptation, MZSR(n) (SPEC section 8).

Given an LR image y, its blur kernel k and the scale s:
1. son = degrade(y, k, s) with the model's subsampling mode;
2. n plain SGD steps on L1(f(imresize(son) to y's shape), y) over the whole image,
   with the model's per-step learning rates;
3. SR = f(imresize(y, s)), clipped to [0, 1].
The given model is never changed: adaptation works on copies of its weights.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Sequence

import torch

from . import _checks
from .degradation import degrade, load_kernel
from .maml import stacked_forward
from .pretrained import ModelInfo, mode_mismatch, resolve_model
from .resize import imresize

__all__ = ["adapt", "learning_rates", "forward_tiled", "back_projection", "RECEPTIVE_RADIUS"]

# Eight 3x3 convolutions: an output pixel sees 8 pixels on each side.
RECEPTIVE_RADIUS = 8
PRECISIONS = ("fp32", "bf16")


def learning_rates(schedule: Sequence[float], steps: int) -> list[float]:
    """The first `steps` rates of a schedule whose last entry repeats."""
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


def _schedule(schedule, info: ModelInfo, steps: int) -> list[float]:
    if schedule is None:
        return learning_rates(info.schedule, steps)
    rates = [schedule] if isinstance(schedule, (int, float)) else list(schedule)
    if not rates or any(isinstance(r, bool) or not isinstance(r, (int, float)) or not r >= 0 for r in rates):
        raise ValueError(f"schedule: expected a list of per-step learning rates >= 0, got {schedule!r}")
    return learning_rates(rates, steps)


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


def _capture(step: Callable[[], torch.Tensor], device: torch.device) -> Callable[[], torch.Tensor]:
    """step recorded (not run) as a CUDA graph; returns replay() -> step's
    output, a static tensor that every replay overwrites."""
    with torch.cuda.device(device):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = step()

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    return replay


def _adapt_weights(params: dict[str, torch.Tensor], x: torch.Tensor, target: torch.Tensor,
                   rates: list[float], precision: str, cuda_graph: bool = False,
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Plain SGD on L1(f(x[t]), target[t]) for every image t at once, each with
    its own copy of the weights (the tasks of the batched inner loop).

    params: shared weights; x, target: [T, C, H, W]. cuda_graph: the first
    WARMUP_STEPS steps run eagerly on a side stream, the step (forward,
    backward, update, with the rate in a device tensor) is then captured once
    as a CUDA graph and replayed for the remaining steps. Returns the adapted
    stacked weights {name: [T, ...]} and the loss before each step, [T, steps].
    """
    tasks = x.shape[0]
    names = list(params)
    weights = [p.detach().unsqueeze(0).repeat(tasks, *([1] * p.dim())).requires_grad_(True)
               for p in params.values()]
    rate = torch.zeros((), device=x.device)

    def step() -> torch.Tensor:
        with _autocast(x.device, precision, cache=not cuda_graph):
            out = stacked_forward(dict(zip(names, weights)), x[:, None])[:, 0]
        per_task = (out.float() - target).abs().flatten(1).mean(1)  # [T]; task t depends on its weights only
        grads = torch.autograd.grad(per_task.sum(), weights)
        with torch.no_grad():
            torch._foreach_mul_(grads, rate)
            torch._foreach_sub_(weights, grads)
        return per_task.detach()

    losses = torch.zeros(tasks, len(rates), device=x.device)
    eager = min(len(rates), WARMUP_STEPS) if cuda_graph else len(rates)
    with _side_stream(x.device) if cuda_graph else contextlib.nullcontext():
        for i in range(eager):
            rate.fill_(rates[i])
            losses[:, i] = step()
    if eager < len(rates):
        replay = _capture(step, x.device)
        for i in range(eager, len(rates)):
            rate.fill_(rates[i])
            losses[:, i] = replay()
    return {n: w.detach() for n, w in zip(names, weights)}, losses


def adapt(lr: torch.Tensor, kernel, scale: int = 2, steps: int = 10, model=None, mode: str | None = None,
          schedule: Sequence[float] | None = None, precision: str = "fp32", return_losses: bool = False,
          backprojection: bool = False, tile: int | None = None, backend: str | None = None,
          cuda_graph: bool = False):
    """Super-resolve LR images with MZSR(steps).

    lr: [C, H, W] or [B, C, H, W] in [0, 1]; the B images are adapted at once,
    each with its own weights (the tasks of the batched inner loop).
    kernel: [k, k] tensor, [B, k, k] (one per image), a preset name, a
    (theta, lambda1, lambda2) triple, a .npy/.mat path, or "auto": each
    image's kernel estimated from the image (mzsr_fast.blind.estimate_kernel,
    x2 only, for the subsampling mode of the son). model: None (the
    shipped bundled model for the preset's subsampling mode and the scale,
    pretrained.default_model), a bundled name, a .safetensors path or an
    MZSRNet (left unchanged). mode: "direct" or "bicubic" subsampling of the son
    (default: the model's). schedule: per-step learning rates (default: the
    model's row of the SPEC table). precision: "fp32" or "bf16" (autocast).
    tile: final inference on tiles of this many output pixels (bounded memory).
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
        raise ValueError(f"lr: image of {tuple(y.shape[-2:])} is smaller than the {k}x{k} kernel")
    rates = _schedule(schedule, info, steps)

    y = y.float()
    params = {n: p.detach().to(y.device, torch.float32) for n, p in net.named_parameters()}
    son = degrade(y, kernels.to(y.device), scale, mode=mode, backend=backend)
    # channels_last: the convolutions run about 1.3x (fp32) to 2x (bf16) faster on CPU.
    son_up = imresize(son, scale=scale, size=y.shape[-2:]).contiguous(memory_format=torch.channels_last)
    lr_up = imresize(y, scale=scale).contiguous(memory_format=torch.channels_last)
    adapted, losses = _adapt_weights(params, son_up, y, rates, precision, cuda_graph)

    def run(x):
        with torch.no_grad(), _autocast(x.device, precision):
            return stacked_forward(adapted, x[:, None])[:, 0].float()

    sr = forward_tiled(run, lr_up, tile).clamp(0, 1)
    if backprojection:
        sr = back_projection(sr, y, scale)
    sr = sr.squeeze(0) if was_3d else sr
    return (sr, losses) if return_losses else sr
