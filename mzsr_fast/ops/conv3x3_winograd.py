"""conv3x3_winograd: a 3x3 convolution (stride 1, zero padding 1) with an
optional bias and ReLU, by Winograd's minimal filtering F(2x2, 3x3), on the CPU.

    y = conv3x3_winograd(x, weight, bias=None, relu=False)
    # x [N, C, H, W], weight [O, C, 3, 3], bias [O] or None -> [N, O, H, W], channels-last

Every 2x2 block of outputs is computed from the 4x4 window of input around it
with 16 products per input and output channel instead of 36, as 16 matrix
products over the channels (csrc/ops/cpu/conv3x3_winograd.cpp). On 64 -> 64
channel maps this is faster than oneDNN's direct convolution on CPUs without
AMX (benchmarks/bench_conv3x3_winograd.py); with few channels it is not, so
callers pick it per layer (winograd_pays).

Numerics: the same products summed in another order, through transforms whose
coefficients are 0, +-1 and +-1/2, which also pair each input with filter
taps the direct sum does not: an output's rounding error scales with the
magnitudes in its tile's 4x4 input window times those of the whole 3x3
filter, not with the sum of |products| alone (tests/ops/test_conv3x3_winograd.py
bounds it). On maps of like magnitudes, as a network's, that is the error of a
direct float32 convolution or less; one pixel 10^4 times its neighbours moves
them by its own rounding. The transforms add and subtract inputs, so an
infinite input gives NaN (inf - inf) where F.conv2d gives +-inf, and inputs
within 4x of the float maximum can overflow. float64 is supported for tests.

conv3x3_winograd_weight_grad(grad, x) is the weight gradient of the same
convolution by the same tiles (the adaptation steps' weight gradients in float32).

Schemas (csrc/ops/conv3x3_winograd.cpp), CPU kernels only:

    conv3x3_winograd(Tensor x, Tensor weight, Tensor? bias, bool relu) -> Tensor
    conv3x3_winograd_weight_grad(Tensor grad, Tensor x) -> Tensor

The fake kernels (torch.compile) and autograd are registered here. The
convolution's backward is aten's convolution_backward at the ReLU's mask
(the output's zeros), so gradients are the exact convolution's and
differentiable again; the weight gradient's is that of a bilinear map.
"""
from __future__ import annotations

import functools

import torch

from .. import _extension
from ..dispatch import unavailable_reason

__all__ = ["conv3x3_winograd", "conv3x3_winograd_weight_grad", "winograd_pays", "USE_WINOGRAD_FROM",
           "USE_WINOGRAD_FROM_PAIRS"]

# When winograd_pays: at least USE_WINOGRAD_FROM channels in and out and
# USE_WINOGRAD_FROM_PAIRS (input, output) channel pairs. On Zen 4, one thread,
# 256x256, its time over oneDNN's fused convolution: 64 -> 64 0.70, 32 -> 32
# 0.77, 16 -> 64 0.88, 64 -> 16 0.90, but 16 -> 16 1.19, 8 -> 8 2.9, 3 -> 64
# 2.5, 64 -> 3 1.9 (thin GEMMs; MZSRNet's first and last layers).
USE_WINOGRAD_FROM = 16
USE_WINOGRAD_FROM_PAIRS = 1024
_CONV_BACKWARD = torch.ops.aten.convolution_backward.default


def winograd_pays(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether conv3x3_winograd is the faster way to convolve x [N, C, H, W]
    with weight [O, C, 3, 3] (and conv3x3_winograd_weight_grad the faster
    way to its weight gradient): float32 on the CPU, both ops built (from one
    source file), enough channels (USE_WINOGRAD_FROM, USE_WINOGRAD_FROM_PAIRS)."""
    out_channels, in_channels = weight.shape[:2]
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and min(out_channels, in_channels) >= USE_WINOGRAD_FROM
            and out_channels * in_channels >= USE_WINOGRAD_FROM_PAIRS
            and _built())


@functools.cache
def _built() -> bool:
    """Whether the extension has both ops' CPU kernels (asked once: winograd_pays runs per layer)."""
    return unavailable_reason("cpu", "conv3x3_winograd", "cpu") is None


def _native(name: str) -> torch._ops.OpOverload:
    """The op mzsr_fast::name, or a RuntimeError saying why it is missing."""
    op = _extension.native_op(name)
    if op is None:
        raise RuntimeError(f"{name}: {_extension.LOAD_ERROR or 'the extension has no such op (rebuild it)'}")
    return op


def _check_tensors(**tensors) -> None:
    """Each named tensor a float32/float64 CPU tensor (None skipped)."""
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{name}: expected float32 or float64, got dtype {t.dtype}")
        if t.device.type != "cpu":
            raise ValueError(f"{name}: expected a tensor on the CPU (the op has a CPU kernel only; on a GPU use "
                             f"torch.nn.functional.conv2d), got {t.device}")


def _check(x, weight, bias) -> None:
    _check_tensors(x=x, weight=weight, bias=bias)
    if x.dim() != 4:
        raise ValueError(f"x: expected [N, C, H, W], got shape {tuple(x.shape)}")
    if weight.dim() != 4 or tuple(weight.shape[1:]) != (x.shape[1], 3, 3):
        raise ValueError(f"weight: expected [O, {x.shape[1]}, 3, 3], got shape {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias: expected [{weight.shape[0]}], got shape {tuple(bias.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != x.dtype:
            raise TypeError(f"{name}: expected dtype {x.dtype} like x, got {t.dtype}")


def conv3x3_winograd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     relu: bool = False) -> torch.Tensor:
    """conv2d(x, weight, bias, padding=1), then max(., 0) when relu, by
    Winograd F(2x2, 3x3) on the CPU. x [N, C, H, W] (channels-last for
    speed), weight [O, C, 3, 3], bias [O] or None, float32 or float64 ->
    [N, O, H, W] channels-last. Differentiable wrt x, weight and bias."""
    _check(x, weight, bias)
    return _native("conv3x3_winograd")(x, weight, bias, bool(relu))


def conv3x3_winograd_weight_grad(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The weight gradient of y = conv3x3(x, weight) (padding 1) for grad =
    dL/dy, by Winograd F(2x2, 3x3) on the CPU: the tiles of the forward, their
    output gradients transformed, one matrix product per chunk of tiles
    accumulated. grad [N, O, H, W], x [N, C, H, W] (channels-last for speed),
    float32 or float64 -> [O, C, 3, 3]. Differentiable wrt grad and x."""
    _check_tensors(grad=grad, x=x)
    if x.dim() != 4:
        raise ValueError(f"x: expected [N, C, H, W], got shape {tuple(x.shape)}")
    n, _, h, w = x.shape
    if grad.dim() != 4 or (grad.shape[0], grad.shape[2], grad.shape[3]) != (n, h, w):
        raise ValueError(f"grad: expected [{n}, O, {h}, {w}] like x's batch and size, got shape {tuple(grad.shape)}")
    if grad.dtype != x.dtype:
        raise TypeError(f"grad: expected dtype {x.dtype} like x, got {grad.dtype}")
    return _native("conv3x3_winograd_weight_grad")(grad, x)


def _fake(x, weight, bias, relu):
    return torch.empty((x.shape[0], weight.shape[0], x.shape[2], x.shape[3]), dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last)


def _setup_context(ctx, inputs, output):
    x, weight, bias, relu = inputs
    ctx.save_for_backward(x, weight, output if relu else None)
    ctx.has_bias = bias is not None


def _backward(ctx, grad):
    x, weight, output = ctx.saved_tensors
    if output is not None:
        grad = torch.where(output > 0, grad, torch.zeros((), dtype=grad.dtype))
    need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
    grad_x, grad_weight, grad_bias = _CONV_BACKWARD(
        grad, x, weight, [weight.shape[0]] if ctx.has_bias else None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
        [need_x, need_weight, need_bias and ctx.has_bias])
    return grad_x, grad_weight, grad_bias, None


def _weight_grad_fake(grad, x):
    return grad.new_empty(grad.shape[1], x.shape[1], 3, 3)


def _weight_grad_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _weight_grad_backward(ctx, grad_weight):
    """The weight gradient is bilinear in (grad, x): its derivative wrt grad
    is the convolution of x with grad_weight, wrt x the input gradient of
    that convolution at grad (aten ops, differentiable again)."""
    grad, x = ctx.saved_tensors
    need_grad, need_x = ctx.needs_input_grad
    d_grad = torch.nn.functional.conv2d(x, grad_weight, padding=1) if need_grad else None
    d_x = _CONV_BACKWARD(grad, x, grad_weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                         [True, False, False])[0] if need_x else None
    return d_grad, d_x


def _register() -> None:
    if _extension.native_op("conv3x3_winograd") is not None:
        torch.library.register_fake("mzsr_fast::conv3x3_winograd", _fake)
        torch.library.register_autograd("mzsr_fast::conv3x3_winograd", _backward, setup_context=_setup_context)
    if _extension.native_op("conv3x3_winograd_weight_grad") is not None:
        torch.library.register_fake("mzsr_fast::conv3x3_winograd_weight_grad", _weight_grad_fake)
        torch.library.register_autograd("mzsr_fast::conv3x3_winograd_weight_grad", _weight_grad_backward,
                                        setup_context=_weight_grad_setup_context)


_register()
