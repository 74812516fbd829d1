"""A meta-iteration against its floor, the bare network passes.

A meta-iteration of T tasks x K inner steps on N + N patches needs 2 x K x T
forward+backward passes of MZSRNet on N patches (support and query, every
step); running just those passes with one shared weight set and plain
autograd is the floor ("bare passes"). Rows of the group "CONFIG order N",
MZSR_BENCH_ROUNDS rounds each after a warm-up:

- ours: what MetaLearner.compute_gradients runs: maml.inner_loop under the
  trainer's autocast, the multi-step loss, its backward to the initial weights;
- bare: the 2 x K x T passes, channels-last, under the same autocast;

for the shipped config (4 tasks, 8 + 8 patches of 48x48) and the paper's config
(5 tasks, 8 + 8 of 64x64), first and second order, fp32 and bf16. Printed after
pytest-benchmark's table (timing.py): bare / ours (the inverse of ours / bare),
and for bf16 also ours fp32 / ours bf16 (the training speed-up of --amp). The
bare passes are the floor of a first-order iteration; the
exact second-order one also differentiates through every support backward
(its double backward, then the support forward's backward), which by a count
of the convolutions costs as much again: 12 convolution passes per layer and
task step against the bare 6, so bare / ours of 0.5 is its ceiling on this scale.
Name the CPU (lscpu) with the numbers: bf16 gains depend on it (AMX).

Run: [MZSR_BENCH_THREADS=n] pytest benchmarks/bench_meta_speed.py --benchmark-only -s
"""
from __future__ import annotations

import os

import pytest
import torch

from mzsr_fast import maml
from mzsr_fast.model import MZSRNet, functional_forward
from mzsr_fast.train.precision import autocast
from timing import row, sync

ROUNDS = int(os.environ.get("MZSR_BENCH_ROUNDS", "2"))
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if os.environ.get("MZSR_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["MZSR_BENCH_THREADS"]))
STEPS = 5
CONFIGS = {"shipped": (4, 8, 48), "spec": (5, 8, 64)}  # tasks, patches per set, patch size


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
@pytest.mark.parametrize("impl", ["ours", "bare"])
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_meta_iteration_vs_bare_passes(benchmark, config, order, impl, amp):
    net, support, query = _problem(*CONFIGS[config])
    precision = "bf16" if amp else "fp32"
    if impl == "ours":
        fn = lambda: _ours(net, support, query, order, amp)  # noqa: E731
        against = ("bare bf16", "ours fp32") if amp else ("bare fp32",)
    else:
        fn = lambda: _bare(net, support, amp)  # noqa: E731
        against = ()
    row(benchmark, f"{config} order {order}", f"{impl} {precision}", against)
    benchmark.extra_info.update({"device": str(DEVICE), "threads": torch.get_num_threads(), "config": config,
                                 "order": order, "precision": precision})
    benchmark.pedantic(lambda: (fn(), sync(DEVICE.type)), rounds=ROUNDS, iterations=1, warmup_rounds=1)
