"""PSNR / SSIM as in the SR papers (docs/method.md section 9)."""
import math

import pytest
import torch

from mzsr_fast import metrics


def test_rgb_to_y_matlab_values():
    rgb = torch.tensor([[[[255.0]], [[255.0]], [[255.0]]], [[[0.0]], [[0.0]], [[0.0]]]])
    assert metrics.rgb_to_y(rgb).flatten().tolist() == [235.0, 16.0]


def test_identical_images():
    x = torch.rand(3, 40, 40)
    assert metrics.psnr(x, x, 2) == math.inf
    assert metrics.ssim(x, x, 2) == pytest.approx(1.0)


def test_known_psnr():
    gt = torch.full((1, 30, 30), 100 / 255)
    sr = torch.full((1, 30, 30), 110 / 255)
    assert metrics.psnr(sr, gt, 3) == pytest.approx(10 * math.log10(255 ** 2 / 100))


def test_modcrop_and_shave():
    gt = torch.rand(3, 41, 43)
    sr = gt.clone()
    sr[:, 40:, :] = 0  # row 40 is outside the multiple-of-2 crop
    sr[:, :2, :] = 0  # rows 0, 1 are shaved
    assert metrics.psnr(sr, gt, 2) == math.inf
    sr[:, 5, 5] = 1 - gt[:, 5, 5]
    assert metrics.psnr(sr, gt, 2) < math.inf


def test_ssim_decreases_with_noise():
    gt = torch.rand(3, 48, 48)
    noisy = (gt + 0.1 * torch.randn_like(gt)).clamp(0, 1)
    assert 0 < metrics.ssim(noisy, gt, 2) < 1


def test_errors():
    with pytest.raises(ValueError, match="sr: expected at least"):
        metrics.psnr(torch.rand(3, 10, 10), torch.rand(3, 20, 20), 2)
    with pytest.raises(ValueError, match="sr: expected 1 or 3 channels"):
        metrics.psnr(torch.rand(2, 20, 20), torch.rand(3, 20, 20), 2)
    with pytest.raises(ValueError, match="scale: expected an integer >= 1"):
        metrics.ssim(torch.rand(3, 20, 20), torch.rand(3, 20, 20), 0)


def test_images_on_the_0_to_255_scale_warn():
    gt = torch.rand(3, 20, 20)
    with pytest.warns(UserWarning, match=r"gt: values from .* expected an image in \[0, 1\] \(8-bit values"):
        metrics.psnr(gt, gt * 255, 2)
    with pytest.warns(UserWarning, match=r"sr: values from .* expected an image in \[0, 1\]"):
        metrics.ssim(gt * 255, gt, 2)


def _ssim_2d_reference(sr, gt, scale):
    """SSIM with the 11x11 window as one 2-D float64 convolution (the implementation before the separable one)."""
    import torch.nn.functional as F

    a, b = metrics.prepare(sr, gt, scale)
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5 ** 2))
    window = torch.outer(g / g.sum(), g / g.sum())[None, None]
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    a, b = a[:, None], b[:, None]
    mu_a, mu_b = F.conv2d(a, window), F.conv2d(b, window)
    var_a = F.conv2d(a * a, window) - mu_a ** 2
    var_b = F.conv2d(b * b, window) - mu_b ** 2
    cov = F.conv2d(a * b, window) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return ssim_map.flatten(1).mean(1).mean().item()


@pytest.mark.parametrize("shape,noise", [((3, 64, 80), 0.05), ((2, 3, 45, 31), 0.2), ((1, 27, 90), 0.01),
                                         ((3, 17, 17), 0.5)])
def test_separable_ssim_equals_the_2d_window(shape, noise):
    """Both sum the same 121 products of float64 values on 0..255 (window
    sums of squares up to 255^2 = 6.5e4, rounding 1e-11 each), so the SSIM
    maps agree to about 1e-12 relative; 1e-9 leaves room."""
    gt = torch.rand(shape, dtype=torch.float64)
    sr = (gt + noise * torch.randn_like(gt)).clamp(0, 1)
    expected = _ssim_2d_reference(sr, gt, 2)
    assert abs(metrics.ssim(sr, gt, 2) - expected) <= 1e-9
    assert metrics.psnr_ssim(sr, gt, 2) == (metrics.psnr(sr, gt, 2), metrics.ssim(sr, gt, 2))
