"""blur_downsample and anisotropic_blur_downsample: every backend against the
plain-PyTorch reference (mzsr_fast.reference.blur_downsample, grouped conv2d).

Backends that cannot run here are skipped with the reason from
mzsr_fast.dispatch.unavailable_reason. Comparisons run in float64 (exact to
rounding), plus float32 with a tolerance derived from the arithmetic. The raw
C++/CUDA ops (mzsr_fast::blur_downsample, ...) also get opcheck and a
torch.compile(fullgraph=True) check. Every backend is differentiable to any
order (gradgradcheck). Triton runs under the interpreter on CPU
(tests/conftest.py), so its cases are few and small.
"""
from __future__ import annotations

import math
import random

import pytest
import torch

import mzsr_fast
from mzsr_fast.gaussian import gaussian_kernel
from mzsr_fast.ops.blur_downsample import anisotropic_blur_downsample, blur_downsample
from mzsr_fast.reference.blur_downsample import blur_downsample as reference_blur_downsample
from op_backends import backend_params, device_of

NATIVE = ("cpu", "cuda")
EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture(params=backend_params("blur_downsample"))
def backend(request):
    return request.param


@pytest.fixture(params=backend_params("blur_downsample", NATIVE))
def native(request):
    return request.param


def _cases(n: int, seed: int, max_hw: int, sizes=(1, 3, 13, 15, 21), max_batch: int = 8):
    """Random (B, C, H, W, k, scale, mode, shared): H, W in 1..max_hw and not
    multiples of the scale (for scale > 1)."""
    rng = random.Random(seed)
    out = []
    for index in range(n):
        scale = 1 + index % 4
        k = sizes[index % len(sizes)]

        def side():
            while True:
                v = rng.randint(1, max_hw)
                if scale == 1 or v % scale:
                    return v
        out.append((rng.randint(1, max_batch), rng.randint(1, 3), side(), side(), k, scale,
                    ("direct", "bicubic")[(index // 4) % 2], rng.random() < 0.4))
    return out


def _random(shape, dtype=torch.float64, device="cpu", low=0.1):
    """Uniform in [low, 1 + low): never zero, so no term hides."""
    return torch.rand(shape, dtype=dtype, device=device) + low


def _kernel_for_reference(kernel3):
    return kernel3[0] if kernel3.shape[0] == 1 else kernel3


def _check_against_reference(backend, b, c, h, w, k, scale, mode, shared, dtype=torch.float64, atol=1e-11):
    device = device_of(backend)
    x = _random((b, c, h, w), dtype, device).requires_grad_(True)
    kernel = _random((1 if shared else b, k, k), dtype, device)
    kernel = (kernel / kernel.sum(dim=(-2, -1), keepdim=True)).detach().requires_grad_(True)
    # the public function takes a shared kernel as [k, k]
    out = blur_downsample(x, _kernel_for_reference(kernel), scale, mode=mode, backend=backend)
    ref = reference_blur_downsample(x, _kernel_for_reference(kernel), scale, mode=mode)
    assert out.shape == ref.shape == (b, c, math.ceil(h / scale), math.ceil(w / scale))
    assert out.dtype == dtype
    torch.testing.assert_close(out, ref, atol=atol, rtol=0)
    grad = _random(ref.shape, dtype, device)
    gx, gk = torch.autograd.grad(out, (x, kernel), grad)
    rx, rk = torch.autograd.grad(ref, (x, kernel), grad)
    torch.testing.assert_close(gx, rx, atol=atol, rtol=0)
    # The kernel gradient sums C * H' * W' products per image.
    torch.testing.assert_close(gk, rk, atol=atol * max(1.0, c * ref.shape[-2] * ref.shape[-1] / 64), rtol=0)


@pytest.mark.parametrize("case", _cases(40, seed=1, max_hw=70), ids=lambda c: "B{}C{}_{}x{}_k{}_s{}_{}_{}".format(
    *c[:7], "shared" if c[7] else "per_image"))
def test_matches_reference(backend, case, request):
    if backend == "triton":
        pytest.skip("triton: the small cases of test_matches_reference_small")
    if backend == "torch" and request.node.callspec.indices["case"] % 4:
        pytest.skip("torch is the reference itself: a quarter of the cases suffice")
    _check_against_reference(backend, *case)


@pytest.mark.parametrize("case", _cases(4, seed=2, max_hw=24, sizes=(1, 3, 5, 7), max_batch=3),
                         ids=lambda c: "B{}C{}_{}x{}_k{}_s{}_{}_{}".format(
                             *c[:7], "shared" if c[7] else "per_image"))
def test_matches_reference_small(backend, case):
    _check_against_reference(backend, *case)


def test_image_smaller_than_kernel(backend):
    # The symmetric border keeps mirroring: a 2 x 3 image under a 21 x 21 kernel.
    _check_against_reference(backend, 2, 1, 2, 3, 21 if backend != "triton" else 7, 2, "direct", False)
    _check_against_reference(backend, 1, 1, 1, 1, 3, 1, "direct", True)


@pytest.mark.parametrize("b, c, h, w, k, scale", [
    (1, 2, 57, 80, 21, 100),  # a 1 x 1 output at stride 100: a 1 x 1 CUDA tile of 7 KB (was refused)
    (1, 1, 37, 45, 41, 4),    # float64 k 41: 8 x 16 tiles of 70 KB (forward), 57 KB (kernel grad): opt-in
    (2, 1, 40, 44, 31, 8),    # float64 k 31, stride 8, per-image kernels: 8 x 8 tiles of 69 KB: opt-in
], ids=["1x1_output_stride100", "smem_opt_in_k41", "smem_opt_in_k31_s8"])
def test_large_kernels_and_strides(backend, b, c, h, w, k, scale):
    """Shapes the CUDA tile planner (blur_math::plan_tile, csrc/tests/test_math.cpp)
    treats specially, forward and both gradients against the reference; on a
    GPU they reach the clamped tiles and the opt-in path of the real kernels."""
    if backend == "triton" and device_of(backend) == "cpu" and k > 21:
        pytest.skip("triton on the CPU interpreter: the k 41 and k 31 cases take minutes")
    _check_against_reference(backend, b, c, h, w, k, scale, "direct", b == 1, atol=1e-10)


@pytest.mark.parametrize("k, scale", [(15, 2), (21, 4), (3, 1)])
def test_float32_tolerance(backend, k, scale):
    # Each output sums k * k products of terms below max|x| * max|kernel|; the
    # rounding error stays within a few k * k * eps32 of max|x| * sum|kernel|.
    if backend == "triton":
        k = min(k, 5)
    device = device_of(backend)
    x = _random((2, 3, 37, 29), torch.float64, device)
    kernel = _random((2, k, k), torch.float64, device)
    kernel = kernel / kernel.sum(dim=(-2, -1), keepdim=True)
    ref = reference_blur_downsample(x, kernel, scale)
    out = blur_downsample(x.float(), kernel.float(), scale, backend=backend)
    assert out.dtype == torch.float32
    scale_of_terms = x.abs().max() * kernel.abs().sum(dim=(-2, -1)).max()
    atol = float(4 * k * k * EPS32 * scale_of_terms)
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=0)


def test_noncontiguous_and_channels_last(backend):
    device = device_of(backend)
    base = _random((2, 2, 13, 16), torch.float64, device)
    kernel = _random((2, 5, 5), torch.float64, device)
    for x in (base.to(memory_format=torch.channels_last), base[:, :, :, ::2], base.transpose(-1, -2)):
        assert not x.is_contiguous()
        leaf = x.detach().requires_grad_(True)
        out = blur_downsample(leaf, kernel, 2, backend=backend)
        ref = reference_blur_downsample(x.contiguous(), kernel, 2)
        torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
        grad = _random(out.shape, torch.float64, device)
        (gx,) = torch.autograd.grad(out, leaf, grad)
        leaf_ref = x.detach().contiguous().requires_grad_(True)
        (rx,) = torch.autograd.grad(reference_blur_downsample(leaf_ref, kernel, 2), leaf_ref, grad)
        torch.testing.assert_close(gx, rx, atol=1e-12, rtol=0)
    # A non-contiguous kernel too.
    kernel_t = kernel.transpose(-1, -2)
    torch.testing.assert_close(blur_downsample(base, kernel_t, 3, backend=backend),
                               reference_blur_downsample(base, kernel_t.contiguous(), 3), atol=1e-12, rtol=0)


def test_gradcheck(backend):
    device = device_of(backend)
    x = _random((2, 1, 7, 6), torch.float64, device).requires_grad_(True)
    for kernel, scale in ((_random((2, 3, 3), torch.float64, device), 2),
                          (_random((5, 5), torch.float64, device), 3)):
        kernel.requires_grad_(True)
        # fast_mode (one random projection instead of one column per element)
        # where each call is slow: the Triton interpreter, the reference.
        assert torch.autograd.gradcheck(lambda x, k: blur_downsample(x, k, scale, backend=backend), (x, kernel),
                                        fast_mode=backend in ("triton", "torch"))


def test_gradgradcheck(backend):
    """The one double-backward policy of every backend: derivatives of every
    order, exact (mzsr_fast.ops.blur_downsample: the backward op's own
    backward is the forward and backward ops again)."""
    device = device_of(backend)
    x = _random((2, 1, 5, 4), torch.float64, device).requires_grad_(True)
    cases = ((_random((2, 3, 3), torch.float64, device), 2), (_random((3, 3), torch.float64, device), 1))
    for kernel, scale in cases[:1] if backend == "triton" else cases:  # interpreter: 10 s and more a case
        kernel.requires_grad_(True)
        assert torch.autograd.gradgradcheck(lambda x, k: blur_downsample(x, k, scale, backend=backend), (x, kernel),
                                            fast_mode=backend in ("triton", "torch"))


# --- anisotropic_blur_downsample ---------------------------------------------------

def _gaussian_params(n, device, dtype=torch.float64):
    theta = (math.pi * torch.rand(n, dtype=dtype, device=device)).requires_grad_(True)
    lambda1 = (1 + 3 * torch.rand(n, dtype=dtype, device=device)).requires_grad_(True)
    lambda2 = (0.3 + torch.rand(n, dtype=dtype, device=device)).requires_grad_(True)
    return theta, lambda1, lambda2


@pytest.mark.parametrize("b, h, w, size, scale, mode, shared", [
    (3, 23, 17, 13, 2, "direct", False),
    (2, 9, 14, 21, 4, "direct", True),
    (1, 11, 10, 15, 3, "bicubic", False),
    (4, 6, 5, 3, 1, "direct", False),
])
def test_anisotropic_matches_reference(backend, b, h, w, size, scale, mode, shared):
    if backend == "triton":
        size = min(size, 5)
    device = device_of(backend)
    x = _random((b, 2, h, w), torch.float64, device).requires_grad_(True)
    params = _gaussian_params(1 if shared else b, device)
    out = anisotropic_blur_downsample(x, *params, size, scale, mode=mode, backend=backend)
    kernel = gaussian_kernel(*params, size=size)
    ref = reference_blur_downsample(x, kernel[0] if shared else kernel, scale, mode=mode)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    grad = _random(ref.shape, torch.float64, device)
    got = torch.autograd.grad(out, (x, *params), grad)
    want = torch.autograd.grad(ref, (x, *params), grad)
    for name, g, r in zip(("x", "theta", "lambda1", "lambda2"), got, want):
        torch.testing.assert_close(g, r, atol=1e-10, rtol=1e-10, msg=lambda m: f"grad {name}: {m}")


def test_anisotropic_numbers_and_scalars(backend):
    device = device_of(backend)
    x = _random((2, 3, 12, 13), torch.float64, device)
    size = 7
    out = anisotropic_blur_downsample(x, -0.5, 4.0, torch.tensor(1.0, dtype=torch.float64, device=device),
                                      size, 2, backend=backend)
    ref = reference_blur_downsample(x, gaussian_kernel(torch.tensor(-0.5, dtype=torch.float64), 4.0, 1.0, size)
                                    .to(device), 2)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    # [C, H, W] in, [C, H', W'] out
    assert anisotropic_blur_downsample(x[0], 0.1, 2.0, 2.0, size, 3, backend=backend).shape == (3, 4, 5)


@pytest.mark.parametrize("theta", [-0.5 + 2 * math.pi * 16, 0.3 - 2 * math.pi * 150, 1000.25])
def test_anisotropic_float32_any_theta(backend, theta):
    """float32 weights are made with accurate sin / cos / exp (no fast-math
    approximations: csrc/compile_flags.txt), so theta far outside [-pi, pi]
    gives the weights of its float32 value: against the float64 reference at
    exactly that value, within float32 rounding of a 15 x 15 blur."""
    device = device_of(backend)
    size = 15 if backend != "triton" else 5
    x = _random((1, 2, 17, 19), torch.float32, device)
    t32 = torch.tensor([theta], dtype=torch.float32, device=device)
    out = anisotropic_blur_downsample(x, t32, torch.tensor([4.0], device=device), torch.tensor([1.0], device=device),
                                      size, 2, backend=backend)
    kernel = gaussian_kernel(t32.double(), 4.0, 1.0, size=size)
    ref = reference_blur_downsample(x.double(), kernel[0], 2)
    torch.testing.assert_close(out.double(), ref, atol=4e-6, rtol=0)


def test_anisotropic_gradcheck(backend):
    device = device_of(backend)
    x = _random((2, 1, 6, 7), torch.float64, device).requires_grad_(True)
    params = _gaussian_params(2, device)
    assert torch.autograd.gradcheck(
        lambda x, t, a, b: anisotropic_blur_downsample(x, t, a, b, 5, 2, backend=backend), (x, *params),
        fast_mode=backend in ("triton", "torch"))


def test_anisotropic_gradgradcheck(backend):
    device = device_of(backend)
    x = _random((2, 1, 5, 4), torch.float64, device).requires_grad_(True)
    params = _gaussian_params(2, device)
    assert torch.autograd.gradgradcheck(
        lambda x, t, a, b: anisotropic_blur_downsample(x, t, a, b, 3, 2, backend=backend), (x, *params),
        fast_mode=backend in ("triton", "torch"))


def test_second_order_mixed_dtypes(backend):
    """create_graph=True with float32 images and float64 Gaussian parameters
    (the public function's parameter dtype rule): a loss of the gradients,
    differentiated again, matches the reference to float32 rounding."""
    device = device_of(backend)

    def second_order(name):
        gen = torch.Generator().manual_seed(4)
        x = torch.rand(2, 2, 7, 6, generator=gen).to(device).requires_grad_(True)
        kernel = torch.rand(2, 3, 3, generator=gen).to(device).requires_grad_(True)
        params = [torch.tensor(v, dtype=torch.float64, device=device, requires_grad=True)
                  for v in ([0.3, 1.0], [2.0, 3.0], [1.0, 0.5])]
        inputs = (x, kernel, *params)
        out = blur_downsample(x, kernel, 2, backend=name).square().sum() + \
            anisotropic_blur_downsample(x, *params, 3, 2, backend=name).square().sum()
        grads = torch.autograd.grad(out, inputs, create_graph=True)
        return torch.autograd.grad(sum(g.square().sum() for g in grads), inputs)

    for name, got, want in zip(("x", "kernel", "theta", "lambda1", "lambda2"), second_order(backend),
                               second_order("torch")):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()),
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(size=4), ValueError, "size"),
    (dict(size=0), ValueError, "size"),
    (dict(lambda1=0.0), ValueError, "lambda1"),
    (dict(lambda2=-1.0), ValueError, "lambda2"),
    (dict(theta=float("nan")), ValueError, "theta"),
    (dict(lambda1=float("inf")), ValueError, "lambda1"),
    (dict(theta=torch.zeros(2, dtype=torch.float64)), ValueError, "theta"),
    (dict(lambda2=torch.ones(3, 1, dtype=torch.float64)), ValueError, "lambda2"),
    (dict(theta=torch.zeros(3, dtype=torch.int64)), TypeError, "theta"),
    (dict(lambda1="2"), TypeError, "lambda1"),
    (dict(scale=0), ValueError, "scale"),
    (dict(scale=1.5), ValueError, "scale"),
    (dict(mode="nearest"), ValueError, "mode"),
    (dict(backend="fortran"), ValueError, "backend"),
    (dict(x=torch.zeros(3, 5, 5, dtype=torch.int64)), TypeError, "x"),
    (dict(x=torch.zeros(5, 5)), ValueError, "x"),
])
def test_anisotropic_bad_input(kwargs, error, match):
    args = dict(x=torch.rand(3, 2, 9, 9, dtype=torch.float64), theta=0.3, lambda1=2.0, lambda2=1.0, size=7,
                scale=2)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        anisotropic_blur_downsample(**args)


# --- the raw C++/CUDA ops ------------------------------------------------------------

def test_opcheck(native):
    device = native
    x = _random((2, 3, 11, 13), torch.float64, device).requires_grad_(True)
    kernel = _random((2, 5, 5), torch.float64, device).requires_grad_(True)
    ops = torch.ops.mzsr_fast
    torch.library.opcheck(ops.blur_downsample.default, (x, kernel, 2))
    torch.library.opcheck(ops.blur_downsample.default, (x.detach().float(), kernel[:1].detach().float(), 3))
    grad = _random((2, 3, 6, 7), torch.float64, device)
    for need_x, need_kernel in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(ops.blur_downsample_backward.default,
                              (grad, x.detach(), kernel.detach(), 2, need_x, need_kernel))
    theta, lambda1, lambda2 = _gaussian_params(2, device)
    torch.library.opcheck(ops.gaussian_blur_downsample.default, (x, theta, lambda1, lambda2, 5, 2))


def test_torch_compile_fullgraph(native):
    device = native
    ops = torch.ops.mzsr_fast

    def degrade(x, kernel, theta, lambda1, lambda2):
        return ops.blur_downsample(x, kernel, 2).sum() + ops.gaussian_blur_downsample(
            x, theta, lambda1, lambda2, 5, 3).square().sum()

    # aot_eager traces through the fake kernels and the autograd formulas like
    # inductor does, without compiling C++ (seconds instead of a minute).
    compiled = torch.compile(degrade, fullgraph=True, backend="aot_eager")
    x = _random((2, 3, 10, 11), torch.float64, device).requires_grad_(True)
    kernel = _random((1, 3, 3), torch.float64, device).requires_grad_(True)
    params = _gaussian_params(2, device)
    inputs = (x, kernel, *params)
    got = compiled(*inputs)
    want = degrade(*inputs)
    torch.testing.assert_close(got, want)
    for g, r in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs)):
        torch.testing.assert_close(g, r)


def test_raw_op_errors(native):
    ops = torch.ops.mzsr_fast
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64, device=native)
    with pytest.raises(RuntimeError, match="k odd"):
        ops.blur_downsample(x, torch.rand(1, 4, 4, dtype=torch.float64, device=native), 2)
    with pytest.raises(RuntimeError, match="stride"):
        ops.blur_downsample(x, torch.rand(1, 3, 3, dtype=torch.float64, device=native), 0)
    with pytest.raises(RuntimeError, match="B = 1"):
        ops.blur_downsample(x, torch.rand(2, 3, 3, dtype=torch.float64, device=native), 1)
    with pytest.raises(RuntimeError, match="grad_out"):
        ops.blur_downsample_backward(torch.rand(1, 1, 3, 3, dtype=torch.float64, device=native), x,
                                     torch.rand(1, 3, 3, dtype=torch.float64, device=native), 2, True, True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(backend, dtype):
    if backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("triton: bf16 gives wrong values in the CPU interpreter")
    device = device_of(backend)
    x = _random((2, 3, 17, 16), torch.float64, device)
    kernel = _random((2, 5, 5), torch.float64, device)
    kernel = kernel / kernel.sum(dim=(-2, -1), keepdim=True)
    out = blur_downsample(x.to(dtype), kernel.to(dtype), 2, backend=backend)
    assert out.dtype == dtype
    ref = reference_blur_downsample(x.to(dtype).double(), kernel.to(dtype).double(), 2)
    # Inputs are exact in dtype; the result is computed in float32 and rounded once.
    torch.testing.assert_close(out.double(), ref, atol=2 * torch.finfo(dtype).eps * float(ref.abs().max()), rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_anisotropic_low_precision(backend, dtype):
    """Every backend builds the Gaussian in float32 or wider, blurs in float32
    and rounds the result once to x's dtype (no backend rounds the kernel to
    x's dtype first). Against the float64 reference on the same (exact)
    input: half an ulp of the rounding, plus float32 accumulation over the
    k * k taps (k^2 * 2^-24 relative, 1e-5 here)."""
    if backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("triton: bf16 gives wrong values in the CPU interpreter")
    device = device_of(backend)
    x = _random((2, 3, 17, 16), torch.float64, device).to(dtype)
    theta, lambda1, lambda2 = 0.7, 2.3, 0.6
    out = anisotropic_blur_downsample(x, theta, lambda1, lambda2, 7, 2, backend=backend)
    assert out.dtype == dtype
    kernel = gaussian_kernel(torch.tensor(theta, dtype=torch.float64), lambda1, lambda2, 7).to(device)
    ref = reference_blur_downsample(x.double(), kernel, 2)
    torch.testing.assert_close(out.double(), ref, atol=1e-6, rtol=torch.finfo(dtype).eps / 2 + 1e-5)


def test_exported_from_package():
    assert mzsr_fast.anisotropic_blur_downsample is anisotropic_blur_downsample


def test_value_checks_need_no_device_sync(monkeypatch):
    """The per-call value checks (finite kernel, finite theta, positive variances)
    run only on host values: numbers and CPU tensors are checked, tensors on a
    GPU are not (checking them would stall the host on every call and is not
    allowed during CUDA-graph capture). Shown with a fake device: every
    host-side check goes through _checks.finite_tensor, which must see only CPU
    tensors, and a GPU kernel tensor never reaches it."""
    from mzsr_fast import _checks
    from mzsr_fast.ops import blur_downsample as glue

    seen = []
    monkeypatch.setattr(_checks, "finite_tensor", lambda t, name: seen.append((t.device.type, name)))
    x = torch.rand(1, 1, 9, 9)
    glue._check_kernel(torch.rand(3, 3), 1, x)
    glue._check_gaussian_params(0.3, torch.tensor([2.0]), 1.0, 1, x)
    assert seen == [("cpu", "kernel"), ("cpu", "theta"), ("cpu", "lambda1"), ("cpu", "lambda2")]

    class FakeGpuTensor:  # what finite_on_host sees for a tensor on a GPU
        device = torch.device("cuda")

    seen.clear()
    _checks.finite_on_host(FakeGpuTensor(), "kernel")
    assert seen == []
    with pytest.raises(ValueError, match="lambda2: expected variances > 0"):
        monkeypatch.undo()
        glue._check_gaussian_params(0.3, 2.0, -1.0, 1, x)
