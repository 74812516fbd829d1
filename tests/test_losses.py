"""mzsr_fast.losses: each loss against its formula in float64 on odd shapes,
loss_and_gradient's gradient against autograd (and gradcheck), the masked
form, the names the command line offers, and the errors."""
from __future__ import annotations

import pytest
import torch

from mzsr_fast import losses
from mzsr_fast.losses import CHARBONNIER_EPS, check_loss, loss_and_gradient, task_losses

FORMULAS = {
    "l1": lambda e: e.abs(),
    "charbonnier": lambda e: (e * e + CHARBONNIER_EPS ** 2).sqrt() - CHARBONNIER_EPS,
    "mse": lambda e: e * e,
}


def _pair(*shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = torch.rand(*shape, generator=gen, dtype=torch.float64)
    # errors from about 1e-3 to 0.5, both signs, some inside Charbonnier's eps
    return out, out + (torch.rand(*shape, generator=gen, dtype=torch.float64) - 0.5) ** 3 * 4


def test_every_loss_has_a_formula():
    assert losses.LOSSES == tuple(FORMULAS)


@pytest.mark.parametrize("loss", losses.LOSSES)
@pytest.mark.parametrize("shape", [(2, 1, 3, 5, 7), (3, 2, 3, 4, 3), (2, 9)])
def test_task_losses_are_the_mean_of_the_formula(loss, shape):
    out, target = _pair(*shape)
    expected = FORMULAS[loss](out - target).flatten(1).mean(1)
    torch.testing.assert_close(task_losses(loss, out, target), expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("loss", losses.LOSSES)
def test_masked_task_losses_count_the_kept_pixels_only(loss):
    out, target = _pair(2, 3, 3, 5, 4, seed=1)
    mask = (torch.rand(2, 3, 1, 5, 4, generator=torch.Generator().manual_seed(2)) > 0.4).double()
    values = FORMULAS[loss](out - target)
    expected = torch.stack([values[t][mask[t].expand_as(values[t]) > 0].mean() for t in range(2)])
    torch.testing.assert_close(task_losses(loss, out, target, mask), expected, rtol=1e-13, atol=0)


@pytest.mark.parametrize("loss", losses.LOSSES)
@pytest.mark.parametrize("masked", [False, True])
def test_loss_and_gradient_equal_autograd(loss, masked):
    out, target = _pair(2, 3, 6, 5, seed=3)
    mask = (torch.rand(2, 1, 6, 5, generator=torch.Generator().manual_seed(4)) > 0.3).double() if masked else None
    leaf = out.clone().requires_grad_()
    expected = task_losses(loss, leaf[None], target[None], None if mask is None else mask[None])[0]
    (expected_grad,) = torch.autograd.grad(expected, leaf)
    value, grad = loss_and_gradient(loss, out.clone(), target, mask)
    torch.testing.assert_close(value, expected.detach(), rtol=1e-14, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-13, atol=1e-18)


@pytest.mark.parametrize("loss", ["charbonnier", "mse"])  # L1 is not differentiable where an error is 0
def test_gradcheck(loss):
    out, target = _pair(1, 3, 4, 3, seed=5)
    assert torch.autograd.gradcheck(lambda o: task_losses(loss, o, target), (out.requires_grad_(),))


def test_charbonnier_is_l1_far_from_zero_and_smooth_near_it():
    error = torch.tensor([[-1.0, -0.3, 0.3, 1.0]], dtype=torch.float64)
    far = task_losses("charbonnier", error, torch.zeros_like(error))
    torch.testing.assert_close(far, error.abs().mean(1) - CHARBONNIER_EPS, rtol=0, atol=2e-4)
    _, grad = loss_and_gradient("charbonnier", torch.tensor([[1e-6, -1e-6]], dtype=torch.float64),
                                torch.zeros(1, 2, dtype=torch.float64))
    assert grad.abs().max() < 1e-4  # L1's would be 1 / 2 for each


def test_unknown_loss_is_refused():
    with pytest.raises(ValueError, match=r"adapt_loss: expected one of \('l1', 'charbonnier', 'mse'\), got 'L1'"):
        check_loss("L1", "adapt_loss")
    assert check_loss("charbonnier") == "charbonnier"
    out, target = _pair(1, 4)
    for call in (lambda: task_losses("l2", out, target), lambda: loss_and_gradient("l2", out[0], target[0])):
        with pytest.raises(ValueError, match=r"loss: expected one of .*, got 'l2'"):
            call()
