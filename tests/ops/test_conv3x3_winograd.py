"""conv3x3_winograd against the plain-PyTorch reference (mzsr_fast.reference.conv3x3_winograd,
F.conv2d in float64) on random inputs of odd shapes (sizes that leave half tiles at
the right and bottom edges, one pixel, more channels than a vector), forward and
backward, plus torch.library.opcheck, gradcheck and gradgradcheck in float64.

Tolerance, from the arithmetic of F(2x2, 3x3): an output is a dot product of C x 16
transformed inputs and filters. The rows of B^T and A^T hold at most two +-1 and
G's at most three +-1/2, so each transform sums at most 4 x 4 terms and a
transformed value is at most 4 (input) or 9/4 (filter) times the sum of |values|
that enter it; rounding each addition costs at most one unit eps relative to the
running sum. Summed over the (C x 16) products, the four transform stages and the
bias, |y - exact| <= (C x 16 + 8) eps x 9 x (|x| * |w| + |b|), with * the
convolution of the magnitudes (the products' magnitudes, grown by the transforms'
factor 4 x 9/4 = 9 at most). Actual errors are far below (a random walk, not a sum
of worst cases); the bound keeps a wrong transform or tap (an error of the order of
the output itself) from passing.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mzsr_fast import stacked
from mzsr_fast.ops import conv3x3_winograd as glue
from mzsr_fast.ops.conv3x3_winograd import conv3x3_winograd, winograd_pays
from mzsr_fast.reference.conv3x3_winograd import conv3x3 as reference

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(glue._extension.native_op("conv3x3_winograd") is None,
                                 reason=f"the extension has no conv3x3_winograd: {glue._extension.LOAD_ERROR}")]

# (N, C, O, H, W): half tiles at both edges, one pixel, C != O, 64 -> 64 as MZSRNet.
SHAPES = [(1, 5, 4, 1, 1), (2, 3, 7, 7, 9), (1, 64, 64, 13, 10), (3, 17, 16, 8, 3), (1, 1, 1, 2, 5)]


def _problem(n, c, o, h, w, dtype, seed=0, bias=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64).to(dtype)
    weight = (torch.randn(o, c, 3, 3, generator=gen, dtype=torch.float64) / (3 * c ** 0.5)).to(dtype)
    b = torch.randn(o, generator=gen, dtype=torch.float64).to(dtype) if bias else None
    return x.contiguous(memory_format=torch.channels_last), weight, b


def _bound(x, weight, bias) -> torch.Tensor:
    """The module docstring's bound on |y - exact| per output, [N, O, H, W]."""
    eps = torch.finfo(x.dtype).eps
    size = F.conv2d(x.double().abs(), weight.double().abs(), None if bias is None else bias.double().abs(), padding=1)
    return (x.shape[1] * 16 + 8) * eps * 9 * size


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_equals_the_reference(shape, relu, dtype):
    x, weight, bias = _problem(*shape, dtype)
    got = conv3x3_winograd(x, weight, bias, relu)
    exact = reference(x.double(), weight.double(), bias.double(), relu)
    assert got.shape == exact.shape and got.dtype == dtype
    assert got.is_contiguous(memory_format=torch.channels_last)
    error = (got.double() - exact).abs()
    assert bool((error <= _bound(x, weight, bias)).all()), f"largest error {error.max().item():.3e}"


def test_float32_error_is_of_float32_rounding():
    """Next to oneDNN's direct convolution on the same 64 -> 64 maps: the same order of error."""
    x, weight, bias = _problem(1, 64, 64, 33, 31, torch.float32, seed=3)
    exact = reference(x.double(), weight.double(), bias.double())
    winograd = (conv3x3_winograd(x, weight, bias).double() - exact).abs().max().item()
    direct = (F.conv2d(x, weight, bias, padding=1).double() - exact).abs().max().item()
    assert winograd <= 4 * direct, (winograd, direct)


def test_without_bias_and_from_any_layout():
    x, weight, _ = _problem(2, 6, 5, 9, 7, torch.float64, bias=False)
    exact = reference(x, weight)
    for layout in (x, x.contiguous(), x.transpose(2, 3).contiguous().transpose(2, 3)):
        torch.testing.assert_close(conv3x3_winograd(layout, weight), exact, rtol=0, atol=1e-13)


def test_nan_stays_nan_through_the_relu():
    x, weight, bias = _problem(1, 4, 3, 6, 6, torch.float32)
    x[0, 1, 2, 3] = float("nan")
    got = conv3x3_winograd(x, weight, bias, relu=True)
    expected = reference(x, weight, bias, relu=True)
    assert torch.equal(got.isnan(), expected.isnan()) and got.isnan().any()


def test_empty_batch_and_no_input_channels():
    x, weight, bias = _problem(0, 3, 4, 5, 5, torch.float32)
    assert conv3x3_winograd(x, weight, bias).shape == (0, 4, 5, 5)
    x, weight, bias = _problem(1, 0, 4, 5, 5, torch.float32)
    torch.testing.assert_close(conv3x3_winograd(x, weight, bias, relu=True),
                               bias.clamp_min(0).view(1, 4, 1, 1).expand(1, 4, 5, 5), rtol=0, atol=0)


def test_threads_split_the_tiles_without_changing_a_bit():
    x, weight, bias = _problem(2, 16, 16, 37, 41, torch.float32)
    one = conv3x3_winograd(x, weight, bias, relu=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert torch.equal(conv3x3_winograd(x, weight, bias, relu=True), one)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("relu", [False, True])
def test_gradients_equal_the_references(relu):
    x, weight, bias = _problem(2, 5, 4, 7, 6, torch.float64)
    ours = [t.clone().requires_grad_() for t in (x, weight, bias)]
    theirs = [t.clone().requires_grad_() for t in (x, weight, bias)]
    grad = torch.randn(2, 4, 7, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    conv3x3_winograd(*ours, relu).backward(grad)
    reference(*theirs, relu).backward(grad)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("relu", [False, True])
def test_gradcheck_and_gradgradcheck(relu):
    inputs = [t.requires_grad_() for t in _problem(1, 3, 2, 5, 4, torch.float64)]
    fn = lambda x, w, b: conv3x3_winograd(x, w, b, relu)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(dtype, bias):
    x, weight, b = _problem(2, 4, 3, 5, 7, dtype, bias=bias)
    for relu in (False, True):
        torch.library.opcheck(torch.ops.mzsr_fast.conv3x3_winograd, (x, weight, b, relu))


def test_bad_arguments_are_named():
    x, weight, bias = _problem(1, 4, 3, 5, 5, torch.float32)
    cases = [
        ((x[0], weight, bias), ValueError, r"x: expected \[N, C, H, W\]"),
        ((x, weight[:, :2], bias), ValueError, r"weight: expected \[O, 4, 3, 3\]"),
        ((x, weight[..., :2], bias), ValueError, r"weight: expected \[O, 4, 3, 3\]"),
        ((x, weight, bias[:2]), ValueError, r"bias: expected \[3\]"),
        ((x.half(), weight, bias), TypeError, "x: expected float32 or float64"),
        ((x.long(), weight, bias), TypeError, "x: expected float32 or float64"),
        ((x, weight.double(), bias), TypeError, "weight: expected dtype torch.float32 like x"),
        ((x, weight, bias.double()), TypeError, "bias: expected dtype torch.float32 like x"),
        ((x.numpy(), weight, bias), TypeError, "x: expected a torch.Tensor"),
        ((x.to("meta"), weight, bias), ValueError, "x: expected a tensor on the CPU"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            conv3x3_winograd(*args)


def test_the_network_takes_it_where_it_pays():
    """MZSRNet's 64 -> 64 layers in float32 without autograd: Winograd; its 3-channel
    layers, bfloat16 and winograd=False: oneDNN's convolution with the ReLU inside."""
    x, weight, bias = _problem(1, 64, 64, 11, 12, torch.float32)
    assert winograd_pays(x, weight)
    assert not winograd_pays(x, weight[:3]) and not winograd_pays(x[:, :3], weight[:, :3])
    assert not winograd_pays(x.bfloat16(), weight.bfloat16()) and not winograd_pays(x.double(), weight.double())
    with torch.no_grad():
        assert torch.equal(stacked.conv3x3_relu(x, weight, bias), conv3x3_winograd(x, weight, bias, relu=True))
        direct = stacked.conv3x3_relu(x, weight, bias, winograd=False)
    fused = stacked._pointwise_conv()
    if fused is not None:
        assert torch.equal(direct, fused(x, weight, bias, [1, 1], [1, 1], [1, 1], 1, "relu", [], ""))
    torch.testing.assert_close(direct, torch.relu(F.conv2d(x, weight, bias, padding=1)))
