"""Adaptation on a pixel budget: MZSR(10) adaptation time against the LR image's size.

Rows of the group "MZSR(10) adaptation cpu fp32": mzsr_fast.adapt_model (the son,
the windows and the ten steps; no inference) of a 512x512 and of a 4000x3000 LR
image with the default budget (adapt.ADAPT_PIXELS), and of the 512x512 image
adapted whole (adapt_pixels=0, the paper's protocol). Printed after the table, as
timing.py's speed-ups (the other row's time over this one's): the 512x512 image's
time over the 4000x3000 image's (the budget's promise: at least 1 / 1.2 = 0.83),
and whole-image adaptation's time over the budget's on the 512x512 image.

Rows of the group "8 frames 128x128 LR MZSR(10) cpu fp32": one adaptation shared
by the 8 frames and the 8 inferences (adapt(frames, share=True)) against one
frame's adaptation and the 8 inferences with its network (adapt_model, then
adapt(steps=0) per frame): the promise is at most 1.3x.

Rows of the group "kernel estimate cpu": blind mode's estimate_kernel of a 512x512
and of a 4000x3000 LR image (each on its blind.ESTIMATE_WINDOWS most textured
windows), against a 1024x1024 image estimated whole (blind.ESTIMATE_SIDE raised
past it: the estimators on every pixel, as before the windows; a whole 4000x3000
image takes about 100 s and 5 GB).

Run: pytest benchmarks/bench_budget.py --benchmark-only -s
"""
import os
from functools import cache

import pytest
import torch

import mzsr_fast
from timing import row

THREADS = int(os.environ.get("MZSR_BENCH_THREADS", "2"))


@cache
def _photo(height: int, width: int) -> torch.Tensor:
    """A textured LR image [3, height, width]: smooth shapes with noise (no flat regions to skip)."""
    g = torch.Generator().manual_seed(0)
    y, x = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                          indexing="ij")
    base = 0.5 + 0.25 * torch.sin(x / 13.0) * torch.cos(y / 17.0) + 0.1 * torch.sin((x + y) / 5.0)
    return (base + 0.05 * torch.rand(3, height, width, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("size,pixels", [((512, 512), None), ((3000, 4000), None), ((512, 512), 0)],
                         ids=["512x512", "4000x3000", "512x512-whole"])
def test_adaptation_time_against_image_size(benchmark, size, pixels):
    torch.set_num_threads(THREADS)
    lr = _photo(*size)
    budget = {} if pixels is None else {"adapt_pixels": pixels}
    name = f"{size[1]}x{size[0]} LR" + (" whole" if pixels == 0 else "")
    against = ("512x512 LR",) if name != "512x512 LR" else ("512x512 LR whole",)
    row(benchmark, "MZSR(10) adaptation cpu fp32", name, against)
    benchmark.extra_info.update(lr_pixels=size[0] * size[1], adapt_pixels=pixels, threads=THREADS)
    benchmark.pedantic(lambda: mzsr_fast.adapt_model(lr, "g_d_2.0", 2, steps=10, model="direct_x2", **budget),
                       rounds=2, iterations=1, warmup_rounds=1)


def _frames() -> list[torch.Tensor]:
    """8 frames of 128x128: crops of one textured image."""
    photo = _photo(256, 512)
    return [photo[:, r:r + 128, c:c + 128] for r in (0, 128) for c in (0, 128, 256, 384)]


@pytest.mark.parametrize("impl", ["shared", "one frame adapted"])
def test_shared_adaptation_of_8_frames(benchmark, impl):
    torch.set_num_threads(THREADS)
    frames = _frames()

    def one_frame_adapted():
        net = mzsr_fast.adapt_model(frames[0], "g_d_2.0", 2, steps=10, model="direct_x2")
        return [mzsr_fast.adapt(frame, "g_d_2.0", 2, steps=0, model=net) for frame in frames]

    fn = one_frame_adapted if impl == "one frame adapted" else \
        lambda: mzsr_fast.adapt(frames, "g_d_2.0", 2, steps=10, model="direct_x2", share=True)
    row(benchmark, "8 frames 128x128 LR MZSR(10) cpu fp32", impl,
        ("one frame adapted",) if impl == "shared" else ())
    benchmark.extra_info.update(threads=THREADS)
    benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("size,whole", [((512, 512), False), ((3000, 4000), False), ((1024, 1024), True)],
                         ids=["512x512", "4000x3000", "1024x1024-whole"])
def test_kernel_estimate_time_against_image_size(benchmark, monkeypatch, size, whole):
    from mzsr_fast import blind

    torch.set_num_threads(THREADS)
    lr = _photo(*size)
    if whole:
        monkeypatch.setattr(blind, "ESTIMATE_SIDE", max(size))
    name = f"{size[1]}x{size[0]} LR" + (" whole" if whole else "")
    row(benchmark, "kernel estimate cpu", name, ("1024x1024 LR whole",) if not whole else ())
    benchmark.extra_info.update(lr_pixels=size[0] * size[1], threads=THREADS)
    benchmark.pedantic(lambda: blind.estimate_kernel(lr), rounds=2, iterations=1, warmup_rounds=1)
