"""blur_downsample: every available backend against the plain way a user would
write it (symmetric padding + grouped conv2d, mzsr_fast.reference.blur_downsample.blur:
the "grouped_conv" row), forward and forward+backward; plus the task-data step
of meta-training.

Cases (per-image kernels, float32):
  40 x 3 x 64 x 64,      k 15, stride 2   (a meta-batch of patches)
  8 x 3 x 256 x 256,     k 15, stride 2
  1 x 3 x 1024 x 1024,   k 21, stride 2 and 4   (one large image)

Each backend and the grouped conv are rows of the group "blur_downsample
DIRECTION CASE"; each backend's speed-up over the grouped conv is printed
after pytest-benchmark's table (timing.py). Each backend is first checked to
give the grouped conv's numbers. On CPU, torch uses MZSR_BENCH_THREADS threads
(default 2). Wall-clock rows of a shared machine swing with whatever else runs;
`MZSR_BENCH_THREADS=1 ... --benchmark-timer=time.process_time` times the
process's CPU time on one thread instead, which other processes barely disturb.

Task-data step: 5 tasks x 16 patches of 64 x 64, one Gaussian kernel per
task (docs/method.md section 7), blur + direct subsampling x2 + mzsr_fast.imresize back
to 64 x 64; target < 8 ms on the 2-core CPU (the reference's numpy/scipy
pipeline: 0.23 s). Rows of the group "task-data step": each backend with a
kernel tensor and with the fused Gaussian, and the grouped conv; the blur
alone and imresize alone are rows of "task-data step, stages".

Run: pytest benchmarks/bench_blur_downsample.py --benchmark-only -s
"""
from __future__ import annotations

import os

import pytest
from timing import row
import torch

from mzsr_fast import dispatch
from mzsr_fast.gaussian import gaussian_kernel, sample_kernel_params
from mzsr_fast.ops.blur_downsample import anisotropic_blur_downsample, blur_downsample
from mzsr_fast.reference.blur_downsample import blur as grouped_conv_blur
from mzsr_fast.resize import imresize

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    torch.set_num_threads(int(os.environ.get("MZSR_BENCH_THREADS", "2")))
GROUPED_CONV = "grouped_conv"  # the plain way

CASES = {
    "40x3x64x64_k15_s2": (40, 3, 64, 64, 15, 2),
    "8x3x256x256_k15_s2": (8, 3, 256, 256, 15, 2),
    "1x3x1024x1024_k21_s2": (1, 3, 1024, 1024, 21, 2),
    "1x3x1024x1024_k21_s4": (1, 3, 1024, 1024, 21, 4),
}


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
@pytest.mark.parametrize("impl", [*_backends(), GROUPED_CONV])
def test_blur_downsample(benchmark, impl, case_name, direction):
    case = CASES[case_name]
    x, kernel, s = _inputs(case)
    make = _forward_fn if direction == "forward" else _forward_backward_fn
    reference = make(grouped_conv_blur, x, kernel, s)
    group = f"blur_downsample {direction} {case_name}"
    if impl == GROUPED_CONV:
        fn = reference
        row(benchmark, group, impl)
    else:
        fn = make(lambda x, kernel, s: blur_downsample(x, kernel, s, backend=impl), x, kernel, s)
        row(benchmark, group, impl, against=(GROUPED_CONV,))
        # Same numbers as the reference first (float32; the kernel gradient sums
        # up to C * H' * W' products, hence a tolerance relative to its size).
        got, want = fn(), reference()
        for g, r in zip((got,) if direction == "forward" else got, (want,) if direction == "forward" else want):
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4 * float(r.abs().max()))
    benchmark.extra_info.update({"device": DEVICE, "threads": torch.get_num_threads(), "case": case_name,
                                 "direction": direction})
    benchmark.pedantic(fn, rounds=_repeats(case), warmup_rounds=1)


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


def _task_data_rows():
    rows = [pytest.param(backend, fused, id=f"{backend}-{'fused_gaussian' if fused else 'kernel_tensor'}")
            for backend in _backends() for fused in (False, True)]
    return rows + [pytest.param(GROUPED_CONV, False, id=GROUPED_CONV)]


@pytest.mark.parametrize("impl,fused", _task_data_rows())
def test_task_data_step(benchmark, patches, impl, fused):
    if impl == GROUPED_CONV:
        fn = lambda: _reference_task_data_step(patches)  # noqa: E731
        row(benchmark, "task-data step", impl)
    else:
        fn = lambda: _task_data_step(patches, impl, fused)  # noqa: E731
        row(benchmark, "task-data step", f"{impl} {'fused Gaussian' if fused else 'kernel tensor'}",
            against=(GROUPED_CONV,))
    assert fn().shape == (TASKS * PATCHES, 3, PATCH, PATCH)
    benchmark.extra_info.update({"device": DEVICE, "threads": torch.get_num_threads(), "target_ms": 8.0,
                                 "reference_numpy_ms": 230.0})
    benchmark.pedantic(fn, rounds=15, warmup_rounds=1)


@pytest.mark.parametrize("stage", [*(f"blur-{backend}" for backend in _backends()), "imresize"])
def test_task_data_stage(benchmark, patches, stage):
    """Where the task-data step's time goes: the blur alone (per backend) and imresize alone."""
    if stage == "imresize":
        lr = torch.rand(TASKS * PATCHES, 3, PATCH // SCALE, PATCH // SCALE, device=DEVICE)
        fn = lambda: imresize(lr, scale=SCALE, size=(PATCH, PATCH))  # noqa: E731
    else:
        kernels = torch.rand(TASKS * PATCHES, KERNEL, KERNEL, device=DEVICE)
        fn = lambda: blur_downsample(patches, kernels, SCALE, backend=stage.split("-", 1)[1])  # noqa: E731
    row(benchmark, "task-data step, stages", stage)
    benchmark.extra_info.update({"device": DEVICE, "threads": torch.get_num_threads()})
    benchmark.pedantic(fn, rounds=15, warmup_rounds=1)
