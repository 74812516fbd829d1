"""conv3x3_winograd and conv3x3_winograd_weight_grad against the plain-PyTorch
reference (mzsr_fast.reference.conv3x3_winograd, F.conv2d and aten's
convolution_backward in float64) on random inputs of odd shapes (sizes that leave
half tiles at the right and bottom edges, one pixel, more channels than a vector,
several chunks of tiles), forward and backward, plus torch.library.opcheck,
gradcheck and gradgradcheck in float64.

Tolerance of the convolution, from the arithmetic of F(2x2, 3x3), with u the unit
roundoff (eps / 2) (the weight gradient's: _weight_grad_bound).
An output of channel o is the A^T M A of its tile, M_k = sum over c of V_k[c] U_k[c, o]:
- V = B^T d B: each entry is a +-1 combination of at most 4 inputs of the tile's 4x4
  window d, made in two additions: |V| <= D_c, the sum of |d| over the window, and
  its rounding <= 2u D_c. The window of an output pixel's tile lies in the 5x5 box
  around it, so D_c <= box5(|x_c|).
- U = G g G^T: halves (exact) and up to four additions: |U| <= W_oc, the sum of the
  filter's |taps|, rounding <= 4u W_oc.
- The products (u) and the sum over C channels (C u, any order): |M_k - exact| <=
  (C + 7) u P, P = sum over c of D_c W_oc.
- A^T M A sums 9 entries M_k (four additions: 36 u P) and the bias is added (u).
So |y - exact| <= 9 (C + 12) u P + u |b| <= 9 (C + 12) eps (P + |b|), P computed as the
convolution of |x| with a 5x5 box times W_oc. Unlike a direct convolution's error it
grows with inputs the filter's taps never meet: one pixel far larger than its
neighbours moves them (test_a_large_pixel_stays_within_the_bound). Actual errors are
far below (a random walk, not a sum of worst cases); the bound keeps a wrong
transform or tap (an error of the order of the output itself) from passing.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mzsr_fast import stacked
from mzsr_fast.ops import conv3x3_winograd as glue
from mzsr_fast.ops.conv3x3_winograd import conv3x3_winograd, conv3x3_winograd_weight_grad, winograd_pays
from mzsr_fast.reference.conv3x3_winograd import conv3x3 as reference

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(glue._extension.native_op("conv3x3_winograd") is None,
                                 reason=f"the extension has no conv3x3_winograd: {glue._extension.LOAD_ERROR}")]

# (N, C, O, H, W): half tiles at both edges, one pixel, C != O, 64 -> 64 as MZSRNet, several chunks.
SHAPES = [(1, 5, 4, 1, 1), (2, 3, 7, 7, 9), (1, 64, 64, 13, 10), (3, 17, 16, 8, 3), (1, 1, 1, 2, 5),
          (2, 16, 16, 37, 41)]  # the last: 798 tiles, an image boundary inside a 128-tile chunk


def _problem(n, c, o, h, w, dtype, seed=0, bias=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64).to(dtype)
    weight = (torch.randn(o, c, 3, 3, generator=gen, dtype=torch.float64) / (3 * c ** 0.5)).to(dtype)
    b = torch.randn(o, generator=gen, dtype=torch.float64).to(dtype) if bias else None
    return x.contiguous(memory_format=torch.channels_last), weight, b


def _bound(x, weight, bias) -> torch.Tensor:
    """The module docstring's bound on |y - exact| per output, [N, O, H, W]."""
    eps = torch.finfo(x.dtype).eps
    taps = weight.double().abs().sum((2, 3))  # W_oc [O, C]
    box = taps[:, :, None, None].expand(-1, -1, 5, 5)  # P = sum_c W_oc box5(|x_c|)
    size = F.conv2d(x.double().abs(), box, None if bias is None else bias.double().abs(), padding=2)
    return 9 * (x.shape[1] + 12) * eps * size


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


def test_a_large_pixel_stays_within_the_bound():
    """One input 10^4 times its neighbours, at a tap of weight 0: the direct sum never
    multiplies it there, Winograd's transforms do; the bound counts it."""
    for seed in range(20):
        x, weight, bias = _problem(1, 1, 1, 2, 2, torch.float32, seed=seed)
        x[0, 0, 1, 1] = 3e4
        weight[0, 0, 2, 2] = 0
        error = (conv3x3_winograd(x, weight, bias).double() - reference(x.double(), weight.double(), bias.double()))
        assert bool((error.abs() <= _bound(x, weight, bias)).all()), (seed, error.abs().max().item())


def test_infinite_input_gives_non_finite_outputs_where_the_reference_does():
    """An infinite input gives NaN (inf - inf in the transforms) where F.conv2d gives +-inf."""
    x, weight, bias = _problem(1, 2, 3, 6, 7, torch.float32)
    x[0, 1, 3, 2] = float("inf")
    got, expected = conv3x3_winograd(x, weight, bias), reference(x, weight, bias)
    assert torch.equal(got.isfinite(), expected.isfinite())


def test_float32_error_is_of_float32_rounding():
    """Next to oneDNN's direct convolution on the same 64 -> 64 maps: the same order of error."""
    x, weight, bias = _problem(1, 64, 64, 33, 31, torch.float32, seed=3)
    exact = reference(x.double(), weight.double(), bias.double())
    winograd = (conv3x3_winograd(x, weight, bias).double() - exact).abs().max().item()
    direct = (F.conv2d(x, weight, bias, padding=1).double() - exact).abs().max().item()
    assert winograd <= 4 * direct, (winograd, direct)


def test_without_bias_and_from_any_layout():
    """Inputs, weights and biases of any strides: NCHW, transposed, a flipped and
    transposed weight (the input gradient's), a bias that is a strided view."""
    x, weight, bias = _problem(2, 6, 5, 9, 7, torch.float64)
    exact = reference(x, weight)
    for layout in (x, x.contiguous(), x.transpose(2, 3).contiguous().transpose(2, 3)):
        torch.testing.assert_close(conv3x3_winograd(layout, weight), exact, rtol=0, atol=1e-13)
    swapped = weight.transpose(0, 1).flip(2, 3)  # [6 -> 5] becomes [5 -> 6]
    y = torch.randn(2, 5, 9, 7, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    torch.testing.assert_close(conv3x3_winograd(y, swapped), reference(y, swapped.contiguous()), rtol=0, atol=1e-13)
    strided_bias = torch.stack([bias, -bias], 1)[:, 0]
    assert not strided_bias.is_contiguous()
    torch.testing.assert_close(conv3x3_winograd(x, weight, strided_bias), reference(x, weight, bias),
                               rtol=0, atol=1e-13)


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
@pytest.mark.parametrize("shape", [(2, 4, 3, 5, 7), (2, 4, 3, 1, 1), (2, 4, 1, 3, 3)])  # size-1 axes: strides
def test_opcheck(dtype, bias, shape):
    x, weight, b = _problem(*shape, dtype, bias=bias)
    for relu in (False, True):
        torch.library.opcheck(torch.ops.mzsr_fast.conv3x3_winograd, (x, weight, b, relu))
        fake = glue._fake(x, weight, b, relu)
        assert fake.stride() == conv3x3_winograd(x, weight, b, relu).stride()


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


# ---------------------------------------------------------------------------
# conv3x3_winograd_weight_grad
# ---------------------------------------------------------------------------

def _exact_weight_grad(grad, x):
    weight = torch.zeros(grad.shape[1], x.shape[1], 3, 3, dtype=torch.float64)
    return torch.ops.aten.convolution_backward(grad.double(), x.double(), weight, None, [1, 1], [1, 1], [1, 1],
                                               False, [0, 0], 1, [False, True, False])[1]


def _weight_grad_bound(grad, x) -> torch.Tensor:
    """|dW - exact| per filter tap, [O, C, 3, 3], from the arithmetic as in the module
    docstring: dU_k[c, o] sums, over the tiles, V_k (<= D, the window's sum of |x_c|)
    times dM_k = (A dY A^T)_k (<= E, the tile's sum of |dY_o|): 128 tiles a chunk in
    one GEMM (its sum over the chunk's tiles, in any order), then the chunks and the
    threads' partial sums one after another, the transforms a few additions more:
    (128 + chunks + 24) u Q, Q = sum over tiles of D E. G^T dU G: coefficients of
    |sum| <= 4. Plus the float64 reference's own error, N H W u64 Q."""
    eps = torch.finfo(x.dtype).eps
    h, w = x.shape[2:]
    even = (0, w % 2, 0, h % 2)  # right and bottom padding to whole tiles
    windows = F.avg_pool2d(F.pad(x.double().abs(), (1, 1 + w % 2, 1, 1 + h % 2)), 4, 2, divisor_override=1)
    tiles = F.avg_pool2d(F.pad(grad.double().abs(), even), 2, 2, divisor_override=1)
    q = torch.einsum("nchw,nohw->oc", windows, tiles)  # Q [O, C]
    chunks = -(-windows[0, 0].numel() * x.shape[0] // 128)
    reference = x.shape[0] * h * w * torch.finfo(torch.float64).eps
    return ((4 * (128 + chunks + 24) * eps + reference) * q)[:, :, None, None].expand(-1, -1, 3, 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_weight_grad_equals_the_reference(shape, dtype):
    n, c, o, h, w = shape
    x, _, _ = _problem(n, c, o, h, w, dtype)
    grad = torch.randn(n, o, h, w, generator=torch.Generator().manual_seed(11), dtype=torch.float64).to(dtype)
    got = conv3x3_winograd_weight_grad(grad.contiguous(memory_format=torch.channels_last), x)
    assert got.shape == (o, c, 3, 3) and got.dtype == dtype
    error = (got.double() - _exact_weight_grad(grad, x)).abs()
    assert bool((error <= _weight_grad_bound(grad, x)).all()), f"largest error {error.max().item():.3e}"


def test_weight_grad_error_is_of_float32_rounding():
    """Next to oneDNN's float32 weight gradient of the same 64 -> 64 maps: the same order
    of error (a lower-precision GEMM or a dropped tile would not be)."""
    x, _, _ = _problem(1, 64, 64, 33, 31, torch.float32, seed=4)
    grad = torch.randn(1, 64, 33, 31, generator=torch.Generator().manual_seed(15)).contiguous(
        memory_format=torch.channels_last)
    exact = _exact_weight_grad(grad, x)
    winograd = (conv3x3_winograd_weight_grad(grad, x).double() - exact).abs().max().item()
    direct = torch.ops.aten.convolution_backward(grad, x, torch.zeros(64, 64, 3, 3), None, [1, 1], [1, 1], [1, 1],
                                                 False, [0, 0], 1, [False, True, False])[1]
    assert winograd <= 4 * (direct.double() - exact).abs().max().item()


def test_weight_grad_on_two_threads_stays_within_the_bound():
    x, _, _ = _problem(2, 16, 16, 37, 41, torch.float32)
    grad = torch.randn(2, 16, 37, 41, generator=torch.Generator().manual_seed(12))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = conv3x3_winograd_weight_grad(grad, x)
    finally:
        torch.set_num_threads(threads)
    assert bool(((got.double() - _exact_weight_grad(grad, x)).abs() <= _weight_grad_bound(grad, x)).all())


def test_weight_grad_of_nothing():
    x, _, _ = _problem(0, 3, 4, 5, 5, torch.float32)
    assert torch.equal(conv3x3_winograd_weight_grad(torch.zeros(0, 4, 5, 5), x), torch.zeros(4, 3, 3, 3))
    x, _, _ = _problem(1, 3, 4, 0, 5, torch.float32)
    assert torch.equal(conv3x3_winograd_weight_grad(torch.zeros(1, 4, 0, 5), x), torch.zeros(4, 3, 3, 3))
    x, _, _ = _problem(1, 0, 4, 5, 5, torch.float32)
    assert conv3x3_winograd_weight_grad(torch.rand(1, 4, 5, 5), x).shape == (4, 0, 3, 3)
    x, _, _ = _problem(1, 3, 4, 5, 5, torch.float32)
    assert conv3x3_winograd_weight_grad(torch.rand(1, 0, 5, 5), x).shape == (0, 3, 3, 3)


def test_weight_grad_gradcheck_and_gradgradcheck():
    x, _, _ = _problem(2, 3, 2, 5, 4, torch.float64)
    grad = torch.randn(2, 2, 5, 4, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    inputs = (grad.requires_grad_(), x.requires_grad_())
    assert torch.autograd.gradcheck(conv3x3_winograd_weight_grad, inputs)
    assert torch.autograd.gradgradcheck(conv3x3_winograd_weight_grad, inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 4, 3, 5, 7), (2, 4, 3, 1, 1), (1, 4, 1, 3, 3)])
def test_weight_grad_opcheck(dtype, shape):
    n, c, o, h, w = shape
    x, _, _ = _problem(n, c, o, h, w, dtype)
    grad = torch.randn(n, o, h, w, generator=torch.Generator().manual_seed(14), dtype=dtype)
    torch.library.opcheck(torch.ops.mzsr_fast.conv3x3_winograd_weight_grad, (grad, x))


def test_weight_grad_bad_arguments_are_named():
    x, _, _ = _problem(1, 4, 3, 5, 5, torch.float32)
    grad = torch.rand(1, 3, 5, 5)
    cases = [
        ((grad, x[0]), ValueError, r"x: expected \[N, C, H, W\]"),
        ((grad[..., :4], x), ValueError, r"grad: expected \[1, O, 5, 5\]"),
        ((grad.double(), x), TypeError, "grad: expected dtype torch.float32 like x"),
        ((grad.half(), x), TypeError, "grad: expected float32 or float64"),
        ((grad.tolist(), x), TypeError, "grad: expected a torch.Tensor"),
        ((grad, x.to("meta")), ValueError, "x: expected a tensor on the CPU"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            conv3x3_winograd_weight_grad(*args)
