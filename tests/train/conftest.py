"""Fixtures of the trainer tests: tiny image folders and tiny settings.

Everything is sized for a 2-core CPU: patches of 16-24 pixels, 2 tasks,
1-2 inner steps, a handful of iterations.
"""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from mzsr_fast._tf32 import fp32_precision

from train_helpers import textured


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory):
    """Five training images in PNG, BMP and JPEG, one in a subfolder."""
    root = tmp_path_factory.mktemp("train_images")
    (root / "sub").mkdir()
    Image.fromarray(textured(40, 48, 0)).save(root / "a.png")
    Image.fromarray(textured(36, 36, 1)).save(root / "b.bmp")
    Image.fromarray(textured(48, 40, 2)).save(root / "c.jpg", quality=95)
    Image.fromarray(textured(32, 44, 3)).save(root / "sub" / "d.png")
    Image.fromarray(textured(40, 40, 4)[..., 0], "L").save(root / "sub" / "e.png")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="session")
def smooth_dir(tmp_path_factory):
    """Three images with little noise: a network can learn to sharpen them within a few steps."""
    root = tmp_path_factory.mktemp("smooth_images")
    for i, (h, w) in enumerate([(40, 48), (36, 36), (48, 40)]):
        Image.fromarray(textured(h, w, i, noise=3)).save(root / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def val_dir(tmp_path_factory):
    """Two small held-out images for validation (x2 LR at least 21 x 21, the kernels' size)."""
    root = tmp_path_factory.mktemp("val_images")
    Image.fromarray(textured(44, 44, 7)).save(root / "v1.png")
    Image.fromarray(textured(43, 50, 8)).save(root / "v2.png")
    return root


@pytest.fixture
def deterministic_cuda():
    """CUDA results that repeat bit for bit: deterministic cuDNN algorithms (no
    benchmark-mode choice) and no TF32 in convolutions or matmuls; restored after."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cudnn = torch.backends.cudnn
    saved = cudnn.deterministic, cudnn.benchmark
    cudnn.deterministic, cudnn.benchmark = True, False
    with fp32_precision("ieee"):
        yield
    cudnn.deterministic, cudnn.benchmark = saved
