"""One test-time adaptation step of MZSRNet on the CPU, its gradients written
out instead of taken by autograd.

    losses = sgd_loss_step_(params, x, target, mask, rates, precision, loss)   # params {name: [T, ...]}, updated in place

Plain SGD on the loss (mzsr_fast.losses: L1, MZSR's, or a smooth one) of T
tasks, each with its own weights (the step of
adapt's _adapt_weights). Adaptation needs only the weights' first-order
gradients, so each task runs:
- the forward pass, keeping the input of every layer, with bias and ReLU
  inside each convolution (stacked.conv3x3_relu);
- the loss's gradient with respect to the output directly
  (losses.loss_and_gradient; for L1 sign(out - target) / the number of
  values counted), times the loss mask;
- the backward pass: aten's convolution_backward asked for the weight and
  bias gradients (on the maps cut into bands of the shape its kernel runs
  fastest on, Bands) and, except at the first layer, the input gradient
  (_input_gradient); the ReLU's backward written in place into the latter;
- the update p -= rate * g of maml.sgd_update_.
The same values as autograd through stacked_forward and losses.task_losses up to
float rounding (the weight gradients of banded maps, the float32 bias
gradients and the loss are summed in another order).
precision "fp32" takes the forward and input-gradient convolutions, the
values of single pixels, from oneDNN's direct kernels, the arithmetic of the
original TensorFlow implementation, and the weight gradients of the 64 -> 64
layers, each a sum over every pixel of the maps, from the Winograd kernel
(ops.conv3x3_winograd_weight_grad: as accurate, summed in another order, in
about 0.65x oneDNN's time); on the reference's pretrained network its
adaptation follows the original's to 1e-6. "tf32" (the fast float32 mode)
takes the forward and input-gradient convolutions of those layers from the
Winograd kernel too (ops.conv3x3_winograd), a step in about 0.85x fp32's
time. Since the L1 loss's gradient is the sign of each pixel's error, steps
that round differently can drift apart: with large learned rates, up to
about 1e-4 after ten steps, with no change in quality.
precision "bf16" runs the network in bfloat16 from explicit casts of the
input and the weights, as stacked's explicit strategy does under autocast:
the residual sum, the loss and its gradient in float32, the weight gradients
cast back to float32 before the update.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from .losses import check_loss, loss_and_gradient
from .maml import sgd_update_
from .model import CHANNELS
from .ops.conv3x3_winograd import conv3x3_winograd, conv3x3_winograd_weight_grad, winograd_pays
from .stacked import _channels_last, check_images, check_stacked, conv3x3_relu

__all__ = ["sgd_loss_step_", "PRECISIONS"]

# The precisions of a step (and of adapt): see sgd_loss_step_ and the module docstring.
PRECISIONS = ("fp32", "tf32", "bf16")

_LAYERS = len(CHANNELS) - 1
_CONV_BACKWARD = torch.ops.aten.convolution_backward.default
_RELU_BACKWARD = torch.ops.aten.threshold_backward.grad_input
# The shapes oneDNN's weight-gradient kernels (channels-last, one thread)
# run fastest on, measured on Zen 4: float32 on rows of at least WIDE_ROWS
# pixels (about a quarter faster than on rows of 128 or fewer), bfloat16 on
# a batch of maps of at most BF16_ROWS rows (a quarter faster than on one
# 256 x 256 map). Their forward and input gradient do not care. The weight
# gradients are taken on copies of the maps cut into bands of rows that have
# those shapes (Bands).
WIDE_ROWS = 256
BF16_ROWS = 32


class Bands:
    """Maps [N, C, H, W] cut into `bands` bands of `rows` rows each, P = N
    bands pieces, laid side by side (float32) or stacked as a batch (bf16),
    so that a convolution without padding of the input's pieces (each with
    one row and one column of context on every side: the image's
    neighbouring rows, zeros outside it) gives the output gradient's pieces
    (zeros between them side by side) the weight gradient of the whole maps:
    the same sum of products, in another order."""

    def __init__(self, x: torch.Tensor):
        n, _, h, w = x.shape
        self.side_by_side = x.dtype == torch.float32 and w + 2 < WIDE_ROWS
        bands = min(-(-WIDE_ROWS // (n * (w + 2))), h) if self.side_by_side else \
            -(-h // BF16_ROWS) if x.dtype == torch.bfloat16 else 1
        self.rows = -(-h // bands)
        self.bands = -(-h // self.rows)
        # side by side, several pieces; as a batch, more pieces than images
        self.used = n * self.bands > 1 if self.side_by_side else self.bands > 1

    def cut(self, t: torch.Tensor, context: bool) -> torch.Tensor:
        """t [N, C, H, W] channels-last cut into pieces, with (the input) or
        without (the output gradient) context: side by side [1, C, rows (+ 2),
        P (W + 2) (- 2)], as a batch [P, C, rows (+ 2), W (+ 2)], channels-last."""
        n, c, h, w = t.shape
        e, pieces = int(context), n * self.bands  # e: context pixels on each side
        height, width = self.rows + 2 * e, w + 2 * e  # of a piece
        if self.side_by_side:
            out = t.new_empty(1, height, pieces * (w + 2) - 2 * (1 - e), c)  # channels-last storage
            piece = lambda p: out[0, :, p * (w + 2):p * (w + 2) + width]  # noqa: E731
            if not context:  # the zero columns between the pieces
                out[0, :, w::w + 2] = 0
                out[0, :, w + 1::w + 2] = 0
        else:
            out = t.new_empty(pieces, height, width, c)
            piece = out.__getitem__
        rows = t.permute(0, 2, 3, 1)  # [N, H, W, C]
        for i in range(n):
            for b in range(self.bands):
                into, top = piece(i * self.bands + b), b * self.rows
                first, last = max(top - e, 0), min(top + self.rows + e, h)  # t's rows in the piece
                if context:
                    into[:, 0] = 0
                    into[:, width - 1] = 0
                into[:first - top + e] = 0
                into[first - top + e:last - top + e, e:e + w] = rows[i, first:last]
                into[last - top + e:] = 0
        return out.permute(0, 3, 1, 2)


def _weight_gradients(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bands: Bands,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias gradients of y = conv3x3(x, weight, bias) (padding
    1) for grad = dL/dy: where Winograd pays, the weight gradient by
    Winograd (ops.conv3x3_winograd_weight_grad), else oneDNN's on the maps
    cut into bands where bands.used, else directly. x [N, C, H, W], grad
    [N, C', H, W], both channels-last -> ([C', C, 3, 3], [C']). The bias
    gradient is grad's sum in float32 (oneDNN takes 5-10% longer for its
    weight gradient with it) and oneDNN's in bf16 (a bf16 sum in float32
    converts the map first)."""
    in_onednn = grad.dtype != torch.float32
    bias = [weight.shape[0]] if in_onednn else None
    if winograd_pays(x, weight):  # float32 only: its bias gradient is the sum below
        grad_weight = conv3x3_winograd_weight_grad(grad, x)
    elif bands.used:
        grad_weight, grad_bias = _CONV_BACKWARD(bands.cut(grad, context=False), bands.cut(x, context=True), weight,
                                                bias, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                                                [False, True, in_onednn])[1:]
    else:
        grad_weight, grad_bias = _CONV_BACKWARD(grad, x, weight, bias, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                                [False, True, in_onednn])[1:]
    return grad_weight, grad_bias if in_onednn else grad.sum((0, 2, 3))


def _input_gradient(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, winograd: bool) -> torch.Tensor:
    """dL/dx of y = conv3x3(x, weight) (padding 1) for grad = dL/dy: with
    winograd where it pays, the Winograd convolution of grad with the
    weight's channels swapped and its taps reversed, else oneDNN's
    input-gradient kernel. grad [N, C', H, W], x [N, C, H, W], both
    channels-last, weight [C', C, 3, 3] -> [N, C, H, W]."""
    if winograd and winograd_pays(grad, weight):
        return conv3x3_winograd(grad, weight.transpose(0, 1).flip(2, 3))
    return _CONV_BACKWARD(grad, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, False, False])[0]


def _task_gradients(layers: list[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor, target: torch.Tensor,
                    mask: torch.Tensor | None, dtype: torch.dtype | None, winograd: bool, loss: str,
                    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """One task's loss (a losses.LOSSES name) and the gradients of its (weight, bias) per layer,
    in the weights' dtype. x, target [N, C, h, w]; mask [N, 1, h, w] or
    None; dtype: the network's compute dtype (None: the weights');
    winograd: the Winograd kernel for the forward and input-gradient
    convolutions where it pays (the weight gradients take it wherever it
    pays, in every precision that is float32)."""
    x = _channels_last(x)
    param_dtype = layers[0][0].dtype
    if dtype is not None:
        layers = [(w.to(dtype), b.to(dtype)) for w, b in layers]
    h = x if dtype is None else x.to(dtype)
    inputs = []  # each layer's input, for its weight gradient (and the ReLU's backward before it)
    for weight, bias in layers[:-1]:
        inputs.append(h)
        h = conv3x3_relu(h, weight, bias, winograd)
    inputs.append(h)
    weight, bias = layers[-1]
    value, grad = loss_and_gradient(loss, x + F.conv2d(h, weight, bias, padding=1).to(x.dtype), target, mask)
    if dtype is not None:
        grad = grad.to(dtype)
    bands = Bands(h)
    grads = [None] * len(layers)
    for i in reversed(range(len(layers))):
        below = None
        if i > 0:
            below = _input_gradient(grad, inputs[i], layers[i][0], winograd)
            below = _RELU_BACKWARD(below, inputs[i], 0, grad_input=below)
        grads[i] = tuple(g.to(param_dtype) for g in _weight_gradients(grad, inputs[i], layers[i][0], bands))
        grad = below
    return value, grads


def sgd_loss_step_(params: Mapping[str, torch.Tensor], x: torch.Tensor, target: torch.Tensor,
                   mask: torch.Tensor | None, rates: Sequence, precision: str = "fp32", loss: str = "l1",
                   ) -> torch.Tensor:
    """One SGD step on the loss of each task t, params[name][t] -= rate *
    gradient, in place. params: {MZSRNet name: [T, ...]} on the CPU (float32,
    or float64 for tests); x, target [T, N, 3, h, w] of that dtype; mask
    [T, N, 1, h, w] (1 where a pixel's loss counts) or None (every pixel);
    rates: one float or 0-d tensor per entry of params, in its order;
    precision: "fp32", "tf32" (all Winograd convolutions, see above) or "bf16";
    loss: one of losses.LOSSES ("l1", MZSR's).
    Returns the loss of every task before the step, [T]."""
    check_images(x, "x")
    check_stacked(params, x.shape[0])
    if x.device.type != "cpu":
        raise ValueError(f"x: expected a tensor on the CPU, got {x.device}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    check_loss(loss)
    if len(rates) != len(params):
        raise ValueError(f"rates: expected one per parameter tensor ({len(params)}), got {len(rates)}")
    dtype = torch.bfloat16 if precision == "bf16" else None
    names = [(f"layers.{i}.weight", f"layers.{i}.bias") for i in range(_LAYERS)]
    losses = []
    with torch.no_grad():
        for t in range(x.shape[0]):
            layers = [(params[w][t], params[b][t]) for w, b in names]
            value, grads = _task_gradients(layers, x[t], target[t], None if mask is None else mask[t], dtype,
                                           precision == "tf32", loss)
            grads = {name: g for pair, pair_grads in zip(names, grads) for name, g in zip(pair, pair_grads)}
            sgd_update_([p[t] for p in params.values()], [grads[name] for name in params], list(rates))
            losses.append(value)
    return torch.stack(losses)
