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

Schema (csrc/ops/conv3x3_winograd.cpp), a CPU kernel only:

    conv3x3_winograd(Tensor x, Tensor weight, Tensor? bias, bool relu) -> Tensor

The fake kernel (torch.compile) and autograd are registered here. The
backward is aten's convolution_backward at the ReLU's mask (the output's
zeros), so gradients are the exact convolution's and differentiable again.
"""
from __future__ import annotations

import torch

from .. import _checks, _extension

__all__ = ["conv3x3_winograd", "winograd_pays", "USE_WINOGRAD_FROM", "USE_WINOGRAD_FROM_PAIRS"]

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
    with weight [O, C, 3, 3]: float32 on the CPU, the op built, enough
    channels (USE_WINOGRAD_FROM, USE_WINOGRAD_FROM_PAIRS)."""
    out_channels, in_channels = weight.shape[:2]
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and min(out_channels, in_channels) >= USE_WINOGRAD_FROM
            and out_channels * in_channels >= USE_WINOGRAD_FROM_PAIRS
            and _extension.native_op("conv3x3_winograd") is not None)


def _check(x, weight, bias) -> None:
    for name, t in (("x", x), ("weight", weight)) + ((("bias", bias),) if bias is not None else ()):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{name}: expected float32 or float64, got dtype {t.dtype}")
        if t.device.type != "cpu":
            raise ValueError(f"{name}: expected a tensor on the CPU (the op has a CPU kernel only; on a GPU use "
                             f"torch.nn.functional.conv2d), got {t.device}")
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
    op = _extension.native_op("conv3x3_winograd")
    if op is None:
        raise RuntimeError(f"conv3x3_winograd: {_extension.LOAD_ERROR or 'the extension has no such op (rebuild it)'}")
    return op(x, weight, bias, bool(relu))


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


def _register() -> None:
    op = _extension.native_op("conv3x3_winograd")
    if op is None:
        return
    torch.library.register_fake("mzsr_fast::conv3x3_winograd", _fake)
    torch.library.register_autograd("mzsr_fast::conv3x3_winograd", _backward, setup_context=_setup_context)


_register()
