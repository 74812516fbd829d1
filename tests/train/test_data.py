"""Training data: bad folders, patch sampling, task degradation, prefetching."""
import math
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from mzsr_fast import degrade, gaussian_kernel, imresize
from mzsr_fast.train.data import (FLAT_THRESHOLD, DataError, ImageBank, PatchSampler, Prefetcher, degrade_tasks,
                                  find_images, mean_squared_gradient, pretrain_pairs, shard, task_pairs)
from train_helpers import textured


# -- bad data folders ------------------------------------------------------

def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="no such data folder"):
        ImageBank(tmp_path / "nope", 16)


def test_file_instead_of_folder(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(DataError, match="not a folder"):
        find_images(tmp_path / "x.png")


def test_empty_folder(tmp_path):
    with pytest.raises(DataError, match="is empty"):
        ImageBank(tmp_path, 16)


def test_folder_without_images(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data.csv").write_text("1,2")
    with pytest.raises(DataError, match="holds no .png/.jpg/.jpeg/.bmp images"):
        ImageBank(tmp_path, 16)


def test_only_images_smaller_than_a_patch(tmp_path):
    Image.fromarray(textured(10, 30, 0)).save(tmp_path / "small.png")
    with pytest.warns(UserWarning, match="small.png"):
        with pytest.raises(DataError, match=r"no usable training images .*1 smaller than the 16x16 patch"):
            ImageBank(tmp_path, 16)


def test_corrupt_file_among_good_ones_is_skipped_with_a_warning(tmp_path):
    Image.fromarray(textured(20, 20, 0)).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    truncated = tmp_path / "truncated.jpg"
    Image.fromarray(textured(40, 40, 1)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.warns(UserWarning) as record:
        bank = ImageBank(tmp_path, 16)
    messages = " ".join(str(w.message) for w in record)
    assert "broken.png" in messages and "truncated.jpg" in messages
    assert len(bank) == 1 and bank.paths[0].endswith("good.png")


def test_only_corrupt_files(tmp_path):
    (tmp_path / "broken.bmp").write_bytes(b"BM nonsense")
    with pytest.warns(UserWarning, match="broken.bmp"):
        with pytest.raises(DataError, match="1 unreadable"):
            ImageBank(tmp_path, 16)


def test_folder_is_searched_recursively(image_dir):
    bank = ImageBank(image_dir, 16)
    assert len(bank) == 5
    assert any(p.endswith("d.png") for p in bank.paths)
    assert all(im.dtype == torch.uint8 and im.shape[0] == 3 for im in bank.images)


# -- patches ---------------------------------------------------------------

def test_batches_are_a_pure_function_of_seed_and_iteration(image_dir):
    bank = ImageBank(image_dir, 16)
    a, b = PatchSampler(bank, 16, seed=3), PatchSampler(bank, 16, seed=3)
    assert torch.equal(a.pretrain_batch(5, 0, 4), b.pretrain_batch(5, 0, 4))
    assert not torch.equal(a.pretrain_batch(5, 0, 4), a.pretrain_batch(6, 0, 4))
    assert not torch.equal(a.pretrain_batch(5, 0, 4), PatchSampler(bank, 16, seed=4).pretrain_batch(5, 0, 4))
    # a rank's share is the same slice of the global batch
    assert torch.equal(a.pretrain_batch(5, 0, 4), torch.cat([a.pretrain_batch(5, 0, 1), a.pretrain_batch(5, 1, 4)]))
    full, part = a.task_batch(2, 0, 3, 4, (2.0, 3.0)), a.task_batch(2, 1, 3, 4, (2.0, 3.0))
    assert torch.equal(full.hr[1:], part.hr) and torch.equal(full.theta[1:], part.theta)
    assert full.hr.shape == (3, 4, 3, 16, 16) and full.hr.dtype == torch.uint8


def test_task_kernels_follow_the_training_distribution(image_dir):
    sampler = PatchSampler(ImageBank(image_dir, 16), 16, seed=0)
    batch = sampler.task_batch(0, 0, 40, 1, (2.0,))
    assert bool(((batch.theta >= 0) & (batch.theta < math.pi)).all())
    assert bool(((batch.lambda1 >= 1) & (batch.lambda1 <= 5)).all())
    assert bool(((batch.lambda2 >= 1) & (batch.lambda2 <= batch.lambda1)).all())


def test_all_eight_flips_and_rotations_occur(tmp_path):
    pattern = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3) * 5
    Image.fromarray(pattern).save(tmp_path / "p.png")
    sampler = PatchSampler(ImageBank(tmp_path, 16), 16, seed=0, flat_threshold=0)
    patches = {sampler.pretrain_batch(i, 0, 1)[0].numpy().tobytes() for i in range(60)}
    assert len(patches) == 8


def test_flat_patches_are_rejected(tmp_path):
    image = textured(32, 64, 0)
    image[:, :32] = 90  # left half flat
    Image.fromarray(image).save(tmp_path / "half.png")
    sampler = PatchSampler(ImageBank(tmp_path, 16), 16, seed=0)
    batch = sampler.pretrain_batch(0, 0, 24).float() / 255
    assert all(mean_squared_gradient(p) >= FLAT_THRESHOLD for p in batch)
    flat = torch.full((3, 16, 16), 0.5)
    assert mean_squared_gradient(flat) < FLAT_THRESHOLD


def test_shard_splits_uneven_counts():
    assert [shard(5, r, 2) for r in range(2)] == [(0, 3), (3, 5)]
    assert [shard(4, r, 2) for r in range(2)] == [(0, 2), (2, 4)]


# -- degradation on the device --------------------------------------------

def test_task_pairs_integer_scale_matches_degrade_and_imresize(image_dir):
    sampler = PatchSampler(ImageBank(image_dir, 16), 16, seed=0)
    batch = sampler.task_batch(0, 0, 2, 4, (2.0,))
    inputs, targets = task_pairs(batch, "cpu", "direct", kernel_size=15)
    assert inputs.shape == targets.shape == (2, 4, 3, 16, 16)
    assert torch.equal(targets, batch.hr.float() / 255)
    k = gaussian_kernel(batch.theta[1], batch.lambda1[1], batch.lambda2[1], 15).float()
    expected = imresize(degrade(targets[1], k, 2), scale=2, size=(16, 16))
    torch.testing.assert_close(inputs[1], expected, rtol=1e-5, atol=1e-6)


def test_non_integer_scale_matches_the_reference_grid():
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.rand(1, 3, 24, 24, dtype=torch.float64)
    kernel = gaussian_kernel(torch.tensor(0.3, dtype=torch.float64), 3.0, 1.5, 15)
    out = degrade_tasks(x, kernel[None], 2.2, "direct")
    # the reference: correlate with a 'reflect' border, then rows round(linspace(0, H - s, ceil(H / s)))
    blurred = np.stack([scipy_ndimage.correlate(c, kernel.numpy(), mode="reflect") for c in x[0].numpy()])
    grid = np.round(np.linspace(0, 24 - 2.2, math.ceil(24 / 2.2))).astype(int)
    expected = np.clip(blurred[:, grid][:, :, grid], 0, 1)
    assert out.shape == (1, 3, 11, 11)
    np.testing.assert_allclose(out[0].numpy(), expected, atol=1e-12)


def test_multiscale_tasks_are_upsampled_back_to_the_patch_size(image_dir):
    sampler = PatchSampler(ImageBank(image_dir, 24), 24, seed=1)
    scales = tuple(round(2.0 + 0.2 * i, 1) for i in range(11))
    batch = sampler.task_batch(0, 0, 4, 2, scales)
    inputs, _ = task_pairs(batch, "cpu", "direct")
    assert inputs.shape == (4, 2, 3, 24, 24) and bool(torch.isfinite(inputs).all())
    assert set(batch.scales.tolist()) <= set(scales)


def test_pretrain_pairs_are_bicubic_down_then_up():
    hr = torch.rand(2, 3, 16, 16)
    x, y = pretrain_pairs(hr, 2.0)
    assert x.shape == y.shape == hr.shape
    torch.testing.assert_close(x, imresize(imresize(hr, scale=0.5).clamp(0, 1), scale=2, size=(16, 16)))


# -- prefetching -------------------------------------------------------------

def test_prefetcher_yields_in_order_and_reports_errors():
    with Prefetcher(lambda i: torch.tensor([i]), 3, 7, depth=2) as p:
        assert [next(p)[0] for _ in range(4)] == [3, 4, 5, 6]

    def make(i):
        if i == 2:
            raise RuntimeError("bad batch 2")
        return torch.tensor([i])

    with Prefetcher(make, 0, 5) as p:
        next(p), next(p)
        with pytest.raises(RuntimeError, match="bad batch 2"):
            next(p)


def test_prefetcher_works_ahead():
    def slow(i):
        time.sleep(0.05)
        return torch.tensor([i])

    with Prefetcher(slow, 0, 4, depth=4) as p:
        time.sleep(0.3)
        start = time.perf_counter()
        items = [next(p)[0] for _ in range(4)]
        assert items == [0, 1, 2, 3] and time.perf_counter() - start < 0.1


def test_holdout_split_is_fixed_spread_and_kept_out_of_the_bank(image_dir):
    from mzsr_fast.train.data import find_images, holdout_paths

    paths = find_images(image_dir)
    held = holdout_paths(image_dir, 2)
    assert held == [paths[0], paths[2]] and holdout_paths(image_dir, 2) == held
    assert holdout_paths(image_dir, 0) == []
    bank = ImageBank(image_dir, 16, exclude=held)
    assert sorted(bank.paths) == sorted(set(paths) - set(held))
    with pytest.raises(DataError, match="cannot hold out 5 of its 5 images"):
        holdout_paths(image_dir, 5)


def test_validation_images_from_a_list_with_a_central_crop(image_dir):
    from mzsr_fast.train.data import find_images
    from mzsr_fast.train.validation import load_images

    paths = find_images(image_dir)
    images = load_images(paths, 2, min_lr_size=3, crop=30)
    assert [name for name, _ in images] == [os.path.relpath(p, image_dir) for p in paths]
    assert all(image.shape[-2:] == (30, 30) for _, image in images)  # every test image is >= 32 a side
    full = dict(load_images(paths, 2))
    name, cropped = images[0]  # a.png, 40 x 48: the crop starts at (5, 9)
    assert torch.equal(cropped, full[name][:, 5:35, 9:39])


def test_validation_settings_need_one_source(image_dir, tmp_path):
    from mzsr_fast.train import MetatrainConfig

    with pytest.raises(ValueError, match="holdout: held-out images are validated on only without val_dir"):
        MetatrainConfig(str(image_dir), out=str(tmp_path), holdout=2, val_dir=str(image_dir)).check()
