"""The fused SGD update alone: every MZSRNet parameter stacked over 5 tasks
(225,091 x 5 = 1,125,455 elements in 16 tensors), one inner-loop update

    out_i = p_i - rate * g_i

with a float rate and with one rate per task, by every available sgd_step
backend and by what a user would write: a Python loop over the tensors
("python_loop") and torch._foreach ops, one call per list ("foreach"). Each is
a row of the group "sgd_step RATE rates"; each backend's speed-up over the two
plain ways is printed after the table (timing.py); extra_info["gb_per_s"] is
the bytes read and written per second at the best round.

Run: [MZSR_BENCH_THREADS=n] pytest benchmarks/bench_sgd_step.py --benchmark-only -s
"""
from __future__ import annotations

import os

import pytest
from timing import row, sync
import torch

from mzsr_fast import dispatch
from mzsr_fast.model import MZSRNet
from mzsr_fast.ops.sgd_step import sgd_step

TASKS = 5
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if os.environ.get("MZSR_BENCH_THREADS"):  # e.g. 1 on a machine whose other core is busy
    torch.set_num_threads(int(os.environ["MZSR_BENCH_THREADS"]))


@pytest.fixture(scope="module")
def lists():
    torch.manual_seed(0)
    shapes = [p.shape for p in MZSRNet().parameters()]
    params = [torch.randn(TASKS, *s, device=DEVICE) for s in shapes]
    grads = [torch.randn(TASKS, *s, device=DEVICE) for s in shapes]
    assert sum(p.numel() for p in params) == 225_091 * TASKS
    return params, grads


def python_loop(params, grads, rates):
    if isinstance(rates, float):
        return [p - rates * g for p, g in zip(params, grads)]
    return [p - rates.view(-1, *([1] * (p.dim() - 1))) * g for p, g in zip(params, grads)]


def foreach(params, grads, rates):
    if isinstance(rates, float):
        return torch._foreach_add(params, grads, alpha=-rates)
    per_task = [rates.view(-1, *([1] * (p.dim() - 1))) for p in params]
    return torch._foreach_sub(params, torch._foreach_mul(grads, per_task))


def _backends():
    out = []
    for name in dispatch.BACKENDS:
        device_type = "cuda" if name == "cuda" else DEVICE
        if device_type == DEVICE and dispatch.unavailable_reason(name, "sgd_step", DEVICE) is None:
            out.append(name)
    return out


PLAIN = {"python_loop": python_loop, "foreach": foreach}


@pytest.mark.parametrize("rate", ["float", "per-task"])
@pytest.mark.parametrize("impl", [*_backends(), *PLAIN])
def test_sgd_step(benchmark, lists, impl, rate):
    params, grads = lists
    rates = 0.01 if rate == "float" else torch.linspace(0.005, 0.02, TASKS, device=DEVICE)
    if impl in PLAIN:
        run = lambda: PLAIN[impl](params, grads, rates)  # noqa: E731
        row(benchmark, f"sgd_step {rate} rates", impl)
    else:
        run = lambda: sgd_step(params, grads, rates, backend=impl)  # noqa: E731
        row(benchmark, f"sgd_step {rate} rates", impl, against=PLAIN)
    for a, b in zip(run(), python_loop(params, grads, rates)):
        torch.testing.assert_close(a, b)
    rounds = 3 if impl == "triton" and DEVICE == "cpu" else 50  # the interpreter is slow
    benchmark.pedantic(lambda: (run(), sync(DEVICE)), rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update({"device": DEVICE, "threads": torch.get_num_threads(), "rate": rate})
    if benchmark.stats:  # None under --benchmark-disable
        moved = 3 * sum(p.numel() * p.element_size() for p in params)
        benchmark.extra_info["gb_per_s"] = moved / benchmark.stats.stats.min / 1e9
