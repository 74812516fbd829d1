"""MZSR(n) latency: the whole pipeline (degrade, resize, n adaptation steps,
final inference) against a plain eager PyTorch implementation of the same
steps and against the bare network passes, with the stages timed apart.

Rows of the group "MZSR(n) DEVICE 256x256 x2": ours in fp32, tf32 and bf16 (on CUDA,
also with the adaptation step captured as a CUDA graph: "ours_graph"; in fp32 also
with adapt's step search, "ours_search", against ours: its cost), the
plain way in fp32 ("plain fp32") and the bare network passes in each precision
("bare_network"); each of ours's speed-up over the plain way and over the bare
passes is printed after pytest-benchmark's table (timing.py). The degradation
and the resizes are rows of "adapt stages DEVICE".

One adaptation step of one image, group "single-image adaptation step DEVICE
256x256": ours (the step adapt runs, inside its reuse_freed_memory) against a
plain channels-last PyTorch step ("plain_cl": one weight set, F.conv2d,
autograd, p -= lr * g; bf16 under autocast), in fp32 and bf16 (ours also in tf32,
against the plain fp32 step).

Run: [MZSR_BENCH_THREADS=n] pytest benchmarks/bench_adapt.py --benchmark-only -s
(one thread and CPU time, as on a shared machine: MZSR_BENCH_THREADS=1 ...
--benchmark-timer=time.process_time)
"""
import contextlib
import copy
import os
from functools import cache

import pytest
import torch
import torch.nn.functional as F

import mzsr_fast
from mzsr_fast._heap import reuse_freed_memory
from mzsr_fast.adapt import _adapt_weights, learning_rates
from mzsr_fast.pretrained import CATALOGUE
from mzsr_fast.reference.blur_downsample import blur
from timing import row, sync

LR_SIZE = 256
SCALE = 2
STEP_RATE = 0.01

if os.environ.get("MZSR_BENCH_THREADS"):  # e.g. 1 on a machine whose other core is busy
    torch.set_num_threads(int(os.environ["MZSR_BENCH_THREADS"]))


def plain_mzsr(lr, kernel, steps, net):
    """What a user would write: nn.Module, grouped-conv blur, torch bicubic, torch.optim.SGD."""
    net = copy.deepcopy(net)
    son = blur(lr, kernel, SCALE).clamp(0, 1)
    x = F.interpolate(son, size=lr.shape[-2:], mode="bicubic", align_corners=False)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    for rate in learning_rates(CATALOGUE["direct_x2"].schedule, steps):
        optimizer.param_groups[0]["lr"] = rate
        loss = F.l1_loss(net(x), lr)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return net(F.interpolate(lr, scale_factor=SCALE, mode="bicubic", align_corners=False)).clamp(0, 1)


def bare_network_passes(lr, steps, net, precision):
    """Only the network: steps forward+backward at LR size and one forward at SR size."""
    x = lr.contiguous(memory_format=torch.channels_last)
    params = [p.detach().requires_grad_() for p in net.parameters()]
    named = dict(zip(dict(net.named_parameters()), params))
    autocast = torch.autocast(lr.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    for _ in range(steps):
        with autocast:
            loss = F.l1_loss(mzsr_fast.functional_forward(named, x).float(), lr)
        torch.autograd.grad(loss, params)
    big = torch.rand(1, 3, SCALE * LR_SIZE, SCALE * LR_SIZE, device=lr.device).contiguous(
        memory_format=torch.channels_last)
    with torch.no_grad(), autocast:
        mzsr_fast.functional_forward(named, big)


def plain_step(params, x, target, precision):
    """One plain adaptation step: params {name: tensor} (requiring grad),
    functional_forward (F.conv2d, F.relu) on x [1, 3, H, W] channels-last,
    autograd, p -= lr * g."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = mzsr_fast.functional_forward(params, x)
    grads = torch.autograd.grad(F.l1_loss(out.float(), target), list(params.values()))
    with torch.no_grad():
        for p, g in zip(params.values(), grads):
            p -= STEP_RATE * g


@cache
def _problem(device: str):
    """(net, lr [1, 3, 256, 256], g_d_2.0 kernel) on device."""
    torch.manual_seed(0)
    net = mzsr_fast.MZSRNet().to(device)
    lr = torch.rand(1, 3, LR_SIZE, LR_SIZE, device=device)
    return net, lr, mzsr_fast.preset("g_d_2.0").kernel.float().to(device)


def _needs(device: str):
    return [pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")] if device == "cuda" else []


def _rows():
    """(device, implementation, precision): ours_graph on CUDA only, plain and
    ours_search in fp32 only, tf32 (the fast float32 mode) for ours only."""
    rows = []
    for device in ("cpu", "cuda"):
        for impl in ("ours", "ours_graph", "ours_search", "plain", "bare_network"):
            for precision in ("fp32",) if impl in ("plain", "ours_search") else ("fp32", "tf32", "bf16") \
                    if impl == "ours" else ("fp32", "bf16"):
                if impl != "ours_graph" or device == "cuda":
                    rows.append(pytest.param(device, impl, precision, marks=_needs(device),
                                             id=f"{device}-{impl}-{precision}"))
    return rows


@pytest.mark.parametrize("steps", [1, 10])
@pytest.mark.parametrize("device,impl,precision", _rows())
def test_adapt_latency(benchmark, device, impl, precision, steps):
    net, lr, kernel = _problem(device)
    if impl == "plain":
        fn = lambda: plain_mzsr(lr, kernel, steps, net)  # noqa: E731
    elif impl == "bare_network":
        fn = lambda: bare_network_passes(lr, steps, net, precision)  # noqa: E731
    else:
        fn = lambda: mzsr_fast.adapt(lr, kernel, SCALE, steps=steps, model=net, precision=precision,  # noqa: E731
                                     cuda_graph=impl == "ours_graph", adapt_pixels=0,  # the whole image, as plain
                                     step_search=impl == "ours_search")
    bare = "bf16" if precision == "bf16" else "fp32"
    against = ("plain fp32", f"bare_network {bare}") if impl.startswith("ours") else ()
    against += ("ours fp32",) if impl == "ours_search" else ()
    row(benchmark, f"MZSR({steps}) {device} {LR_SIZE}x{LR_SIZE} x{SCALE}", f"{impl} {precision}", against)
    benchmark.extra_info.update({"device": device, "steps": steps, "precision": precision})
    benchmark.pedantic(lambda: (fn(), sync(device)), rounds=2, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("stage", ["degrade", "resize"])
@pytest.mark.parametrize("device", [pytest.param(d, marks=_needs(d)) for d in ("cpu", "cuda")])
def test_adapt_stage(benchmark, device, stage):
    """The pipeline's parts besides the network: the son's degradation, and the
    two resizes (the son up to the LR's size, the LR up to the SR's)."""
    _, lr, kernel = _problem(device)
    if stage == "degrade":
        fn = lambda: mzsr_fast.degrade(lr, kernel, SCALE)  # noqa: E731
    else:
        fn = lambda: (mzsr_fast.imresize(lr[..., ::2, ::2], scale=2, size=lr.shape[-2:]),  # noqa: E731
                      mzsr_fast.imresize(lr, scale=2))
    row(benchmark, f"adapt stages {device}", stage)
    benchmark.pedantic(lambda: (fn(), sync(device)), rounds=5, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("device,impl,precision", [
    pytest.param(device, impl, precision, marks=_needs(device), id=f"{device}-{impl}-{precision}")
    for device in ("cpu", "cuda") for impl in ("ours", "plain_cl")
    for precision in (("fp32", "tf32", "bf16") if impl == "ours" else ("fp32", "bf16"))])
def test_adaptation_step(benchmark, device, impl, precision):
    """One step of one image's adaptation on LR_SIZE x LR_SIZE pixels: ours
    (adapt's _adapt_weights for one step, in adapt's reuse_freed_memory)
    against the plain channels-last step."""
    net, lr, _ = _problem(device)
    x = torch.rand_like(lr).contiguous(memory_format=torch.channels_last)
    if impl == "plain_cl":
        params = {n: p.detach().clone().requires_grad_() for n, p in net.named_parameters()}
        fn = lambda: plain_step(params, x, lr, precision)  # noqa: E731
        memory = contextlib.nullcontext()
    else:
        params = {n: p.detach() for n, p in net.named_parameters()}
        inputs = lambda i: (x[:, None], lr[:, None], None)  # noqa: E731
        fn = lambda: _adapt_weights(params, 1, inputs, [STEP_RATE], precision)  # noqa: E731
        memory = reuse_freed_memory()
    against = (f"plain_cl {'bf16' if precision == 'bf16' else 'fp32'}",) if impl == "ours" else ()
    row(benchmark, f"single-image adaptation step {device} {LR_SIZE}x{LR_SIZE}", f"{impl} {precision}", against)
    benchmark.extra_info.update({"device": device, "precision": precision})
    with memory:
        benchmark.pedantic(lambda: (fn(), sync(device)), rounds=5, iterations=1, warmup_rounds=1)
