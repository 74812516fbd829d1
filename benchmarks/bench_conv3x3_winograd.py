"""One 64 -> 64 MZSRNet layer (3x3 convolution, bias, ReLU) on one float32 map
[1, 64, S, S] channels-last, S in SIDES, the forward pass without autograd:

- "winograd": mzsr_fast.ops.conv3x3_winograd with relu=True (Winograd F(2x2, 3x3));
- "plain": what a user would write, torch.relu(F.conv2d(x, w, b, padding=1));
- "onednn_fused": oneDNN's convolution with the ReLU as its post-op (what
  stacked.conv3x3_relu runs with winograd=False).

Each is a row of the group "conv3x3 relu SxS"; the Winograd row's speed-up over
the two others is printed after the table (timing.py). extra_info["gflops"]: the
direct convolution's multiply-adds x 2 per second at the best round (the same
count for every row, so Winograd's is the rate it seems to run at).

Run: MZSR_BENCH_THREADS=1 pytest benchmarks/bench_conv3x3_winograd.py --benchmark-only -s
"""
from __future__ import annotations

import os

import pytest
from timing import row
import torch
import torch.nn.functional as F

from mzsr_fast import stacked
from mzsr_fast.ops.conv3x3_winograd import conv3x3_winograd, winograd_pays

SIDES = (128, 256, 512)
CHANNELS = 64
if os.environ.get("MZSR_BENCH_THREADS"):  # e.g. 1 on a machine whose other core is busy
    torch.set_num_threads(int(os.environ["MZSR_BENCH_THREADS"]))


def _layer(side: int):
    gen = torch.Generator().manual_seed(side)
    x = torch.rand(1, CHANNELS, side, side, generator=gen).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(CHANNELS, CHANNELS, 3, 3, generator=gen) / 24
    bias = torch.randn(CHANNELS, generator=gen) / 10
    return x, weight, bias


def plain(x, weight, bias):
    return torch.relu(F.conv2d(x, weight, bias, padding=1))


def onednn_fused(x, weight, bias):
    return stacked.conv3x3_relu(x, weight, bias, winograd=False)


def winograd(x, weight, bias):
    return conv3x3_winograd(x, weight, bias, relu=True)


WAYS = {"winograd": winograd, "plain": plain, "onednn_fused": onednn_fused}


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("way", list(WAYS))
def test_conv3x3_relu(benchmark, way, side):
    x, weight, bias = _layer(side)
    if not winograd_pays(x, weight):
        pytest.skip("the Winograd kernel is not built or does not pay here (float32 CPU maps only)")
    fn = WAYS[way]
    torch.testing.assert_close(fn(x, weight, bias), plain(x, weight, bias), rtol=1e-5, atol=1e-5)
    row(benchmark, f"conv3x3 relu {side}x{side}", way, against=[n for n in WAYS if n != way] if way == "winograd" else ())
    with torch.no_grad():
        benchmark.pedantic(fn, args=(x, weight, bias), rounds=7, warmup_rounds=1)
    benchmark.extra_info["gflops"] = 2 * 9 * CHANNELS * CHANNELS * side * side / benchmark.stats["min"] / 1e9
