"""The fused SGD update alone: every MZSRNet parameter stacked over 5 tasks
(225,091 x 5 = 1,125,455 elements in 16 tensors), one inner-loop update

    out_i = p_i - rate * g_i

with a float rate and with one rate per task, by every available sgd_step
backend against what a user would write: a Python loop over the tensors and
torch._foreach ops (one call per list), in the same run, ratios in
benchmark.extra_info and printed.

Run: [MZSR_BENCH_THREADS=n] pytest benchmarks/bench_sgd_step.py --benchmark-only -s
"""
from __future__ import annotations

import os

import pytest
from timing import sync, timed
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



@pytest.mark.parametrize("rate", ["float", "per-task"])
@pytest.mark.parametrize("backend", _backends())
def test_sgd_step(benchmark, lists, backend, rate):
    """Rounds interleave the three: the references run in pedantic's untimed
    setup (timed here), then ours; best of the rounds for each."""
    params, grads = lists
    rates = 0.01 if rate == "float" else torch.linspace(0.005, 0.02, TASKS, device=DEVICE)
    run = lambda: sgd_step(params, grads, rates, backend=backend)  # noqa: E731
    for a, b in zip(run(), python_loop(params, grads, rates)):
        torch.testing.assert_close(a, b)
    refs = {"python loop": lambda: python_loop(params, grads, rates), "foreach": lambda: foreach(params, grads, rates)}
    times = {name: [] for name in refs}

    def setup():
        for name, fn in refs.items():
            times[name].append(timed(fn, DEVICE))

    for fn in [*refs.values(), run]:
        fn()  # warm-up
    rounds = 3 if backend == "triton" and DEVICE == "cpu" else 50  # the interpreter is slow
    benchmark.pedantic(lambda: (run(), sync(DEVICE)), setup=setup, rounds=rounds, iterations=1, warmup_rounds=0)
    ours = benchmark.stats.stats.min
    loop_s, foreach_s = min(times["python loop"]), min(times["foreach"])
    moved = 3 * sum(p.numel() * p.element_size() for p in params)
    benchmark.extra_info.update({"device": DEVICE, "threads": torch.get_num_threads(), "backend": backend,
                                 "rate": rate, "python_loop_s": loop_s, "foreach_s": foreach_s,
                                 "speedup_vs_python_loop": loop_s / ours, "speedup_vs_foreach": foreach_s / ours,
                                 "gb_per_s": moved / ours / 1e9})
    print(f"\nsgd_step {backend} ({rate} rates, {DEVICE}, {torch.get_num_threads()} threads): {ours * 1e3:.2f} ms "
          f"({moved / ours / 1e9:.1f} GB/s); python loop {loop_s * 1e3:.2f} ms ({loop_s / ours:.2f}x), "
          f"torch._foreach {foreach_s * 1e3:.2f} ms ({foreach_s / ours:.2f}x)")
