"""Training data: HR images, random patches, task batches, and their degradation.

The data stream is a pure function of (seed, iteration, item): every patch
and every task kernel of iteration i comes from its own generator seeded with
a hash of (seed, stream, i, item index). A prefetching thread can therefore
run ahead, a resumed run sees exactly the batches an uninterrupted one would,
and ranks of a distributed run can each make their own share of a global
batch without talking to each other.

What runs where: the prefetch thread cuts uint8 HR patches on the CPU (cheap
indexing); the degradation (blur, subsample, bicubic up) runs on the training
device in torch (`pretrain_pairs`, `task_pairs`).
"""
from __future__ import annotations

import hashlib
import math
import os
import queue
import threading
import warnings
from dataclasses import dataclass

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..degradation import degrade
from ..gaussian import gaussian_kernel, sample_kernel_params
from ..io import read_image
from ..ops.blur_downsample import blur_downsample
from ..resize import imresize

__all__ = ["DataError", "TRAIN_EXTENSIONS", "FLAT_THRESHOLD", "find_images", "holdout_paths", "ImageBank", "PatchSampler",
           "TaskBatch", "Prefetcher", "pretrain_pairs", "task_pairs", "degrade_tasks", "mean_squared_gradient",
           "shard"]

TRAIN_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")

# The reference keeps a patch when log(mean squared gradient + 1e-10) >= -6
# (gradients of the [0, 1] image, summed over x and y, averaged over pixels).
FLAT_THRESHOLD = math.exp(-6.0)


class DataError(ValueError):
    """A training data folder that cannot be used (missing, empty, no usable images)."""


def shard(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous slice [start, stop) of n items that rank owns (sizes differ by at most one)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def find_images(root) -> list[str]:
    """All PNG/JPEG/BMP files under root (recursively), sorted. Raises DataError
    for a missing folder, a file instead of a folder, or a folder without images."""
    root = os.fspath(root)
    if not os.path.exists(root):
        raise DataError(f"{root}: no such data folder")
    if not os.path.isdir(root):
        raise DataError(f"{root}: not a folder (expected a folder of {'/'.join(TRAIN_EXTENSIONS)} images)")
    paths = []
    seen_any = False
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            seen_any = True
            if name.lower().endswith(TRAIN_EXTENSIONS) and not name.startswith("."):
                paths.append(os.path.join(folder, name))
    if not paths:
        what = "is empty" if not seen_any else f"holds no {'/'.join(TRAIN_EXTENSIONS)} images"
        raise DataError(f"{root}: the data folder {what}")
    return sorted(paths)


def holdout_paths(root, count: int) -> list[str]:
    """count images of root (find_images order) kept out of training for
    validation: evenly spaced over the sorted list, so the split is fixed by
    the folder's content and spans its subfolders."""
    paths = find_images(root)
    if count >= len(paths):
        raise DataError(f"{root}: cannot hold out {count} of its {len(paths)} images for validation")
    return [paths[(i * len(paths)) // count] for i in range(count)] if count else []


def mean_squared_gradient(patch: torch.Tensor) -> float:
    """Mean of dx^2 + dy^2 over a [C, H, W] patch in [0, 1] (the reference's
    flatness measure: forward differences on the top-left (H-1) x (W-1) pixels)."""
    x = patch.to(torch.float64)
    dy = x[:, :-1, :-1] - x[:, 1:, :-1]
    dx = x[:, :-1, :-1] - x[:, :-1, 1:]
    return float((dy * dy + dx * dx).mean())


def _read_uint8(path: str):
    """uint8 [3, H, W] of an image file, or the exception that reading it raised.

    8-bit files are decoded straight to uint8; anything else (16-bit, float)
    goes through mzsr_fast.io.read_image and is rounded to 8 bits.
    """
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGB", "L", "P", "RGBA", "LA", "PA", "CMYK", "YCbCr", "1"):
                # pillow's array is read-only: copy it (ascontiguousarray would not for a 1x1 image)
                array = np.asarray(image.convert("RGB"), dtype=np.uint8)
                return torch.from_numpy(array.transpose(2, 0, 1).copy())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.round(read_image(path, torch.float32) * 255).to(torch.uint8).contiguous()
    except UnidentifiedImageError:
        return ValueError("not an image file pillow can read")
    except Image.DecompressionBombError as error:
        return ValueError(f"refused as a possible decompression bomb ({error})")
    except (OSError, SyntaxError, ValueError) as error:
        return ValueError(f"corrupt or truncated image ({error})")


class ImageBank:
    """The training images, decoded once and kept in memory as uint8 [3, H, W].

    Images smaller than min_size on a side and files that cannot be decoded are
    skipped with a warning that names them; if nothing usable is left, DataError.
    Memory: 3 bytes per pixel (T91 + BSD200: about 100 MB; DIV2K: about 6 GB).
    """

    def __init__(self, root, min_size: int, exclude=()):
        self.root = os.fspath(root)
        self.min_size = int(min_size)
        excluded = set(exclude)
        paths = [p for p in find_images(self.root) if p not in excluded]
        self.paths: list[str] = []
        self.images: list[torch.Tensor] = []
        corrupt, small = [], []
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # decoders release the GIL
            decoded = list(pool.map(_read_uint8, paths))
        for path, image in zip(paths, decoded):
            if isinstance(image, Exception):
                corrupt.append(path)
                warnings.warn(f"skipping unreadable training image {path}: {image}", stacklevel=2)
                continue
            if min(image.shape[-2:]) < self.min_size:
                small.append(f"{path} ({image.shape[-2]}x{image.shape[-1]})")
                continue
            self.paths.append(path)
            self.images.append(image)
        if small:
            listed = ", ".join(small[:5]) + (f" and {len(small) - 5} more" if len(small) > 5 else "")
            warnings.warn(f"skipping {len(small)} training image(s) smaller than the {self.min_size}x{self.min_size} "
                          f"patch: {listed}", stacklevel=2)
        if not self.images:
            reasons = []
            if small:
                reasons.append(f"{len(small)} smaller than the {self.min_size}x{self.min_size} patch")
            if corrupt:
                reasons.append(f"{len(corrupt)} unreadable")
            raise DataError(f"{self.root}: no usable training images ({len(paths)} found: {', '.join(reasons)})")
        # Images are drawn in proportion to the number of patch positions they
        # hold, as when the reference cuts every patch of every image.
        positions = torch.tensor([(im.shape[1] - self.min_size + 1) * (im.shape[2] - self.min_size + 1)
                                  for im in self.images], dtype=torch.float64)
        self.cumulative = torch.cumsum(positions / positions.sum(), 0)
        self.skipped = corrupt + [s.rsplit(" (", 1)[0] for s in small]

    def __len__(self) -> int:
        return len(self.images)


def _generator(seed: int, *keys) -> torch.Generator:
    """A CPU generator seeded by a hash of (seed, keys): independent streams per item."""
    digest = hashlib.blake2b(repr((int(seed),) + keys).encode(), digest_size=8).digest()
    generator = torch.Generator()
    generator.manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
    return generator


@dataclass
class TaskBatch:
    """Tasks of one meta-iteration, as cut on the CPU.

    hr: uint8 [T, M, 3, P, P] (M = support + query patches); theta, lambda1,
    lambda2: float64 [T] kernel parameters; scales: float64 [T].
    """

    hr: torch.Tensor
    theta: torch.Tensor
    lambda1: torch.Tensor
    lambda2: torch.Tensor
    scales: torch.Tensor

    def pin_memory(self) -> "TaskBatch":
        return TaskBatch(self.hr.pin_memory(), self.theta, self.lambda1, self.lambda2, self.scales)


class PatchSampler:
    """Random HR patches: position uniform over all patch positions, one of the
    8 flips/rotations, flat patches rejected (mean squared gradient below
    flat_threshold; after max_tries rejections the last draw is kept)."""

    def __init__(self, bank: ImageBank, patch_size: int, seed: int, flat_threshold: float = FLAT_THRESHOLD,
                 max_tries: int = 50):
        if patch_size > bank.min_size:
            raise ValueError(f"patch_size: {patch_size} is larger than the bank's minimum size {bank.min_size}")
        self.bank = bank
        self.patch_size = int(patch_size)
        self.seed = int(seed)
        self.flat_threshold = float(flat_threshold)
        self.max_tries = int(max_tries)

    def patch(self, generator: torch.Generator) -> torch.Tensor:
        """One uint8 [3, P, P] patch drawn with generator."""
        p = self.patch_size
        for _ in range(self.max_tries):
            u = torch.rand(3, generator=generator, dtype=torch.float64)
            index = min(int(torch.searchsorted(self.bank.cumulative, u[0:1]).item()), len(self.bank) - 1)
            image = self.bank.images[index]
            top = int(u[1] * (image.shape[1] - p + 1))
            left = int(u[2] * (image.shape[2] - p + 1))
            crop = image[:, top:top + p, left:left + p]
            if self.flat_threshold <= 0 or mean_squared_gradient(crop.to(torch.float32) / 255) >= self.flat_threshold:
                break
        transform = int(torch.randint(8, (1,), generator=generator))
        if transform >= 4:
            crop = crop.flip(-1)
        return torch.rot90(crop, transform % 4, dims=(-2, -1)).contiguous()

    def pretrain_batch(self, iteration: int, start: int, stop: int) -> torch.Tensor:
        """Items [start, stop) of the global batch of iteration: uint8 [stop - start, 3, P, P]."""
        return torch.stack([self.patch(_generator(self.seed, "pretrain", iteration, item))
                            for item in range(start, stop)])

    def task_batch(self, iteration: int, start: int, stop: int, patches_per_task: int,
                   scales: tuple[float, ...], min_variance: float = 1.0) -> TaskBatch:
        """Tasks [start, stop) of the global meta-batch of iteration. Each task:
        a scale from scales, kernel parameters from the training distribution
        at that scale (docs/method.md section 2; gaussian.sample_kernel_params
        with min_variance) and patches_per_task HR patches."""
        hr, params, chosen = [], [], []
        for task in range(start, stop):
            g = _generator(self.seed, "task", iteration, task)
            scale = float(scales[int(torch.randint(len(scales), (1,), generator=g))]) if len(scales) > 1 \
                else float(scales[0])
            theta, l1, l2 = sample_kernel_params(1, scale, generator=g, dtype=torch.float64,
                                                 min_variance=min_variance)
            params.append(torch.cat([theta, l1, l2]))
            chosen.append(scale)
            hr.append(torch.stack([self.patch(g) for _ in range(patches_per_task)]))
        params = torch.stack(params)
        return TaskBatch(torch.stack(hr), params[:, 0].contiguous(), params[:, 1].contiguous(),
                         params[:, 2].contiguous(), torch.tensor(chosen, dtype=torch.float64))


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher:
    """Makes make(i) for i = start, start + 1, ..., stop - 1 in a background
    thread, up to depth items ahead, so the training device does not wait for
    patches. Items are pinned when pin is True (for CUDA copies). Iterate it;
    call close() (or use it as a context manager) to stop the thread."""

    def __init__(self, make, start: int, stop: int, depth: int = 2, pin: bool = False):
        self._make = make
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._pin = pin
        self._range = range(start, stop)
        self._thread = threading.Thread(target=self._run, name="mzsr-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self):
        for i in self._range:
            if self._stop.is_set():
                return
            try:
                item = self._make(i)
                if self._pin:
                    item = item.pin_memory()
            except BaseException as error:  # noqa: BLE001  (handed to the consumer)
                self._put(_Failure(error))
                return
            if not self._put((i, item)):
                return

    def __iter__(self):
        return self

    def __next__(self):
        item = self._queue.get()
        if isinstance(item, _Failure):
            raise item.error
        return item

    def close(self) -> None:
        """Stop the thread and wait for it (at most the item it is making): no
        thread of ours runs torch code while the process shuts down."""
        self._stop.set()
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def to_unit(hr: torch.Tensor, device, dtype=torch.float32) -> torch.Tensor:
    """uint8 patches -> float in [0, 1] on device."""
    return hr.to(device, non_blocking=True).to(dtype).div_(255)


def pretrain_pairs(hr: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, target) for large-scale training: input = bicubic-up(bicubic-down(hr)).

    hr: [B, 3, P, P] float in [0, 1] on the training device.
    """
    size = hr.shape[-2:]
    lr = imresize(hr, scale=1.0 / scale).clamp(0, 1)
    return imresize(lr, scale=scale, size=tuple(size)), hr


def _direct_grid(length: int, scale: float, device) -> torch.Tensor:
    """The reference's sample positions for a non-integer scale: round(linspace(0, L - s, ceil(L / s)))."""
    out = max(1, math.ceil(length / scale - 1e-9))
    return torch.round(torch.linspace(0, length - scale, out, dtype=torch.float64)).long().clamp(0, length - 1) \
        .to(device)


def degrade_tasks(x: torch.Tensor, kernels: torch.Tensor, scale: float, mode: str) -> torch.Tensor:
    """Blur with one kernel per image and subsample by scale, clipped to [0, 1].

    x: [B, 3, H, W]; kernels: [B, k, k]. Integer scales go through
    mzsr_fast.degrade (fused kernels where available); non-integer scales (the
    multi-scale variant) blur at stride 1 and then sample the reference's
    rounded linspace grid (direct) or bicubic-resize by 1 / scale.
    """
    if float(scale).is_integer():
        return degrade(x, kernels, int(scale), mode=mode, check=False)  # patches of images read from files
    blurred = blur_downsample(x, kernels, 1)
    h, w = x.shape[-2:]
    if mode == "direct":
        out = blurred.index_select(-2, _direct_grid(h, scale, x.device)) \
            .index_select(-1, _direct_grid(w, scale, x.device))
    else:
        out = imresize(blurred, scale=1.0 / scale)
    return out.clamp(0, 1)


def task_pairs(batch: TaskBatch, device, mode: str, kernel_size: int = 15, dtype=torch.float32):
    """Support and query sets of a TaskBatch, made on device.

    Returns (inputs, targets), each [T, M, 3, P, P]: targets are the HR
    patches, inputs the patches degraded with their task's kernel and scale
    and bicubically upsampled back to P x P.
    """
    hr = to_unit(batch.hr, device, dtype)
    t, m = hr.shape[:2]
    size = tuple(hr.shape[-2:])
    kernels = gaussian_kernel(batch.theta.to(device), batch.lambda1.to(device), batch.lambda2.to(device),
                              kernel_size).to(dtype)
    inputs = torch.empty_like(hr)
    scales = batch.scales.tolist()
    for scale in sorted(set(scales)):
        tasks = [i for i, s in enumerate(scales) if s == scale]
        index = torch.tensor(tasks, device=device) if len(tasks) < t else None
        x = hr if index is None else hr.index_select(0, index)
        k = kernels if index is None else kernels.index_select(0, index)
        flat = x.flatten(0, 1)
        lr = degrade_tasks(flat, k.repeat_interleave(m, 0), scale, mode)
        up = imresize(lr, scale=scale, size=size).view(len(tasks), m, *flat.shape[1:])
        if index is None:
            inputs = up
        else:
            inputs.index_copy_(0, index, up)
    return inputs, hr
