"""MZSRNet over T tasks at once, each task with its own weights ("stacked"
parameters: every tensor gets a leading task axis [T, ...]).

    out = stacked_forward(params, x)     # params {name: [T, ...]}, x [T, N, 3, H, W]

Strategies (STRATEGIES), all exact and differentiable to any order (without
autograd, "explicit" runs its float32 64 -> 64 layers on the CPU by Winograd,
conv3x3_relu: the same sums in another order):

- "loop": a Python loop over the tasks, functional_forward (F.conv2d) on
  each; the plain way.
- "loop_cl": the same over channels-last activations (oneDNN's native layout
  on CPU: no reorders around each convolution).
- "explicit": "loop_cl" through explicit autograd functions for the
  convolution and the ReLU whose backward is itself differentiable and
  whose double backward (second-order MAML) calls the weight- and
  input-gradient convolution kernels directly, instead of PyTorch's generic
  double backward (weight gradient as a batch/channel-transposed convolution
  with a 64x64 kernel and transposing copies, and zero-filled gradients of
  the ReLU mask). Under autocast it casts x and the weights to the
  autocast dtype explicitly (autocast off inside), so the explicit double
  backward runs in that dtype too.
- "grouped": tasks folded into channels, one grouped convolution per layer
  (groups=T).
- "vmap": torch.func.vmap of functional_forward.

PREFERRED_STRATEGY picks one per device type from measurements.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from .model import CHANNELS, functional_forward
from .ops.conv3x3_winograd import conv3x3_winograd, winograd_pays

__all__ = ["stacked_forward", "stack_params", "STRATEGIES", "PREFERRED_STRATEGY", "conv3x3", "relu", "conv3x3_relu"]

_LAYERS = len(CHANNELS) - 1
_CONV_BACKWARD = torch.ops.aten.convolution_backward.default


# ---------------------------------------------------------------------------
# Explicit autograd for conv3x3 (stride 1, padding 1) and ReLU
# ---------------------------------------------------------------------------

def _conv_grads(grad_out, x, weight, groups: int, mask: tuple[bool, bool, bool]):
    """(grad_x, grad_weight, grad_bias) of y = conv3x3(x, weight, bias), None where mask is False."""
    bias_sizes = [weight.shape[0]] if mask[2] else None
    return _CONV_BACKWARD(grad_out, x, weight, bias_sizes, [1, 1], [1, 1], [1, 1], False, [0, 0], groups, list(mask))


class _Conv(torch.autograd.Function):
    """y = conv2d(x, weight, bias, padding=1, groups=groups)."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups):
        ctx.save_for_backward(x, weight)
        ctx.groups = groups
        return F.conv2d(x, weight, bias, padding=1, groups=groups)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b, _ = ctx.needs_input_grad
        grad_x, grad_w, grad_b = _ConvGrad.apply(grad_out, x, weight, ctx.groups, (need_x, need_w, need_b))
        return grad_x, grad_w, grad_b, None


class _ConvGrad(torch.autograd.Function):
    """(grad_out, x, weight) -> (grad_x, grad_weight, grad_bias) of the convolution.

    grad_x is bilinear in (grad_out, weight), grad_weight in (x, grad_out),
    grad_bias linear in grad_out, so with incoming gx, gw, gb:
      d/d grad_out = conv(gx, weight) + conv(x, gw) + gb
      d/d x        = input-gradient of conv with weight gw at grad_out
      d/d weight   = weight-gradient of conv with input gx at grad_out
    each written with _Conv / _ConvGrad again: differentiable to any order.
    """

    @staticmethod
    def forward(ctx, grad_out, x, weight, groups, mask):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(grad_out, x, weight)
        ctx.groups = groups
        return tuple(_conv_grads(grad_out, x, weight, groups, mask))

    @staticmethod
    def backward(ctx, gx, gw, gb):
        grad_out, x, weight = ctx.saved_tensors
        need_grad_out, need_x, need_w, _, _ = ctx.needs_input_grad
        groups = ctx.groups
        d_grad_out = d_x = d_w = None
        if need_grad_out:
            terms = []
            if gx is not None:
                terms.append(_Conv.apply(gx, weight, gb, groups))  # the bias term rides along
                gb = None
            if gw is not None:
                terms.append(_Conv.apply(x, gw, gb, groups))
                gb = None
            if gb is not None:
                terms.append(gb.view(1, -1, 1, 1).expand_as(grad_out))
            if terms:
                d_grad_out = terms[0] if len(terms) == 1 else terms[0] + terms[1]
        if need_x and gw is not None:
            d_x = _ConvGrad.apply(grad_out, x, gw, groups, (True, False, False))[0]
        if need_w and gx is not None:
            d_w = _ConvGrad.apply(grad_out, gx, weight, groups, (False, True, False))[1]
        return d_grad_out, d_x, d_w, None, None


class _ReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = x.clamp_min(0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        (y,) = ctx.saved_tensors
        return _ReLUGrad.apply(grad_y, y)


class _ReLUGrad(torch.autograd.Function):
    """grad_y * (y > 0): linear in grad_y; its derivative wrt y is zero almost
    everywhere (PyTorch's formula too), returned as None instead of zeros."""

    @staticmethod
    def forward(ctx, grad_y, y):
        ctx.save_for_backward(y)
        return torch.ops.aten.threshold_backward(grad_y, y, 0)

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return _ReLUGrad.apply(grad, y), None


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, groups: int = 1) -> torch.Tensor:
    """F.conv2d(x, weight, bias, padding=1, groups=groups) with the explicit
    (cheaper, any-order) backward of this module."""
    return _Conv.apply(x, weight, bias, groups)


def relu(x: torch.Tensor) -> torch.Tensor:
    """F.relu with the explicit backward of this module (no zero gradients)."""
    return _ReLU.apply(x)


@functools.cache
def _pointwise_conv():
    """oneDNN's convolution with post-ops (CPU), None in a torch built without oneDNN."""
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_convolution_pointwise", None)


def conv3x3_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 winograd: bool = True) -> torch.Tensor:
    """relu(conv3x3(x, weight, bias)), differentiable like them. Where no
    gradient is wanted, on the CPU, in one kernel with the ReLU inside: with
    winograd, the Winograd convolution where it pays (float32, many
    channels: ops.conv3x3_winograd; the same sums in another order), else
    oneDNN's convolution with the ReLU as its post-op (the same values as
    conv then relu). x [N, C, H, W] (channels-last for speed), weight
    [C', C, 3, 3], bias [C'] -> [N, C', H, W]."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return relu(conv3x3(x, weight, bias))
    if winograd and winograd_pays(x, weight):
        return conv3x3_winograd(x, weight, bias, relu=True)
    fused = _pointwise_conv()
    if fused is not None and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) \
            and torch.backends.mkldnn.enabled:
        return fused(x, weight, bias, [1, 1], [1, 1], [1, 1], 1, "relu", [], "")
    return F.conv2d(x, weight, bias, padding=1).relu_()


def _explicit_forward(params: Mapping[str, torch.Tensor], x: torch.Tensor,
                      compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """functional_forward through conv3x3/relu; with compute_dtype (bf16 under
    autocast) the layers run in that dtype from explicit casts of x and the
    weights, and the residual sum is taken in x's dtype. The casts are part of
    the graph, so gradients reach the parameters in their own dtype."""
    cast = (lambda t: t.to(compute_dtype)) if compute_dtype is not None else (lambda t: t)
    h = cast(x)
    for i in range(_LAYERS):
        weight, bias = cast(params[f"layers.{i}.weight"]), cast(params[f"layers.{i}.bias"])
        h = conv3x3_relu(h, weight, bias) if i < _LAYERS - 1 else conv3x3(h, weight, bias)
    return x + h.to(x.dtype)


# ---------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------

def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """x [N, C, H, W] in channels-last layout with canonical strides.

    A slice of a larger tensor can be channels-last contiguous yet carry a
    non-canonical stride on a size-1 batch axis (x[:, None].unbind(0) gives
    [1, C, H, W] with batch stride C). is_contiguous(channels_last) accepts
    it, so .contiguous() keeps it, but suggest_memory_format() reads it as
    NCHW and the convolutions then run in NCHW with reorders: 1.4x (fp32) to
    10x (bf16, first layer) slower. The stride of a size-1 axis addresses
    nothing, so restriding it is free.
    """
    if not x.is_contiguous(memory_format=torch.channels_last):
        return x.contiguous(memory_format=torch.channels_last)
    n, c, h, w = x.shape
    if x.stride() == (h * w * c, 1, w * c, c):
        return x
    return x.as_strided(x.shape, (h * w * c, 1, w * c, c))


def _per_task(params: Mapping[str, torch.Tensor], x: torch.Tensor, net: Callable,
              channels_last: bool) -> torch.Tensor:
    names = list(params)
    # unbind, not params[k][t]: its backward is one stack, indexing's is T zero-filled copies.
    weights = list(zip(*(params[k].unbind(0) for k in names)))
    outs = []
    for t, xt in enumerate(x.unbind(0)):
        if channels_last:
            xt = _channels_last(xt)
        outs.append(net(dict(zip(names, weights[t])), xt))
    return torch.stack(outs)


def _forward_loop(params, x):
    return _per_task(params, x, functional_forward, channels_last=False)


def _forward_loop_cl(params, x):
    return _per_task(params, x, functional_forward, channels_last=True)


def _forward_explicit(params, x):
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return _per_task(params, x, _explicit_forward, channels_last=True)
    # Autocast would not redo its casts inside the explicit backward: cast
    # explicitly instead, with autocast off.
    dtype = torch.get_autocast_dtype(device)
    with torch.autocast(device, enabled=False):
        return _per_task(params, x, lambda p, xt: _explicit_forward(p, xt, dtype), channels_last=True)


def _forward_grouped(params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    tasks, n, c, h, w = x.shape
    inp = x.transpose(0, 1).reshape(n, tasks * c, h, w)  # channels of task t: [t c, (t + 1) c)
    out = inp
    for i in range(_LAYERS):
        weight, bias = params[f"layers.{i}.weight"], params[f"layers.{i}.bias"]
        out = F.conv2d(out, weight.reshape(-1, *weight.shape[2:]), bias.reshape(-1), padding=1, groups=tasks)
        if i < _LAYERS - 1:
            out = F.relu(out)
    return (inp + out).reshape(n, tasks, c, h, w).transpose(0, 1)


def _forward_vmap(params, x):
    return torch.func.vmap(functional_forward)(dict(params), x)


# name -> forward(params {name: [T, ...]}, x [T, N, C, H, W]) -> [T, N, C, H, W]
STRATEGIES: dict[str, Callable] = {"loop": _forward_loop, "loop_cl": _forward_loop_cl,
                                   "explicit": _forward_explicit, "grouped": _forward_grouped,
                                   "vmap": _forward_vmap}

# Fastest strategy per device type. On the CPU, oneDNN runs channels-last
# convolutions without reorders, and "explicit"'s double backward replaces
# PyTorch's transposed-convolution weight gradient (second order 20-30% faster
# than loop_cl; first order within noise); grouped convolution and vmap are
# slower there (`python benchmarks/bench_maml.py strategies`; the measured
# tables are in benchmarks/results/cpu-2026-11-25.md). On a GPU, grouped folds
# the T launches per layer into one; that entry is the usual choice, not yet
# measured (no GPU has been lent).
PREFERRED_STRATEGY = {"cpu": "explicit", "cuda": "grouped"}


def stack_params(params: Mapping[str, torch.Tensor], tasks: int) -> dict[str, torch.Tensor]:
    """dict name -> [tasks, ...]: every task starts from the same tensor (an
    expand view, no copy; gradients wrt it sum into the original)."""
    if isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 1:
        raise ValueError(f"tasks: expected an integer >= 1, got {tasks!r}")
    return {name: p.unsqueeze(0).expand(tasks, *p.shape) for name, p in params.items()}


def choose_strategy(strategy: str | None, device: torch.device) -> Callable:
    """The forward of strategy (None: PREFERRED_STRATEGY for device's type)."""
    if strategy is None:
        strategy = PREFERRED_STRATEGY.get(device.type, "loop")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {tuple(STRATEGIES)} or None, got {strategy!r}")
    return STRATEGIES[strategy]


def check_stacked(params: Mapping[str, torch.Tensor], tasks: int, name: str = "params") -> None:
    """Raise unless params holds every MZSRNet parameter with a leading axis of size tasks."""
    if not isinstance(params, Mapping):
        raise TypeError(f"{name}: expected a dict name -> tensor, got {type(params).__name__}")
    missing = [k for i in range(_LAYERS) for k in (f"layers.{i}.weight", f"layers.{i}.bias") if k not in params]
    if missing:
        raise ValueError(f"{name}: missing MZSRNet parameters {missing}")
    for k, p in params.items():
        if not isinstance(p, torch.Tensor) or p.dim() < 1 or p.shape[0] != tasks:
            shape = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
            raise ValueError(f"{name}[{k!r}]: expected a stacked tensor [T={tasks}, ...], got {shape}")


def check_images(x, name: str) -> None:
    """Raise unless x is a floating [T, N, 3, H, W] tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 5 or x.shape[2] != CHANNELS[0]:
        raise ValueError(f"{name}: expected [T, N, {CHANNELS[0]}, H, W], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")


def stacked_forward(params: Mapping[str, torch.Tensor], x: torch.Tensor, strategy: str | None = None) -> torch.Tensor:
    """MZSRNet of T tasks at once: params {name: [T, ...]} (MZSRNet names),
    x [T, N, 3, H, W] -> [T, N, 3, H, W], out[t] = f(params[:][t], x[t]).
    Differentiable wrt params and x to any order. strategy: see STRATEGIES
    (None: PREFERRED_STRATEGY for x's device)."""
    check_images(x, "x")
    check_stacked(params, x.shape[0])
    return choose_strategy(strategy, x.device)(params, x)
