"""One meta-iteration of MZSR meta-transfer learning (docs/method.md section 7): 5 tasks x
5 inner steps, 8 + 8 patches of 64x64, L1, alpha = 0.01, MSL-weighted query
losses, meta-gradient wrt the initial parameters; second and first order.

Three implementations, same data, rows of the group "meta-iteration order N"
(time and peak memory):
- ours: mzsr_fast.maml.inner_loop (stacked parameters, fused sgd_step);
- per_task_loop: what a user writes with functional_forward, one task after the
  other, torch.autograd.grad(create_graph=True) and p - rate * g, each task's meta
  loss backpropagated before the next task (the memory-frugal plain way);
- torch_func: functional_call + grad inside vmap over the tasks.
All three are checked to give the per-task loop's meta-gradient; ours's
speed-up over both is printed after pytest-benchmark's table (timing.py).
Peak memory (extra_info["peak_mib"], the largest of the rounds, printed with -s)
on CPU is the peak resident set above the start of the call (malloc_trim,
then the kernel's high-water mark reset through /proc/self/clear_refs); on
CUDA, torch.cuda.max_memory_allocated.

Run: [MZSR_BENCH_THREADS=n] pytest benchmarks/bench_maml.py --benchmark-only -s
     python benchmarks/bench_maml.py [strategies]  (stacked-forward strategy table)
A second-order meta-iteration takes tens of seconds on a 2-core CPU: each row
gets one warm-up round, then MZSR_BENCH_ROUNDS (default 2) rounds.
"""
from __future__ import annotations

import ctypes
import os
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from timing import row
from torch.func import functional_call

from mzsr_fast import maml
from mzsr_fast.model import MZSRNet, functional_forward

TASKS, STEPS, PATCHES, SIZE, ALPHA = 5, 5, 8, 64, 0.01
ROUNDS = int(os.environ.get("MZSR_BENCH_ROUNDS", "2"))
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if os.environ.get("MZSR_BENCH_THREADS"):  # e.g. 1 on a machine whose other core is busy
    torch.set_num_threads(int(os.environ["MZSR_BENCH_THREADS"]))


# ---------------------------------------------------------------------------
# Timing and peak memory
# ---------------------------------------------------------------------------

def _rss() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


class PeakMemory:
    """Peak memory of a block above its start: CUDA allocator stats, or the
    process's resident set on CPU (Linux)."""

    def __enter__(self):
        if DEVICE == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            try:
                ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back, so reuse shows as growth
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # reset VmHWM to the current RSS
            except OSError:
                pass
            self.base = _rss()["VmRSS"]
        return self

    def __exit__(self, *exc):
        if DEVICE == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.peak = _rss()["VmHWM"] - self.base
        return False


def measure(fn, warmup: int = 1) -> tuple[float, int, object]:
    """(seconds, peak bytes, result) of one call after warmup calls."""
    for _ in range(warmup):
        fn()
    with PeakMemory() as memory:
        start = time.perf_counter()
        result = fn()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return seconds, memory.peak, result


# ---------------------------------------------------------------------------
# The problem and the three implementations
# ---------------------------------------------------------------------------

def make_problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    net = MZSRNet().to(DEVICE)
    images = [torch.rand(TASKS, PATCHES, 3, SIZE, SIZE, generator=gen).to(DEVICE) for _ in range(2)]
    support = (images[0], (images[0] + 0.05 * torch.randn(images[0].shape, generator=gen).to(DEVICE)).clamp(0, 1))
    query = (images[1], (images[1] + 0.05 * torch.randn(images[1].shape, generator=gen).to(DEVICE)).clamp(0, 1))
    weights = maml.msl_weights(1000, STEPS, device=DEVICE)  # non-uniform, as after 1000 meta-iterations
    return net, support, query, weights


def ours(problem, order: int, strategy: str | None = None):
    net, support, query, weights = problem
    params = dict(net.named_parameters())
    result = maml.inner_loop(params, support, query, STEPS, ALPHA, order=order, strategy=strategy)
    loss = maml.multi_step_loss(result.query_losses, weights)
    return torch.autograd.grad(loss, list(params.values()))


def per_task_loop(problem, order: int):
    net, (xs, ys), (xq, yq), weights = problem
    params = dict(net.named_parameters())
    total = [torch.zeros_like(p) for p in params.values()]
    for t in range(TASKS):
        fast, losses = dict(params), []
        for _ in range(STEPS):
            loss = F.l1_loss(functional_forward(fast, xs[t]), ys[t])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=order == 2)
            fast = {name: p - ALPHA * g for (name, p), g in zip(fast.items(), grads)}
            losses.append(F.l1_loss(functional_forward(fast, xq[t]), yq[t]))
        meta = (weights * torch.stack(losses)).sum() / TASKS
        for acc, g in zip(total, torch.autograd.grad(meta, list(params.values()))):
            acc += g
    return total


def torch_func(problem, order: int):
    net, (xs, ys), (xq, yq), weights = problem
    params = dict(net.named_parameters())

    def loss_fn(p, x, y):
        return F.l1_loss(functional_call(net, p, (x,)), y)

    def adapt(p, x_s, y_s, x_q, y_q):
        losses = []
        for _ in range(STEPS):
            grads = torch.func.grad(loss_fn)(p, x_s, y_s)
            if order == 1:
                grads = {name: g.detach() for name, g in grads.items()}
            p = {name: p[name] - ALPHA * grads[name] for name in p}
            losses.append(loss_fn(p, x_q, y_q))
        return torch.stack(losses)

    query_losses = torch.func.vmap(adapt, in_dims=(None, 0, 0, 0, 0))(params, xs, ys, xq, yq)  # [T, K]
    loss = (query_losses @ weights).mean()
    return torch.autograd.grad(loss, list(params.values()))


def _assert_same(a, b, what: str) -> None:
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=2e-3, atol=1e-5, msg=lambda m: f"{what}: {m}")


# ---------------------------------------------------------------------------
# pytest-benchmark
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    return make_problem()


IMPLEMENTATIONS = {"per_task_loop": per_task_loop, "torch_func": torch_func, "ours": ours}
_META_GRADIENT: dict[int, list[torch.Tensor]] = {}  # order -> the per-task loop's meta-gradient


def _meta_gradient(problem, order: int) -> list[torch.Tensor]:
    if order not in _META_GRADIENT:
        _META_GRADIENT[order] = per_task_loop(problem, order)
    return _META_GRADIENT[order]


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("order", [2, 1])
def test_meta_iteration(benchmark, problem, order, impl):
    peaks, results = [], []

    def run():
        with PeakMemory() as memory:
            results.append(IMPLEMENTATIONS[impl](problem, order))
        peaks.append(memory.peak)

    row(benchmark, f"meta-iteration order {order}", impl,
        against=("per_task_loop", "torch_func") if impl == "ours" else ())
    benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    if impl == "per_task_loop":
        _META_GRADIENT.setdefault(order, results[-1])
    _assert_same(results[-1], _meta_gradient(problem, order), f"{impl} vs per-task loop")
    peak = max(peaks[-ROUNDS:]) / 2 ** 20  # the timed rounds
    benchmark.extra_info.update({"device": DEVICE, "threads": torch.get_num_threads(), "order": order,
                                 "peak_mib": peak})
    print(f"\nmeta-iteration order {order}, {impl}: peak memory {peak:.0f} MiB "
          f"({TASKS} tasks x {STEPS} steps, {PATCHES}+{PATCHES} patches {SIZE}x{SIZE}, {DEVICE})")


@pytest.mark.parametrize("strategy", list(maml.STRATEGIES))
def test_stacked_forward_backward(benchmark, problem, strategy):
    """Forward + backward of the stacked net (T=5 x N=8, 64x64) per strategy."""
    net, (x, y), _, _ = problem
    stacked = {k: v.detach().unsqueeze(0).repeat(TASKS, *([1] * v.dim())).requires_grad_()
               for k, v in net.named_parameters()}

    def run():
        loss = (maml.stacked_forward(stacked, x, strategy) - y).abs().mean()
        return torch.autograd.grad(loss, list(stacked.values()))

    row(benchmark, "stacked forward+backward", strategy)
    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update({"strategy": strategy, "device": DEVICE})


# ---------------------------------------------------------------------------
# Strategy table (python benchmarks/bench_maml.py strategies)
# ---------------------------------------------------------------------------

def strategy_table(repeats: int = 3) -> None:
    """Per strategy: forward, forward+backward, one inner step + query loss +
    meta-backward of second and of first order; best of `repeats` rounds,
    the strategies interleaved within each round (fair under background load)."""
    net, support, query, weights = make_problem()
    params = dict(net.named_parameters())
    stacked = {k: v.detach().unsqueeze(0).repeat(TASKS, *([1] * v.dim())).requires_grad_() for k, v in params.items()}
    x, y = support

    def forward(name):
        with torch.no_grad():
            maml.stacked_forward(stacked, x, name)

    def forward_backward(name):
        loss = (maml.stacked_forward(stacked, x, name) - y).abs().mean()
        torch.autograd.grad(loss, list(stacked.values()))

    def one_step(name, order):
        r = maml.inner_loop(params, support, query, 1, ALPHA, order=order, strategy=name)
        torch.autograd.grad(r.query_losses.sum(), list(params.values()))

    kinds = {"forward": forward, "fwd+bwd": forward_backward, "2nd-order step": lambda n: one_step(n, 2),
             "1st-order step": lambda n: one_step(n, 1)}
    times = {(name, kind): [] for name in maml.STRATEGIES for kind in kinds}
    for name in maml.STRATEGIES:
        for fn in kinds.values():
            fn(name)  # warm-up
    for _ in range(repeats):
        for name in maml.STRATEGIES:
            for kind, fn in kinds.items():
                times[name, kind].append(measure(lambda: fn(name), warmup=0)[0])
    print(f"{DEVICE}, {torch.get_num_threads()} threads, T={TASKS} x N={PATCHES} images of {SIZE}x{SIZE}, "
          f"seconds, best of {repeats}")
    print(f"{'strategy':10s}" + "".join(f"{kind:>16s}" for kind in kinds))
    for name in maml.STRATEGIES:
        print(f"{name:10s}" + "".join(f"{min(times[name, kind]):16.2f}" for kind in kinds), flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["strategies"]:
        strategy_table()
    else:
        sys.exit(pytest.main([__file__, "--benchmark-only", "-s"]))
