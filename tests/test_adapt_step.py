"""The written-out adaptation step (mzsr_fast.adapt_step) against autograd
through stacked_forward (the step adapt ran before, and still runs off the
CPU): the same losses and weights, tight in float64, to float rounding in
float32 (also with precision "tf32", the Winograd convolutions), and bf16's
weight gradients unchanged. Also: the band layout of
its float32 weight gradient, the fused convolution and ReLU, and the malloc
thresholds of _heap.reuse_freed_memory."""
from __future__ import annotations

import os

import pytest
import torch

from mzsr_fast import _extension, _heap, adapt_step, stacked
from mzsr_fast.adapt import _autocast
from mzsr_fast.losses import task_losses
from mzsr_fast.maml import sgd_update_
from mzsr_fast.model import MZSRNet
from mzsr_fast.ops import conv3x3_winograd as winograd
from mzsr_fast.ops.conv3x3_winograd import conv3x3_winograd, conv3x3_winograd_weight_grad

pytestmark = pytest.mark.usefixtures("one_thread")

RATE = 0.5  # large, so that every gradient moves the weights visibly


def _weights(tasks: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    net = MZSRNet()
    net.reset_parameters(torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(4)
    return {n: (p.detach() + 0.01 * torch.randn(p.shape, generator=gen)).to(dtype)[None].repeat(
        tasks, *([1] * p.dim())) for n, p in net.named_parameters()}


def _autograd_step(params, x, target, mask, precision, loss="l1"):
    """The step through autograd: stacked_forward, the loss as adapt takes it
    off the CPU (losses.task_losses), torch.autograd.grad."""
    weights = [p.requires_grad_() for p in params.values()]
    with _autocast(x.device, precision):
        out = stacked.stacked_forward(dict(zip(params, weights)), x)
    losses = task_losses(loss, out, target, mask)
    grads = torch.autograd.grad(losses.sum(), weights)
    sgd_update_(weights, list(grads), [RATE] * len(weights))
    return losses.detach()


def _problem(tasks, n, h, w, masked, dtype=torch.float32):
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(tasks, n, 3, h, w, generator=gen, dtype=dtype)
    target = torch.rand(tasks, n, 3, h, w, generator=gen, dtype=dtype)
    mask = (torch.rand(tasks, n, 1, h, w, generator=gen) > 0.3).to(dtype) if masked else None
    return x, target, mask


@pytest.mark.parametrize("tasks,n,h,w,masked", [(1, 1, 14, 12, False), (2, 1, 9, 16, False), (2, 3, 10, 7, True)])
@pytest.mark.parametrize("dtype,precision", [(torch.float64, "fp32"), (torch.float32, "fp32"),
                                             (torch.float32, "tf32")])  # tf32: Winograd convolutions
@pytest.mark.parametrize("loss", ["l1", "charbonnier"])
def test_step_equals_autograd(tasks, n, h, w, masked, dtype, precision, loss):
    x, target, mask = _problem(tasks, n, h, w, masked, dtype)
    ours, theirs = _weights(tasks, dtype), _weights(tasks, dtype)
    for _ in range(2):
        losses = adapt_step.sgd_loss_step_(ours, x, target, mask, [RATE] * len(ours), precision, loss)
        expected = _autograd_step(theirs, x, target, mask, "fp32", loss)
        tol = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(losses, expected, **tol)
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name].detach(), **tol)
        assert not torch.equal(ours[name], _weights(tasks, dtype)[name]), f"{name} was not updated"


@pytest.mark.skipif(_extension.native_op("conv3x3_winograd") is None, reason="the extension has no conv3x3_winograd")
def test_which_convolutions_of_the_step_take_winograd(monkeypatch):
    """fp32 takes the Winograd weight gradient of the six 64 -> 64 layers and
    keeps oneDNN's direct forward and input gradient (the original's
    arithmetic, pixel by pixel); tf32 takes Winograd for all three; bf16
    for none."""
    calls = {"conv": 0, "weight_grad": 0}

    def counted(*args, **kwargs):
        calls["conv"] += 1
        return conv3x3_winograd(*args, **kwargs)

    def counted_weight_grad(*args, **kwargs):
        calls["weight_grad"] += 1
        return conv3x3_winograd_weight_grad(*args, **kwargs)

    monkeypatch.setattr(adapt_step, "conv3x3_winograd", counted)
    monkeypatch.setattr(stacked, "conv3x3_winograd", counted)
    monkeypatch.setattr(adapt_step, "conv3x3_winograd_weight_grad", counted_weight_grad)
    x, target, _ = _problem(1, 1, 8, 8, False)
    for precision, expected in (("fp32", (0, 6)), ("bf16", (0, 0)), ("tf32", (12, 6))):
        calls.update(conv=0, weight_grad=0)
        adapt_step.sgd_loss_step_(_weights(1), x, target, None, [RATE] * 16, precision)
        assert (calls["conv"], calls["weight_grad"]) == expected, precision


def test_bf16_step_equals_autograds():
    """bf16: the same kernels on the same bf16 tensors as autograd through
    stacked's explicit strategy (maps of at most BF16_ROWS rows are not cut)."""
    x, target, _ = _problem(1, 1, 12, 10, False)
    ours, theirs = _weights(1), _weights(1)
    for _ in range(2):
        losses = adapt_step.sgd_loss_step_(ours, x, target, None, [RATE] * len(ours), "bf16")
        torch.testing.assert_close(losses, _autograd_step(theirs, x, target, None, "bf16"), rtol=1e-6, atol=0)
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name].detach(), rtol=0, atol=0)


@pytest.mark.parametrize("dtype,n,h,w,c_out,cut", [
    (torch.float32, 1, 40, 30, 64, True), (torch.float32, 1, 5, 7, 3, True), (torch.float32, 3, 9, 20, 3, True),
    (torch.float32, 2, 1, 1, 64, True), (torch.float32, 1, 2, 254, 8, False), (torch.bfloat16, 1, 70, 9, 64, True),
    (torch.bfloat16, 2, 33, 5, 3, True), (torch.bfloat16, 1, 32, 6, 8, False)])
def test_banded_weight_gradients_equal_the_direct_ones(dtype, n, h, w, c_out, cut, monkeypatch):
    """float32 maps narrower than WIDE_ROWS are cut into bands laid side by
    side (a height not a multiple of the band's, one-pixel images, several
    images; 254 wide is not cut); bf16 maps of more than BF16_ROWS rows into
    a batch of bands (32 rows are not cut). The Winograd weight gradient is
    turned off, so that oneDNN's takes every shape."""
    monkeypatch.setattr(winograd, "USE_WINOGRAD_FROM", 10 ** 9)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(n, 16, h, w, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(n, c_out, h, w, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c_out, 16, 3, 3, generator=gen).to(dtype)
    expected = torch.ops.aten.convolution_backward(grad.double(), x.double(), weight.double(), [c_out], [1, 1],
                                                   [1, 1], [1, 1], False, [0, 0], 1, [False, True, True])[1:]
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=2 ** -7, atol=0.5)
    bands = adapt_step.Bands(x)
    assert bands.used == cut
    for got, want in zip(adapt_step._weight_gradients(grad, x, weight, bands), expected):
        torch.testing.assert_close(got.double(), want, **tol)


def test_step_checks_its_arguments():
    x, target, _ = _problem(1, 1, 6, 6, False)
    params = _weights(1)
    with pytest.raises(ValueError, match="rates: expected one per parameter tensor"):
        adapt_step.sgd_loss_step_(params, x, target, None, [RATE])
    with pytest.raises(ValueError, match=r"precision: expected one of \('fp32', 'tf32', 'bf16'\), got 'TF32'"):
        adapt_step.sgd_loss_step_(params, x, target, None, [RATE] * len(params), "TF32")
    with pytest.raises(ValueError, match=r"params\['layers.0.weight'\]: expected a stacked tensor \[T=2"):
        adapt_step.sgd_loss_step_(params, x.expand(2, -1, -1, -1, -1), target, None, [RATE] * len(params))
    with pytest.raises(ValueError, match=r"loss: expected one of \('l1', 'charbonnier', 'mse'\), got 'L2'"):
        adapt_step.sgd_loss_step_(params, x, target, None, [RATE] * len(params), "fp32", "L2")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_conv_relu_equals_conv_then_relu(dtype):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 8, 9, 11, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(5, 8, 3, 3, generator=gen).to(dtype), torch.randn(5, generator=gen).to(dtype)
    expected = torch.relu(torch.nn.functional.conv2d(x, weight, bias, padding=1))
    with torch.no_grad():
        torch.testing.assert_close(stacked.conv3x3_relu(x, weight, bias), expected, rtol=0, atol=0)
    weight.requires_grad_()
    out = stacked.conv3x3_relu(x, weight, bias)  # with autograd: differentiable
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert out.grad_fn is not None


class _FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append((param, value.value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("trim", pad.value))
        return 1


def test_reuse_freed_memory_raises_then_settles_mallocs_thresholds(monkeypatch):
    libc = _FakeLibc()
    monkeypatch.setattr(_heap, "_libc", lambda: libc)
    with _heap.reuse_freed_memory():
        with _heap.reuse_freed_memory():  # nested: only the outermost block acts
            assert libc.calls == [(_heap._M_MMAP_THRESHOLD, _heap._KEEP), (_heap._M_TRIM_THRESHOLD, _heap._KEEP)]
        assert len(libc.calls) == 2
    assert libc.calls[2:] == [(_heap._M_MMAP_THRESHOLD, 32 << 20), (_heap._M_TRIM_THRESHOLD, 64 << 20)]
    _heap.give_back()
    assert libc.calls[4:] == [("trim", 64 << 20)]
    monkeypatch.setattr(_heap, "_libc", lambda: None)  # not glibc: nothing
    with _heap.reuse_freed_memory():
        pass
    _heap.give_back()


@pytest.mark.skipif(_heap._libc() is None, reason="needs glibc")
def test_memory_kept_inside_the_block_is_given_back_on_request():
    def resident_bytes():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    before = resident_bytes()
    with _heap.reuse_freed_memory():
        blocks = [torch.ones(32 << 20) for _ in range(4)]  # 4 x 128 MiB, kept by malloc once freed
        del blocks
        assert resident_bytes() - before > 400 << 20
    assert resident_bytes() - before > 400 << 20  # kept for the next block
    _heap.give_back()
    assert resident_bytes() - before < 96 << 20  # 64 MiB stay at the top of the heap
