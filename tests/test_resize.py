"""MATLAB-compatible bicubic imresize (docs/method.md section 4)."""
import numpy as np
import pytest
import torch

import mzsr_fast
from golden import assert_image_matches, chw, golden_cases


def test_golden_downscaling(shared_dir):
    for name, data in golden_cases(shared_dir, "down_*.npz", 5):
        out = mzsr_fast.imresize(chw(data["input"]), scale=1 / float(data["scale"]))
        assert_image_matches(out, data["output"], name)


def test_golden_upscaling_to_exact_size(shared_dir):
    for name, data in golden_cases(shared_dir, "up_*.npz", 5):
        out = mzsr_fast.imresize(chw(data["input"]), scale=float(data["scale"]), size=data["output"].shape[:2])
        assert_image_matches(out, data["output"], name)


def test_output_sizes():
    x = torch.rand(1, 3, 37, 53)
    assert mzsr_fast.imresize(x, scale=0.5).shape[-2:] == (19, 27)
    assert mzsr_fast.imresize(x, scale=1 / 3).shape[-2:] == (13, 18)
    assert mzsr_fast.imresize(torch.rand(3, 48, 48), scale=1 / 3).shape == (3, 16, 16)
    assert mzsr_fast.imresize(x, size=(20, 9)).shape[-2:] == (20, 9)
    assert mzsr_fast.imresize(x, scale=2, size=(73, 105)).shape[-2:] == (73, 105)
    assert mzsr_fast.imresize(x, scale=(2, 0.5)).shape[-2:] == (74, 27)


def test_identity_and_constant():
    x = torch.rand(2, 3, 9, 11, dtype=torch.float64)
    torch.testing.assert_close(mzsr_fast.imresize(x, scale=1), x)
    const = torch.full((1, 3, 13, 7), 0.37, dtype=torch.float64)
    torch.testing.assert_close(mzsr_fast.imresize(const, scale=3), torch.full((1, 3, 39, 21), 0.37,
                                                                              dtype=torch.float64))


def test_size_alone_uses_ratio_scale():
    x = torch.rand(1, 3, 10, 10, dtype=torch.float64)
    torch.testing.assert_close(mzsr_fast.imresize(x, size=(20, 20)), mzsr_fast.imresize(x, scale=2))


def test_no_antialias_differs_when_downscaling():
    x = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    assert not torch.allclose(mzsr_fast.imresize(x, scale=0.5), mzsr_fast.imresize(x, scale=0.5, antialias=False))


def test_float32_close_to_float64():
    x = torch.rand(2, 3, 17, 23, dtype=torch.float64)
    torch.testing.assert_close(mzsr_fast.imresize(x.float(), scale=2.0).double(), mzsr_fast.imresize(x, scale=2.0),
                               rtol=0, atol=1e-6)


def test_gradcheck():
    x = torch.rand(1, 2, 7, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: mzsr_fast.imresize(t, scale=2, size=(13, 12)), (x,))
    assert torch.autograd.gradcheck(lambda t: mzsr_fast.imresize(t, scale=1 / 3), (x,))


@pytest.mark.parametrize("kwargs,match", [
    (dict(), "scale, size: expected at least one"),
    (dict(scale=0), "scale: expected a positive"),
    (dict(scale=-2), "scale: expected a positive"),
    (dict(scale=float("nan")), "scale: expected a positive"),
    (dict(size=(0, 3)), "size: expected a positive integer"),
    (dict(size=(2, 3, 4)), "size: expected one value or a pair"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mzsr_fast.imresize(torch.rand(3, 8, 8), **kwargs)


@pytest.mark.parametrize("shape", [(8, 8), (1, 1, 3, 8, 8)])
def test_bad_image_rank(shape):
    with pytest.raises(ValueError, match=r"x: expected an image \[C, H, W\] or a batch"):
        mzsr_fast.imresize(torch.rand(shape), scale=2)


def test_integer_image_rejected():
    with pytest.raises(TypeError, match="x: expected a floating-point tensor"):
        mzsr_fast.imresize(torch.zeros(3, 8, 8, dtype=torch.uint8), scale=2)


def test_gather_path_for_long_axes_equals_dense(shared_dir, monkeypatch):
    from mzsr_fast import resize

    data = np.load(shared_dir / "golden" / "up_x3_14x10_to_41x29.npz")
    x = chw(data["input"]).requires_grad_()
    dense = mzsr_fast.imresize(x, scale=3.0, size=(41, 29))
    monkeypatch.setattr(resize, "DENSE_LIMIT", 0)
    resize._device_weights.cache_clear()
    gathered = mzsr_fast.imresize(x, scale=3.0, size=(41, 29))
    assert_image_matches(gathered, data["output"])
    g = torch.rand_like(dense)
    torch.testing.assert_close(torch.autograd.grad(gathered, x, g)[0], torch.autograd.grad(dense, x, g)[0])
    resize._device_weights.cache_clear()


def test_a_scale_whose_kernel_spans_far_beyond_the_input_is_refused():
    """The antialiasing kernel spans 4 / scale input pixels: a scale of 1e-9
    asked numpy for 30 GiB; a kernel over MAX_SPAN inputs long is refused."""
    from mzsr_fast import imresize

    with pytest.raises(ValueError, match=r"scale: \(1e-09, 1e-09\) is too small for an input of 64x64"):
        imresize(torch.rand(3, 64, 64), scale=1e-9)
    assert imresize(torch.rand(3, 64, 64), scale=1 / 64).shape == (3, 1, 1)
    assert imresize(torch.rand(3, 35, 1), scale=0.25).shape == (3, 9, 1)
