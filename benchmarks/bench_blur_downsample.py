"""blur_downsample: every available backend against the plain way a user would
write it (symmetric padding + grouped conv2d, mzsr_fast.reference.blur_downsample.blur),
forward and forward+backward, with the ratio measured in the same run; plus
the task-data step of meta-training.

Cases (per-image kernels, float32):
  40 x 3 x 64 x 64,      k 15, stride 2   (a meta-batch of patches)
  8 x 3 x 256 x 256,     k 15, stride 2
  1 x 3 x 1024 x 1024,   k 21, stride 2 and 4   (one large image)

Each test first times the backend and the reference alternately (so machine
load hits both alike), records benchmark.extra_info["speedup_vs_grouped_conv"]
(median reference time / median backend time) and prints it, then lets
pytest-benchmark time the backend. On CPU, torch uses 2 threads; the ratio of
process CPU times on 1 thread is recorded too
("speedup_vs_grouped_conv_1thread_cpu_time"), as wall-clock ratios on a
shared 2-core machine swing with whatever else runs.

Task-data step: 5 tasks x 16 patches of 64 x 64, one Gaussian kernel per
task (docs/method.md section 7), blur + direct subsampling x2 + mzsr_fast.imresize back
to 64 x 64; target < 8 ms on the 2-core CPU (the reference's numpy/scipy
pipeline: 0.23 s). The stages are timed separately as well.

Run: pytest benchmarks/bench_blur_downsample.py --benchmark-only -s
"""
from __future__ import annotations

import os
import statistics
import time

import pytest
from timing import timed
import torch

from mzsr_fast import dispatch
from mzsr_fast.gaussian import gaussian_kernel, sample_kernel_params
from mzsr_fast.ops.blur_downsample import anisotropic_blur_downsample, blur_downsample
from mzsr_fast.reference.blur_downsample import blur as grouped_conv_blur
from mzsr_fast.resize import imresize

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    torch.set_num_threads(2)

CASES = {
    "40x3x64x64_k15_s2": (40, 3, 64, 64, 15, 2),
    "8x3x256x256_k15_s2": (8, 3, 256, 256, 15, 2),
    "1x3x1024x1024_k21_s2": (1, 3, 1024, 1024, 21, 2),
    "1x3x1024x1024_k21_s4": (1, 3, 1024, 1024, 21, 4),
}




def _paired_medians(fn_a, fn_b, repeats: int):
    """Median seconds of fn_a and fn_b, run alternately after a warm-up."""
    for _ in range(2):
        fn_a()
        fn_b()
    a, b = [], []
    for _ in range(repeats):
        a.append(timed(fn_a, DEVICE))
        b.append(timed(fn_b, DEVICE))
    return statistics.median(a), statistics.median(b)


def _single_thread_cpu_ratio(reference, fn, repeats: int) -> float:
    """Median process CPU time of reference / fn with torch on 1 thread: a
    ratio that other processes on the machine barely disturb (CPU only)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fn(), reference()
        a, b = [], []
        for _ in range(repeats):
            start = time.process_time()
            reference()
            a.append(time.process_time() - start)
            start = time.process_time()
            fn()
            b.append(time.process_time() - start)
        return statistics.median(a) / statistics.median(b)
    finally:
        torch.set_num_threads(threads)


def _backends():
    out = []
    for name in dispatch.BACKENDS:
        device_type = "cuda" if name == "cuda" else DEVICE
        if device_type != DEVICE or dispatch.unavailable_reason(name, "blur_downsample", DEVICE) is not None:
            continue
        if name == "triton" and os.environ.get("TRITON_INTERPRET") == "1":
            continue  # the interpreter is a correctness tool, minutes per case here
        out.append(name)
    return out


def _inputs(case):
    b, c, h, w, k, s = case
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(b, c, h, w, generator=gen).to(DEVICE)
    kernel = torch.rand(b, k, k, generator=gen).to(DEVICE)
    kernel = kernel / kernel.sum(dim=(-2, -1), keepdim=True)
    return x, kernel, s


def _forward_fn(blur, x, kernel, s):
    def run():
        with torch.no_grad():
            return blur(x, kernel, s)
    return run


def _forward_backward_fn(blur, x, kernel, s):
    x = x.detach().requires_grad_(True)
    kernel = kernel.detach().requires_grad_(True)
    b, c, h, w = x.shape
    gen = torch.Generator().manual_seed(1)
    grad = torch.rand(b, c, (h + s - 1) // s, (w + s - 1) // s, generator=gen).to(DEVICE)

    def run():
        out = blur(x, kernel, s)
        return torch.autograd.grad(out, (x, kernel), grad)
    return run


def _repeats(case) -> int:
    b, c, h, w, k, s = case
    work = b * c * h * w * k * k / (s * s)
    return max(5, min(40, int(4e9 / max(work, 1.0))))


@pytest.mark.parametrize("case_name", list(CASES))
@pytest.mark.parametrize("direction", ["forward", "forward+backward"])
@pytest.mark.parametrize("backend", _backends())
def test_blur_downsample(benchmark, backend, case_name, direction):
    case = CASES[case_name]
    x, kernel, s = _inputs(case)

    def ours(x, kernel, s):
        return blur_downsample(x, kernel, s, backend=backend)

    make = _forward_fn if direction == "forward" else _forward_backward_fn
    fn, reference = make(ours, x, kernel, s), make(grouped_conv_blur, x, kernel, s)
    # Same numbers as the reference first (float32; the kernel gradient sums
    # up to C * H' * W' products, hence a tolerance relative to its size).
    got, want = fn(), reference()
    for g, r in zip((got,) if direction == "forward" else got, (want,) if direction == "forward" else want):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4 * float(r.abs().max()))
    repeats = _repeats(case)
    ref_s, ours_s = _paired_medians(reference, fn, repeats)
    speedup = ref_s / ours_s
    benchmark.extra_info.update({
        "device": DEVICE, "threads": torch.get_num_threads(), "backend": backend, "case": case_name,
        "direction": direction, "grouped_conv_ms": round(ref_s * 1e3, 3), "backend_ms": round(ours_s * 1e3, 3),
        "speedup_vs_grouped_conv": round(speedup, 2)})
    single = ""
    if DEVICE == "cpu" and backend != "torch":  # torch is the reference itself
        ratio = _single_thread_cpu_ratio(reference, fn, max(3, repeats // 4))
        benchmark.extra_info["speedup_vs_grouped_conv_1thread_cpu_time"] = round(ratio, 2)
        single = f" (1 thread, CPU time: {ratio:.2f}x)"
    print(f"\n[{backend}] {case_name} {direction}: {ours_s * 1e3:.2f} ms vs grouped conv {ref_s * 1e3:.2f} ms "
          f"-> {speedup:.2f}x{single}")
    benchmark.pedantic(fn, rounds=repeats, warmup_rounds=1)


# --- task-data step of meta-training ---------------------------------------------------

TASKS, PATCHES, PATCH, SCALE, KERNEL = 5, 16, 64, 2, 15


@pytest.fixture(scope="module")
def patches():
    gen = torch.Generator().manual_seed(1)
    return torch.rand(TASKS * PATCHES, 3, PATCH, PATCH, generator=gen).to(DEVICE)


def _task_data_step(hr, backend, fused: bool):
    """One meta-iteration's inputs: per-task kernel, blur + subsample x2, bicubic up."""
    theta, lambda1, lambda2 = sample_kernel_params(TASKS, float(SCALE), device=DEVICE)
    if fused:
        per_image = [p.repeat_interleave(PATCHES) for p in (theta, lambda1, lambda2)]
        lr = anisotropic_blur_downsample(hr, *per_image, KERNEL, SCALE, backend=backend)
    else:
        kernels = gaussian_kernel(theta, lambda1, lambda2, KERNEL).to(hr.dtype)
        lr = blur_downsample(hr, kernels.repeat_interleave(PATCHES, 0), SCALE, backend=backend)
    return imresize(lr.clamp(0, 1), scale=SCALE, size=(PATCH, PATCH))


def _reference_task_data_step(hr):
    theta, lambda1, lambda2 = sample_kernel_params(TASKS, float(SCALE), device=DEVICE)
    kernels = gaussian_kernel(theta, lambda1, lambda2, KERNEL).to(hr.dtype)
    lr = grouped_conv_blur(hr, kernels.repeat_interleave(PATCHES, 0), SCALE)
    return imresize(lr.clamp(0, 1), scale=SCALE, size=(PATCH, PATCH))


@pytest.mark.parametrize("fused", [False, True], ids=["kernel_tensor", "fused_gaussian"])
@pytest.mark.parametrize("backend", _backends())
def test_task_data_step(benchmark, patches, backend, fused):
    fn = lambda: _task_data_step(patches, backend, fused)  # noqa: E731
    reference = lambda: _reference_task_data_step(patches)  # noqa: E731
    assert fn().shape == (TASKS * PATCHES, 3, PATCH, PATCH)
    ref_s, ours_s = _paired_medians(reference, fn, 15)
    # Where the time goes: the blur alone and imresize alone.
    lr = torch.rand(TASKS * PATCHES, 3, PATCH // SCALE, PATCH // SCALE, device=DEVICE)
    kernels = torch.rand(TASKS * PATCHES, KERNEL, KERNEL, device=DEVICE)
    blur_s, resize_s = _paired_medians(lambda: blur_downsample(patches, kernels, SCALE, backend=backend),
                                       lambda: imresize(lr, scale=SCALE, size=(PATCH, PATCH)), 15)
    benchmark.extra_info.update({
        "device": DEVICE, "threads": torch.get_num_threads(), "backend": backend, "fused_gaussian": fused,
        "step_ms": round(ours_s * 1e3, 3), "grouped_conv_step_ms": round(ref_s * 1e3, 3),
        "speedup_vs_grouped_conv": round(ref_s / ours_s, 2), "blur_only_ms": round(blur_s * 1e3, 3),
        "imresize_only_ms": round(resize_s * 1e3, 3), "target_ms": 8.0, "reference_numpy_ms": 230.0})
    print(f"\n[{backend}] task-data step ({'fused Gaussian' if fused else 'kernel tensor'}): {ours_s * 1e3:.2f} ms "
          f"(grouped conv {ref_s * 1e3:.2f} ms; blur alone {blur_s * 1e3:.2f} ms, imresize alone "
          f"{resize_s * 1e3:.2f} ms; target 8 ms, reference numpy 230 ms)")
    benchmark.pedantic(fn, rounds=15, warmup_rounds=1)
