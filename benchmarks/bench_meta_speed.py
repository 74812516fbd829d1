"""A meta-iteration against its floor, the bare network passes.

A meta-iteration of T tasks x K inner steps on N + N patches needs 2 x K x T
forward+backward passes of MZSRNet on N patches (support and query, every
step); running just those passes with one shared weight set and plain
autograd is the floor ("bare passes"). This file times, in the same run and
interleaved (bare, ours, bare, ours, ...; best of MZSR_BENCH_ROUNDS rounds
after a warm-up of each):

- ours: what MetaLearner.compute_gradients runs: maml.inner_loop under the
  trainer's autocast, the multi-step loss, its backward to the initial weights;
- bare: the 2 x K x T passes, channels-last, under the same autocast;

for the shipped config (4 tasks, 8 + 8 patches of 48x48) and the paper's config
(5 tasks, 8 + 8 of 64x64), first and second order, fp32 and bf16, and reports
ours / bare. The bare passes are the floor of a first-order iteration; the
exact second-order one also differentiates through every support backward
(its double backward, then the support forward's backward), which by a count
of the convolutions costs as much again: 12 convolution passes per layer and
task step against the bare 6, so 2.0 is its floor on this scale. The bf16
rows also give bf16 / fp32 of ours (the training speed-up of --amp) when the
fp32 row ran first in the same session. Name the CPU (lscpu) with the numbers:
bf16 gains depend on it (AMX).

Run: [MZSR_BENCH_THREADS=n] pytest benchmarks/bench_meta_speed.py --benchmark-only -s
"""
from __future__ import annotations

import os

import pytest
import torch

from mzsr_fast import maml
from mzsr_fast.model import MZSRNet, functional_forward
from mzsr_fast.train.precision import autocast
from timing import timed

ROUNDS = int(os.environ.get("MZSR_BENCH_ROUNDS", "2"))
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if os.environ.get("MZSR_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["MZSR_BENCH_THREADS"]))
STEPS = 5
CONFIGS = {"shipped": (4, 8, 48), "spec": (5, 8, 64)}  # tasks, patches per set, patch size
_OURS_FP32: dict[tuple[str, int], float] = {}  # (config, order) -> seconds, for the bf16 / fp32 ratio


def _problem(tasks: int, patches: int, size: int):
    gen = torch.Generator().manual_seed(0)
    sets = [torch.rand(tasks, patches, 3, size, size, generator=gen).to(DEVICE) for _ in range(4)]
    return MZSRNet().to(DEVICE), (sets[0], sets[1]), (sets[2], sets[3])


def _ours(net, support, query, order: int, amp: bool) -> None:
    params = dict(net.named_parameters())
    with autocast(DEVICE, amp):
        result = maml.inner_loop(params, support, query, STEPS, 0.01, order=order)
    loss = maml.multi_step_loss(result.query_losses.float(), maml.msl_weights(1000, STEPS, device=DEVICE))
    torch.autograd.grad(loss, list(params.values()))


def _bare(net, support, amp: bool) -> None:
    params = dict(net.named_parameters())
    x, y = support
    tasks = x.shape[0]
    x0 = x[0].contiguous(memory_format=torch.channels_last)
    for _ in range(2 * STEPS * tasks):
        with autocast(DEVICE, amp):
            out = functional_forward(params, x0)
        loss = (out.float() - y[0]).abs().mean()
        torch.autograd.grad(loss, list(params.values()))


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_meta_iteration_vs_bare_passes(benchmark, config, order, amp):
    net, support, query = _problem(*CONFIGS[config])
    bare_times = []
    device = DEVICE.type

    def setup():
        bare_times.append(timed(lambda: _bare(net, support, amp), device))

    _bare(net, support, amp)
    _ours(net, support, query, order, amp)  # warm-ups
    benchmark.pedantic(lambda: _ours(net, support, query, order, amp), setup=setup, rounds=ROUNDS,
                       iterations=1, warmup_rounds=0)
    ours, bare = benchmark.stats.stats.min, min(bare_times)
    precision = "bf16" if amp else "fp32"
    info = {"device": str(DEVICE), "threads": torch.get_num_threads(), "config": config, "order": order,
            "precision": precision, "ours_s": ours, "bare_s": bare, "ours_over_bare": ours / bare}
    line = f"\n{config} order {order} {precision}: ours {ours:.2f} s, bare passes {bare:.2f} s, ours/bare {ours / bare:.2f}"
    if not amp:
        _OURS_FP32[config, order] = ours
    elif (config, order) in _OURS_FP32:
        info["bf16_speedup"] = _OURS_FP32[config, order] / ours
        line += f", bf16 speed-up over fp32 {info['bf16_speedup']:.2f}x"
    benchmark.extra_info.update(info)
    print(line)
