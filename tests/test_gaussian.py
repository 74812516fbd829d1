"""gaussian_kernel, sample_kernel_params and presets (docs/method.md section 2)."""
import math

import numpy as np
import pytest
import torch

import mzsr_fast
from golden import ATOL, golden_cases


def test_golden_kernels(shared_dir):
    for name, data in golden_cases(shared_dir, "kernel_*.npz"):
        size, theta, lambda1, lambda2 = data["params"]
        k = mzsr_fast.gaussian_kernel(torch.tensor(theta, dtype=torch.float64), lambda1, lambda2, int(size))
        np.testing.assert_allclose(k.numpy(), data["kernel"], rtol=0, atol=ATOL, err_msg=name)


def test_g_d_2_0_preset_is_the_reference_set5_kernel(shared_dir):
    reference = np.load(shared_dir / "data" / "mzsr_g20" / "kernel.npy")
    np.testing.assert_allclose(mzsr_fast.preset("g_d_2.0").kernel.numpy(), reference, rtol=0, atol=1e-15)


@pytest.mark.parametrize("name,mode", [("g_d_0.2", "direct"), ("g_d_2.0", "direct"),
                                       ("g_d_ani", "direct"), ("g_b_1.3", "bicubic")])
def test_presets(name, mode):
    p = mzsr_fast.preset(name)
    assert p.mode == mode
    assert p.kernel.shape == (21, 21) and p.kernel.dtype == torch.float64
    assert abs(p.kernel.sum().item() - 1) < 1e-12


def test_unknown_preset():
    with pytest.raises(ValueError, match="name: unknown kernel preset"):
        mzsr_fast.preset("g_d_9")


def test_isotropic_matches_separable_gaussian():
    k = mzsr_fast.gaussian_kernel(torch.tensor(0.3, dtype=torch.float64), 1.7, 1.7, 9)
    g = torch.exp(-(torch.arange(9, dtype=torch.float64) - 4) ** 2 / (2 * 1.7))
    expected = torch.outer(g, g) / torch.outer(g, g).sum()
    torch.testing.assert_close(k, expected, rtol=0, atol=1e-15)


def test_orientation_x_is_column_offset():
    # lambda1 along x (columns) at theta = 0: the kernel is wider than tall.
    k = mzsr_fast.gaussian_kernel(0.0, 4.0, 1.0, 11)
    assert k[5, 0] > k[0, 5]
    # Rotating by pi / 2 swaps the axes.
    k90 = mzsr_fast.gaussian_kernel(torch.tensor(math.pi / 2, dtype=torch.float64), 4.0, 1.0, 11)
    torch.testing.assert_close(k90, mzsr_fast.gaussian_kernel(torch.tensor(0.0, dtype=torch.float64),
                                                              1.0, 4.0, 11), rtol=0, atol=1e-15)


def test_broadcasting_and_dtype():
    theta = torch.rand(4, 1, dtype=torch.float64)
    k = mzsr_fast.gaussian_kernel(theta, torch.full((3,), 2.0, dtype=torch.float64), 1.5, 7)
    assert k.shape == (4, 3, 7, 7) and k.dtype == torch.float64
    assert mzsr_fast.gaussian_kernel(0.0, 1.0, 1.0, 5).dtype == torch.get_default_dtype()
    torch.testing.assert_close(k.sum((-2, -1)), torch.ones(4, 3, dtype=torch.float64))


def test_gradcheck_parameters():
    theta = torch.tensor([0.3, 2.0], dtype=torch.float64, requires_grad=True)
    l1 = torch.tensor([2.5, 4.0], dtype=torch.float64, requires_grad=True)
    l2 = torch.tensor([1.2, 1.1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, a, b: mzsr_fast.gaussian_kernel(t, a, b, 7), (theta, l1, l2))


@pytest.mark.parametrize("kwargs,match", [
    (dict(size=4), "size: expected an odd positive integer"),
    (dict(size=0), "size: expected an odd positive integer"),
    (dict(lambda1=0.0), "lambda1: expected variances > 0"),
    (dict(lambda2=-1.0), "lambda2: expected variances > 0"),
    (dict(theta=float("nan")), "theta: expected finite values"),
    (dict(lambda1=torch.tensor([1.0, float("nan")])), "lambda1: expected finite values"),
    (dict(theta="0"), "theta: expected a number"),
])
def test_bad_parameters(kwargs, match):
    args = dict(theta=0.0, lambda1=2.0, lambda2=1.0, size=15)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        mzsr_fast.gaussian_kernel(**args)


def test_sample_kernel_params_distribution():
    g = torch.Generator().manual_seed(1)
    theta, l1, l2 = mzsr_fast.sample_kernel_params(20000, 2, generator=g)
    assert theta.shape == l1.shape == l2.shape == (20000,)
    assert 0 <= theta.min() and theta.max() < math.pi
    assert 1 <= l1.min() and l1.max() <= 5.0 and (l2 >= 1).all() and (l2 <= l1).all()
    assert abs(l1.mean().item() - 3.0) < 0.05  # U[1, 5]
    again = mzsr_fast.sample_kernel_params(20000, 2, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip((theta, l1, l2), again))


def test_sample_kernel_params_smallest_variance():
    """min_variance m: lambda1 ~ U[m, 2.5 s], lambda2 ~ U[m, lambda1], the same
    draws (theta unchanged); m = 1 is the default, bit for bit."""
    theta, l1, l2 = mzsr_fast.sample_kernel_params(20000, 2, generator=torch.Generator().manual_seed(1),
                                                   min_variance=0.2)
    assert 0.2 <= l2.min() < 0.25 and (l2 <= l1).all() and l1.max() <= 5.0
    assert abs(l1.mean().item() - 2.6) < 0.05  # U[0.2, 5]
    paper = mzsr_fast.sample_kernel_params(20000, 2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(theta, paper[0])
    one = mzsr_fast.sample_kernel_params(20000, 2, generator=torch.Generator().manual_seed(1), min_variance=1.0)
    assert all(torch.equal(a, b) for a, b in zip(one, paper))


def test_sample_kernel_params_bad_input():
    with pytest.raises(ValueError, match="n: expected a positive integer"):
        mzsr_fast.sample_kernel_params(0, 2)
    with pytest.raises(ValueError, match="scale: expected a number >= 1"):
        mzsr_fast.sample_kernel_params(3, 0.5)
    for bad in (0, -1.0, 5.0, True):
        with pytest.raises(ValueError, match=r"min_variance: expected a number in \(0, 5\) \(2.5 scale\)"):
            mzsr_fast.sample_kernel_params(3, 2, min_variance=bad)
