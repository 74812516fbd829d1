"""degrade and the plain-PyTorch blur_downsample against the reference implementation
(docs/method.md section 3) and the paper's Bicubic column (docs/method.md section 9)."""
import numpy as np
import pytest
import torch

import mzsr_fast
from golden import assert_image_matches, chw, golden_cases
from mzsr_fast.io import read_image

SET5 = ("baby", "bird", "butterfly", "head", "woman")


def test_golden_degradations(shared_dir):
    for name, data in golden_cases(shared_dir, "degrade_*.npz", 4):
        x, kernel, scale = chw(data["input"]), torch.from_numpy(data["kernel"]), int(data["scale"])
        for mode in ("direct", "bicubic"):
            out = mzsr_fast.blur_downsample(x, kernel, scale, mode=mode, backend="torch")
            assert_image_matches(out, data[mode], f"{name} {mode}")


def test_reference_set5_lr_inputs_reproduced_exactly(shared_dir):
    kernel = mzsr_fast.preset("g_d_2.0").kernel
    for name in SET5:
        gt = read_image(shared_dir / "data" / "Set5" / f"{name}_GT.png", torch.float64)
        lr = torch.round(255 * mzsr_fast.degrade(gt, kernel, 2))
        expected = torch.round(255 * read_image(shared_dir / "data" / "mzsr_g20" / f"{name}.png", torch.float64))
        assert lr.shape == expected.shape
        assert torch.equal(lr, expected), f"{name}: {(lr - expected).abs().max().item()}"


@pytest.mark.parametrize("name,psnr,ssim", [("g_d_0.2", 30.24, 0.8976), ("g_d_2.0", 28.73, 0.8449),
                                            ("g_d_ani", 28.15, 0.8265), ("g_b_1.3", 30.54, 0.8773)])
def test_bicubic_baseline_reproduces_paper(shared_dir, name, psnr, ssim):
    p = mzsr_fast.preset(name)
    scores = []
    for image in SET5:
        gt = read_image(shared_dir / "data" / "Set5" / f"{image}_GT.png", torch.float64)
        lr = torch.round(255 * mzsr_fast.degrade(gt, p.kernel, 2, mode=p.mode)) / 255
        up = torch.round(255 * mzsr_fast.imresize(lr, scale=2, size=gt.shape[-2:]).clamp(0, 1)) / 255
        scores.append((mzsr_fast.metrics.psnr(up, gt, 2), mzsr_fast.metrics.ssim(up, gt, 2)))
    mean_psnr, mean_ssim = np.mean(scores, axis=0)
    assert abs(mean_psnr - psnr) <= 0.01, mean_psnr
    assert abs(mean_ssim - ssim) <= 0.0003, mean_ssim


@pytest.mark.parametrize("h,w,k,scale", [(1, 1, 5, 1), (2, 3, 15, 2), (5, 4, 21, 3), (7, 9, 13, 4), (3, 11, 3, 2)])
def test_small_images_match_scipy_reflect(h, w, k, scale):
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.rand(1, 2, h, w, dtype=torch.float64) + 0.1
    kernel = torch.rand(k, k, dtype=torch.float64) + 0.1
    out = mzsr_fast.blur_downsample(x, kernel, scale, backend="torch")
    for c in range(2):
        full = ndimage.correlate(x[0, c].numpy(), kernel.numpy(), mode="reflect")
        np.testing.assert_allclose(out[0, c].numpy(), full[::scale, ::scale], rtol=0, atol=1e-12)


def test_per_image_kernels_equal_one_call_per_image():
    x = torch.rand(3, 3, 17, 12, dtype=torch.float64)
    kernels = mzsr_fast.gaussian_kernel(torch.rand(3, dtype=torch.float64), torch.tensor([1.5, 2.0, 3.0]),
                                        torch.tensor([1.0, 1.2, 2.0]), 7).double()
    for mode in ("direct", "bicubic"):
        batched = mzsr_fast.blur_downsample(x, kernels, 2, mode=mode, backend="torch")
        for i in range(3):
            single = mzsr_fast.blur_downsample(x[i], kernels[i], 2, mode=mode, backend="torch")
            torch.testing.assert_close(batched[i], single, rtol=0, atol=1e-14)


def test_output_shapes_3d_and_4d():
    kernel = mzsr_fast.preset("g_d_2.0").kernel
    assert mzsr_fast.degrade(torch.rand(3, 37, 53), kernel, 2).shape == (3, 19, 27)
    assert mzsr_fast.degrade(torch.rand(2, 3, 37, 53), kernel, 3, mode="bicubic").shape == (2, 3, 13, 18)


def test_degrade_clips_and_adds_reproducible_noise():
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    kernel = mzsr_fast.preset("g_d_0.2").kernel
    a = mzsr_fast.degrade(x, kernel, 2, noise_sigma=0.5, generator=torch.Generator().manual_seed(3))
    b = mzsr_fast.degrade(x, kernel, 2, noise_sigma=0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.min() == 0 and a.max() == 1
    clean = mzsr_fast.degrade(x, kernel, 2)
    assert not torch.equal(a, clean)


def test_gradcheck_image_and_kernel():
    x = torch.rand(2, 2, 9, 8, dtype=torch.float64, requires_grad=True)
    kernel = torch.rand(2, 5, 5, dtype=torch.float64, requires_grad=True)
    for mode in ("direct", "bicubic"):
        assert torch.autograd.gradcheck(
            lambda a, k: mzsr_fast.blur_downsample(a, k, 2, mode=mode, backend="torch"), (x, kernel))


@pytest.mark.parametrize("args,error,match", [
    (dict(scale=0), ValueError, "scale: expected an integer >= 1"),
    (dict(scale=1.5), ValueError, "scale: expected an integer >= 1"),
    (dict(scale="2"), TypeError, "scale: expected an integer >= 1"),
    (dict(kernel=torch.rand(4, 4)), ValueError, "kernel: expected .* k odd"),
    (dict(kernel=torch.rand(3, 5, 5)), ValueError, r"kernel: expected one kernel per image \(2\), got 3"),
    (dict(kernel=torch.full((5, 5), float("nan"))), ValueError, "kernel: expected finite values"),
    (dict(kernel=torch.rand(1, 1, 5, 5)), ValueError, r"kernel: expected \[k, k\] or \[B, k, k\]"),
    (dict(x=torch.rand(8, 8)), ValueError, r"x: expected an image \[C, H, W\] or a batch"),
    (dict(x=torch.rand(1, 2, 3, 8, 8)), ValueError, r"x: expected an image \[C, H, W\] or a batch"),
    (dict(x=torch.ones(2, 3, 8, 8, dtype=torch.int32)), TypeError, "x: expected a floating-point tensor"),
    (dict(x=torch.full((2, 3, 8, 8), float("nan"))), ValueError, "x: expected finite values"),
    (dict(mode="nearest"), ValueError, "mode: expected one of"),
    (dict(backend="opencl"), ValueError, "backend: expected one of"),
])
def test_bad_input(args, error, match):
    call = dict(x=torch.rand(2, 3, 8, 8), kernel=torch.rand(5, 5), scale=2)
    call.update(args)
    with pytest.raises(error, match=match):
        mzsr_fast.degrade(**call)


def test_bad_noise_sigma():
    with pytest.raises(ValueError, match="noise_sigma: expected a number >= 0"):
        mzsr_fast.degrade(torch.rand(3, 8, 8), torch.rand(3, 3), 2, noise_sigma=-0.1)


NEGATIVE = np.full((3, 3), -1 / 9)                                      # all negative, sum -1
ONE_NEGATIVE = np.array([[0.0, -0.1, 0.0], [0.2, 0.8, 0.2], [0.0, -0.1, 0.0]])  # a sharpening kernel, sum 1
ZERO_SUM = np.array([[0.0, 0.0, 0.0], [0.5, 0.0, -0.5], [0.0, 0.0, 0.0]])


@pytest.mark.parametrize("weights,message", [
    (NEGATIVE, r"kernel: expected non-negative weights \(a blur kernel\), got 9 negative of 9 \(the smallest -0.1111\)"),
    (ONE_NEGATIVE, r"kernel: expected non-negative weights \(a blur kernel\), got 2 negative of 9 \(the smallest -0.1\)"),
    (ZERO_SUM, r"kernel: expected non-negative weights \(a blur kernel\), got 1 negative of 9"),
    (np.zeros((3, 3)), r"kernel: expected weights with a positive sum, got 0$"),
])
def test_load_kernel_refuses_what_is_not_a_blur_kernel(tmp_path, weights, message):
    from scipy.io import savemat

    from mzsr_fast.degradation import load_kernel

    for spec in (weights, torch.from_numpy(weights).float()):
        with pytest.raises(ValueError, match=message):
            load_kernel(spec)
    np.save(tmp_path / "k.npy", weights)
    savemat(tmp_path / "k.mat", {"kernel": weights})
    for name in ("k.npy", "k.mat"):
        path = str(tmp_path / name)
        with pytest.raises(ValueError, match=message.rstrip("$") + f".* in {path}$"):
            load_kernel(path)


def test_degrade_command_refuses_a_negative_kernel_file(tmp_path, capsys):
    from mzsr_fast.cli import main

    np.save(tmp_path / "neg.npy", NEGATIVE)
    out = tmp_path / "out"
    assert main(["degrade", "example", "-o", str(out), "--kernel", str(tmp_path / "neg.npy")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith(f"kernel: expected non-negative weights (a blur kernel), got 9 "
                                                  f"negative of 9 (the smallest -0.1111) in {tmp_path / 'neg.npy'}\n")
    assert not out.exists() or not any(out.iterdir())


def test_load_kernel_divides_weights_that_do_not_sum_to_one_and_says_so():
    from mzsr_fast.degradation import load_kernel

    with pytest.warns(UserWarning, match="kernel: weights summing to 9; divided by their sum"):
        kernel, _ = load_kernel(np.ones((3, 3), dtype=np.int64))
    assert torch.equal(kernel, torch.full((3, 3), 1 / 9, dtype=torch.float64))
    nearly = np.full((3, 3), 1 / 9, dtype=np.float32)  # a float32 file: left as it is
    assert torch.equal(load_kernel(nearly)[0], torch.from_numpy(nearly).double())


@pytest.mark.parametrize("weights,message", [
    (np.full((3, 3), 1 / 9, dtype=complex), "kernel: expected real numbers, got dtype torch.complex128"),
    (np.eye(3, dtype=bool), "kernel: expected real numbers, got dtype torch.bool"),
    (None, "kernel: expected a preset name, .* got NoneType"),
    ([[1, "a"], [2, 3]], r"kernel: expected a \[k, k\] array of numbers"),
])
def test_load_kernel_refuses_what_is_not_numbers(weights, message):
    from mzsr_fast.degradation import load_kernel

    with pytest.raises(ValueError, match=message):
        load_kernel(weights)


def test_load_kernel_names_what_a_mat_file_holds_or_that_it_is_unreadable(tmp_path):
    from scipy.io import savemat

    from mzsr_fast.degradation import load_kernel

    savemat(tmp_path / "psf.mat", {"psf": np.ones((3, 3)) / 9, "other": np.zeros(2)})
    with pytest.raises(ValueError, match=r"psf.mat: expected a MATLAB file with a variable 'kernel', it holds "
                                         r"other, psf$"):
        load_kernel(str(tmp_path / "psf.mat"))
    (tmp_path / "garbage.mat").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"garbage.mat: not a readable MATLAB file"):
        load_kernel(str(tmp_path / "garbage.mat"))


def test_eight_bit_values_warn_that_the_clip_would_flatten_them():
    x = torch.rand(3, 9, 8, dtype=torch.float64) * 255
    with pytest.warns(UserWarning, match=r"x: values from .* expected an image in \[0, 1\] \(8-bit values\? divide by 255\)"):
        mzsr_fast.degrade(x, mzsr_fast.PRESETS["g_d_2.0"].kernel, 2)

