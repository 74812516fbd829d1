"""Triton-specific checks of blur_downsample (kernels/blur_downsample.py).

tests/ops/test_blur_downsample.py compares every backend with the reference;
this file covers what only the Triton code has: tile boundaries (the real
heuristic and forced small tiles, so the backward kernel's per-tile skipping
of mirrored copies is exercised), the custom ops (opcheck), the in-kernel
Gaussian variant and the CPU half-precision path. The launchers run through
their ops, mzsr_fast::<launcher>_triton, which give them autograd.
On CPU it runs under TRITON_INTERPRET=1 (tests/conftest.py), which is slow
per operation: sizes and kernels are kept small.
"""
from __future__ import annotations

import pytest
import torch

from mzsr_fast import dispatch
from mzsr_fast.gaussian import gaussian_kernel
from mzsr_fast.reference.blur_downsample import blur as reference_blur

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_reason = dispatch.unavailable_reason("triton", "blur_downsample", DEVICE)
pytestmark = pytest.mark.skipif(_reason is not None, reason=f"triton backend unavailable: {_reason}")

if _reason is None:
    from mzsr_fast.kernels import blur_downsample as tb


def _blur(x, kernel3, stride):
    return torch.ops.mzsr_fast.blur_downsample_triton(x, kernel3, stride)


def _gaussian_blur(x, theta, lambda1, lambda2, size, stride):
    return torch.ops.mzsr_fast.gaussian_blur_downsample_triton(x, theta, lambda1, lambda2, size, stride)


def _ref(x, kernel3, stride):
    return reference_blur(x, kernel3 if kernel3.shape[0] > 1 else kernel3[0], stride)


def _compare(x, kernel3, stride, atol):
    """Forward and both gradients of the Triton blur against the reference."""
    x = x.clone().requires_grad_(True)
    kernel3 = kernel3.clone().requires_grad_(True)
    out = _blur(x, kernel3, stride)
    ref = _ref(x, kernel3, stride)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=atol, rtol=0)
    g = torch.randn_like(ref)
    gx, gk = torch.autograd.grad(out, (x, kernel3), g)
    rx, rk = torch.autograd.grad(ref, (x, kernel3), g)
    torch.testing.assert_close(gx, rx, atol=atol, rtol=0)
    torch.testing.assert_close(gk, rk, atol=atol * 10, rtol=0)


@pytest.mark.parametrize("size", [63, 64, 65])
def test_tile_boundary_default_blocks(size):
    # Output widths around the 64-wide tile of the default heuristic (stride 1).
    x = torch.rand(1, 1, 3, size, dtype=torch.float64, device=DEVICE)
    kernel3 = torch.rand(1, 3, 3, dtype=torch.float64, device=DEVICE)
    _compare(x, kernel3, 1, atol=1e-12)


@pytest.mark.parametrize("shape, k, stride, per_image", [
    ((2, 1, 9, 17), 5, 2, True),      # output 5 x 9 just past the 4 x 8 tiles
    ((1, 1, 10, 17), 3, 1, False),    # interior tiles skip the mirrored copies
    ((1, 1, 17, 16), 9, 3, False),    # input 16 wide = two full tiles, output 6 x 6
    ((1, 1, 3, 2), 7, 2, False),      # image smaller than the kernel: many mirrored copies
])
def test_small_tiles(monkeypatch, shape, k, stride, per_image):
    monkeypatch.setattr(tb, "block_sizes", lambda rows, cols, device, max_tile=1024: (4, 8, 1))
    x = torch.rand(*shape, dtype=torch.float64, device=DEVICE)
    kernel3 = torch.rand(shape[0] if per_image else 1, k, k, dtype=torch.float64, device=DEVICE)
    _compare(x, kernel3, stride, atol=1e-12)


def test_block_size_heuristic():
    cuda = torch.device("cuda")
    assert tb.block_sizes(512, 512, cuda) == (16, 64, 4)
    assert tb.block_sizes(7, 5, cuda) == (8, 16, 4)
    assert tb.block_sizes(1, 1000, cuda) == (1, 64, 4)
    assert tb.block_sizes(512, 512, cuda, max_tile=512) == (8, 64, 4)
    assert tb.block_sizes(100, 3, torch.device("cpu"))[:2] == (64, 4)


def test_opcheck_blur():
    x = torch.rand(2, 1, 5, 4, device=DEVICE)
    for kernel3 in (torch.rand(1, 3, 3, device=DEVICE), torch.rand(2, 3, 3, device=DEVICE)):
        torch.library.opcheck(torch.ops.mzsr_fast.blur_downsample_triton.default,
                              (x.requires_grad_(True), kernel3.requires_grad_(True), 2))
    torch.library.opcheck(torch.ops.mzsr_fast.blur_downsample_backward_triton.default,
                          (torch.rand(2, 1, 3, 2, device=DEVICE), x.detach(), torch.rand(1, 3, 3, device=DEVICE),
                           2, True, True))


def test_opcheck_gaussian():
    x = torch.rand(2, 1, 5, 4, device=DEVICE, requires_grad=True)
    params = [torch.tensor(v, device=DEVICE, requires_grad=True) for v in ([0.3, 2.0], [2.0, 1.5], [1.0, 0.7])]
    torch.library.opcheck(torch.ops.mzsr_fast.gaussian_blur_downsample_triton.default, (x, *params, 3, 2))


@pytest.mark.parametrize("dtype, per_image", [(torch.float64, True), (torch.float32, False)])
def test_gaussian_matches_materialised_kernel(dtype, per_image):
    n = 2 if per_image else 1
    x = torch.rand(2, 2, 10, 11, dtype=dtype, device=DEVICE, requires_grad=True)
    theta = torch.tensor([-0.5, 1.2][:n], dtype=dtype, device=DEVICE, requires_grad=True)
    lambda1 = torch.tensor([4.0, 2.2][:n], dtype=dtype, device=DEVICE, requires_grad=True)
    lambda2 = torch.tensor([1.0, 1.6][:n], dtype=dtype, device=DEVICE, requires_grad=True)
    out = _gaussian_blur(x, theta, lambda1, lambda2, 7, 2)
    kernel = gaussian_kernel(theta, lambda1, lambda2, 7)
    ref = _ref(x, kernel, 2)
    atol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out, ref, atol=atol, rtol=0)
    g = torch.randn_like(ref)
    inputs = (x, theta, lambda1, lambda2)
    for got, want in zip(torch.autograd.grad(out, inputs, g), torch.autograd.grad(ref, inputs, g)):
        torch.testing.assert_close(got, want, atol=atol * 100, rtol=1e-4)


def test_gradcheck_float64():
    x = torch.rand(2, 1, 4, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    kernel3 = torch.rand(2, 3, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, k: _blur(a, k, 2), (x, kernel3), fast_mode=True)
    params = [torch.tensor(v, dtype=torch.float64, device=DEVICE, requires_grad=True)
              for v in ([0.4, 2.5], [2.0, 1.1], [1.2, 0.3])]
    assert torch.autograd.gradcheck(lambda a, t, l1, l2: _gaussian_blur(a, t, l1, l2, 3, 2), (x, *params),
                                    fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    # CPU: computed in float32 and cast back; CUDA: float32 accumulation in the kernel.
    x = torch.rand(1, 2, 9, 10, device=DEVICE)
    kernel3 = torch.rand(1, 5, 5, device=DEVICE) / 25
    out = _blur(x.to(dtype), kernel3.to(dtype), 2)
    assert out.dtype == dtype
    ref = _ref(x.to(dtype).float(), kernel3.to(dtype).float(), 2)
    torch.testing.assert_close(out.float(), ref, atol=1e-2, rtol=1e-2)


def test_non_contiguous_input():
    x = torch.rand(1, 8, 9, 2, dtype=torch.float64, device=DEVICE).permute(0, 3, 1, 2)   # [1, 2, 8, 9]
    kernel3 = torch.rand(1, 5, 5, dtype=torch.float64, device=DEVICE).transpose(1, 2)
    torch.testing.assert_close(_blur(x, kernel3, 2), _ref(x, kernel3, 2), atol=1e-12, rtol=0)


@pytest.mark.parametrize("module", ["blur_downsample", "sgd_step"])
def test_integer_arguments_are_not_specialised(module):
    """Every runtime integer argument of the Triton kernels is in the kernel's
    do_not_specialize, so a new image size or list shape reuses the compiled
    kernel instead of compiling a variant (Triton specialises ints equal to 1
    and multiples of 16 by default). Pointer arguments (*_ptr, the sgd_step
    tensor tuples p, g, o and the rate table, rates) keep their alignment hints."""
    import ast
    import importlib
    import inspect

    mod = importlib.import_module(f"mzsr_fast.kernels.{module}")
    tree = ast.parse(inspect.getsource(mod))
    pointers = {"p", "g", "o", "rates"}
    kernels = 0
    for fn in tree.body:
        if not (isinstance(fn, ast.FunctionDef) and fn.name.endswith("_kernel")):
            continue
        kernels += 1
        decorator = fn.decorator_list[0]
        keywords = {kw.arg: kw.value for kw in getattr(decorator, "keywords", [])}
        assert "do_not_specialize" in keywords, f"{fn.name}: no do_not_specialize"
        listed = set(eval(compile(ast.Expression(keywords["do_not_specialize"]), "<dns>", "eval"), vars(mod)))
        runtime = {a.arg for a in fn.args.args if a.annotation is None}
        integers = {name for name in runtime if not name.endswith("_ptr") and name not in pointers}
        assert integers <= listed, f"{fn.name}: {sorted(integers - listed)} are specialised"
        assert listed <= runtime, f"{fn.name}: {sorted(listed - runtime)} are not runtime arguments"
    assert kernels >= 1


def test_launchers_never_move_data_between_devices():
    """A tensor argument on another device than x (here the meta device) is
    refused by name, for the direct calls that bypass mzsr_fast.ops' checks,
    instead of being copied over silently."""
    from mzsr_fast.kernels import sgd_step as ts

    x = torch.rand(1, 1, 6, 6, device=DEVICE) + 0.5
    other = torch.device("meta")
    kernel = torch.full((1, 3, 3), 1 / 9, device=DEVICE)
    with pytest.raises(ValueError, match="kernel: expected a tensor on x's device"):
        tb.blur_downsample(x, kernel.to(other), 2)
    with pytest.raises(ValueError, match="grad_out: expected a tensor on x's device"):
        tb.blur_downsample_backward(torch.rand(1, 1, 3, 3, device=other), x, kernel, 2, True, True)
    params = [torch.rand(1, device=DEVICE) + 0.5 for _ in range(3)]
    with pytest.raises(ValueError, match="lambda1: expected a tensor on x's device"):
        tb.gaussian_blur_downsample(x, params[0], params[1].to(other), params[2], 3, 2)
    with pytest.raises(ValueError, match="rates: expected a tensor on grads\\[0\\]'s device"):
        ts.sgd_step([], [x], torch.ones(1, 1, device=other), 1.0)
    with pytest.raises(ValueError, match="params\\[0\\]: expected a tensor on grads\\[0\\]'s device"):
        ts.sgd_step([x.to(other)], [x], None, 1.0)
