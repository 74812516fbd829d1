"""MZSR(n) latency: the whole pipeline (degrade, resize, n adaptation steps,
final inference) against a plain eager PyTorch implementation of the same
steps, in the same run, with a per-stage breakdown.

On CUDA (when present) also with the adaptation step captured as a CUDA graph.

Run: pytest benchmarks/bench_adapt.py --benchmark-only -s
"""
import copy

import pytest
import torch
import torch.nn.functional as F

import mzsr_fast
from mzsr_fast.adapt import learning_rates
from mzsr_fast.pretrained import CATALOGUE
from mzsr_fast.reference.blur_downsample import blur
from timing import timed

LR_SIZE = 256
SCALE = 2


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


def _time(fn, device, repeats=2):
    fn()
    return min(timed(fn, device) for _ in range(repeats))


VARIANTS = [("cpu", False), ("cuda", False), ("cuda", True)]


@pytest.fixture(scope="module", params=VARIANTS, ids=["cpu", "cuda", "cuda-graph"])
def setup(request):
    device, cuda_graph = request.param
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    torch.manual_seed(0)
    net = mzsr_fast.MZSRNet().to(device)
    lr = torch.rand(1, 3, LR_SIZE, LR_SIZE, device=device)
    return net, lr, mzsr_fast.preset("g_d_2.0").kernel.float().to(device), cuda_graph


@pytest.mark.parametrize("steps", [1, 10])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_adapt_latency(benchmark, setup, steps, precision):
    net, lr, kernel, cuda_graph = setup
    device = lr.device.type
    plain = _time(lambda: plain_mzsr(lr, kernel, steps, net), device)
    bare = _time(lambda: bare_network_passes(lr, steps, net, precision), device)
    stages = {
        "degrade": _time(lambda: mzsr_fast.degrade(lr, kernel, SCALE), device, 5),
        "resize (son up + lr up)": _time(lambda: (mzsr_fast.imresize(lr[..., ::2, ::2], scale=2, size=lr.shape[-2:]),
                                                  mzsr_fast.imresize(lr, scale=2)), device, 5),
    }

    def run():
        mzsr_fast.adapt(lr, kernel, SCALE, steps=steps, model=net, precision=precision, cuda_graph=cuda_graph)
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=2, iterations=1, warmup_rounds=1)
    ours = benchmark.stats.stats.min
    benchmark.extra_info.update({
        "plain_fp32_s": plain, "bare_network_s": bare, "speedup_vs_plain_fp32": plain / ours,
        "overhead_vs_bare_network": ours / bare, **{f"stage_{k}_s": v for k, v in stages.items()}})
    label = f"{device}{' graph' if cuda_graph else ''}"
    print(f"\nMZSR({steps}) {precision} {label} {LR_SIZE}x{LR_SIZE} x{SCALE}: ours {ours:.4f} s, "
          f"plain fp32 {plain:.4f} s (speedup {plain / ours:.2f}x), bare network passes {bare:.4f} s "
          f"(ours / bare {ours / bare:.3f}); " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in stages.items()))
