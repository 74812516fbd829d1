"""sgd_step: every backend against the plain-PyTorch reference
(mzsr_fast.reference.sgd_step, torch._foreach ops and broadcasting arithmetic).

Backends that cannot run here are skipped with the reason from
mzsr_fast.dispatch.unavailable_reason; Triton runs under the interpreter on CPU
(tests/conftest.py sets TRITON_INTERPRET=1 when there is no GPU). Lists mix
shapes whose sizes are not multiples of any block (the Triton block is 4096,
the CUDA chunk 4096); rates come as a float, per task [T], per tensor (a list of
learnable rates) and as an explicit [T, n] table. The raw ops get
torch.library.opcheck, gradcheck and gradgradcheck in float64 (second-order
MAML differentiates through the backward).
"""
from __future__ import annotations

import pytest
import torch

import mzsr_fast
from mzsr_fast import dispatch
from mzsr_fast.ops import sgd_step as glue
from mzsr_fast.ops.sgd_step import rate_table, sgd_step
from mzsr_fast.reference.sgd_step import sgd_step as reference
from op_backends import backend_params, device_of


pytestmark = pytest.mark.usefixtures("one_thread")

T = 3
# Odd sizes: 4101 > one Triton block / CUDA chunk, 0-size rows of nothing, a scalar-per-task bias.
SHAPES = [(T, 5, 7), (T,), (T, 4101), (T, 2, 3, 3), (T, 1)]


@pytest.fixture(params=backend_params("sgd_step"))
def backend(request):
    return request.param


def _op(backend: str):
    return glue._FUSED[backend]


def _lists(shapes, dtype=torch.float64, device="cpu", requires_grad=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    make = lambda s: torch.randn(s, generator=gen, dtype=dtype).to(device).requires_grad_(requires_grad)  # noqa: E731
    return [make(s) for s in shapes], [make(s) for s in shapes]


def _rate_forms(n: int, dtype, device):
    gen = torch.Generator().manual_seed(1)
    rand = lambda *s: (torch.rand(*s, generator=gen, dtype=dtype) * 0.1).to(device)  # noqa: E731
    return {"float": 0.0125, "0-d": rand(()), "per-task": rand(T), "per-tensor list": [0.01 * (i + 1) for i in range(n)],
            "per-tensor tensor": rand(n), "table": rand(T, n)}


def _expected(params, grads, rates):
    table, alpha = rate_table(rates, grads)
    return reference(params, grads, table, alpha)


def _by_hand(params, grads, rates):
    """The update written out for each form of rates (an oracle independent of rate_table)."""
    n = len(params)
    out = []
    for i, (p, g) in enumerate(zip(params, grads)):
        shape = (T,) + (1,) * (p.dim() - 1)
        if isinstance(rates, float):
            rate = rates
        elif isinstance(rates, list):
            rate = rates[i]
        elif rates.dim() == 0:
            rate = rates
        elif rates.dim() == 1 and rates.shape[0] == n and n != T:
            rate = rates[i]
        elif rates.dim() == 1:
            rate = rates.view(shape)
        else:
            rate = rates[:, i].view(shape)
        out.append(p - rate * g)
    return out


@pytest.mark.parametrize("form", ["float", "0-d", "per-task", "per-tensor list", "per-tensor tensor", "table"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_backend_matches_reference(backend, form, dtype):
    device = device_of(backend)
    params, grads = _lists(SHAPES, dtype, device)
    rates = _rate_forms(len(SHAPES), dtype, device)[form]
    out = sgd_step(params, grads, rates, backend=backend)
    expected = _by_hand(params, grads, rates)
    assert [o.shape for o in out] == [p.shape for p in params]
    for o, e, p in zip(out, expected, params):
        assert o.dtype == p.dtype and o.device == p.device and o.is_contiguous()
        torch.testing.assert_close(o, e, rtol=0, atol=4 * torch.finfo(dtype).eps * max(1.0, e.abs().max().item()))
    for o, e in zip(out, _expected(params, grads, rates)):  # the reference: the same two roundings, bit for bit
        torch.testing.assert_close(o, e, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_two_roundings_bit_for_bit(backend, dtype):
    """The rounding every backend implements (csrc/ops/sgd_step_math.h): product
    and difference rounded separately in the compute dtype, as the reference.
    Rates and values are drawn so that a fused multiply-add would differ on a few
    percent of the elements; tolerance 0. 20 tensors: more than one Triton group."""
    device = device_of(backend)
    gen = torch.Generator().manual_seed(5)
    shapes = [(T, 97 + 13 * i) for i in range(20)]
    params = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).to(device) for s in shapes]
    grads = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).to(device) for s in shapes]
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    rates = (torch.rand(T, len(shapes), generator=gen, dtype=torch.float64) + 0.3).to(compute).to(device)
    out = sgd_step(params, grads, rates, backend=backend)
    for i, (o, p, g) in enumerate(zip(out, params, grads)):
        step = rates[:, i:i + 1] * g.to(compute)  # one rounding
        assert torch.equal(o, (p.to(compute) - step).to(dtype)), f"tensor {i}"  # the second, then storage


def test_many_tensors_and_launch_groups(backend):
    """Lists longer than one launch group (CUDA: 32 tensors, Triton: 16), with
    empty tensors in between, a broadcast param and per-tensor rates."""
    device = device_of(backend)
    shapes = [(T, (i * 37) % 300) for i in range(41)]
    params, grads = _lists(shapes, torch.float64, device)
    params[7] = params[7][0].expand(T, *shapes[7][1:])
    rates = [0.01 * (i + 1) for i in range(len(shapes))]
    out = sgd_step(params, grads, rates, backend=backend)
    for o, p, g, r in zip(out, params, grads, rates):
        assert torch.equal(o, p - r * g)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_computes_in_float32(backend, dtype):
    device = device_of(backend)
    params, grads = _lists([(T, 33), (T, 2, 5)], dtype, device)
    rates = torch.tensor([0.1, 0.01, 0.001], device=device)
    out = sgd_step(params, grads, rates, backend=backend)
    for o, p, g in zip(out, params, grads):
        rate = rates.view(T, *([1] * (p.dim() - 1)))
        expected = (p.float() - rate * g.float()).to(dtype)  # float32 arithmetic, then the half type
        assert o.dtype == dtype
        torch.testing.assert_close(o, expected, rtol=0, atol=0)


def test_broadcast_params_need_no_copy(backend):
    """A param p.expand(T, ...) (the inner loop's first step) is read in place."""
    device = device_of(backend)
    base = [torch.randn(s[1:], dtype=torch.float64, device=device) for s in SHAPES]
    params = [b.expand(T, *b.shape) for b in base]
    _, grads = _lists(SHAPES, torch.float64, device)
    for rates in (0.5, torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64, device=device)):
        out = sgd_step(params, grads, rates, backend=backend)
        for o, e in zip(out, _by_hand([p.contiguous() for p in params], grads, rates)):
            torch.testing.assert_close(o, e, rtol=0, atol=1e-15)


def test_non_contiguous_inputs(backend):
    device = device_of(backend)
    params = [torch.randn(4, T, dtype=torch.float64, device=device).t(), torch.randn(T, 6, dtype=torch.float64,
                                                                                    device=device)[:, ::2]]
    grads = [torch.randn_like(p) for p in params]
    out = sgd_step(params, grads, 0.25, backend=backend)
    for o, p, g in zip(out, params, grads):
        torch.testing.assert_close(o, p - 0.25 * g, rtol=0, atol=1e-15)


def test_empty_and_zero_size(backend):
    device = device_of(backend)
    assert sgd_step([], [], 0.1, backend=backend) == []
    params, grads = _lists([(T, 0), (T, 2)], torch.float32, device)
    out = sgd_step(params, grads, torch.ones(T, device=device), backend=backend)
    assert out[0].shape == (T, 0)
    torch.testing.assert_close(out[1], params[1] - grads[1])


def test_inputs_are_not_modified(backend):
    device = device_of(backend)
    params, grads = _lists(SHAPES, torch.float32, device)
    before = [t.clone() for t in params + grads]
    sgd_step(params, grads, 0.3, backend=backend)
    for a, b in zip(params + grads, before):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------
# Autograd (float64): gradcheck and gradgradcheck through the public function
# ---------------------------------------------------------------------------

GRAD_SHAPES = [(T, 2), (T,), (T, 1, 2), (T, 1)]  # 4 small tensors: a [T] rates tensor is per task


@pytest.mark.parametrize("form", ["float", "per-task", "per-tensor list", "table"])
def test_gradcheck_and_gradgradcheck(backend, form):
    device = device_of(backend)
    n = len(GRAD_SHAPES)
    params, grads = _lists(GRAD_SHAPES, torch.float64, device, requires_grad=True)
    if form == "float":
        rate_args = []
    elif form == "per-tensor list":  # learnable per-tensor rates (MAML++ LSLR)
        rate_args = [(torch.rand((), dtype=torch.float64, device=device) + 0.1).requires_grad_() for _ in range(n)]
    elif form == "per-task":
        rate_args = [(torch.rand(T, dtype=torch.float64, device=device) + 0.1).requires_grad_()]
    else:
        rate_args = [(torch.rand(T, n, dtype=torch.float64, device=device) + 0.1).requires_grad_()]

    def fn(*args):
        p, g, rest = list(args[:n]), list(args[n:2 * n]), list(args[2 * n:])
        rates = 0.3 if form == "float" else rest if form == "per-tensor list" else rest[0]
        return tuple(sgd_step(p, g, rates, backend=backend))

    inputs = tuple(params + grads + rate_args)
    fast = backend == "triton"  # the interpreter launches slowly: random projections instead of full Jacobians
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=fast)
    assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=fast)


def test_rates_gradient_formula(backend):
    """grad_rates = -sum(g * grad_out) per rate; grad_g = -rates * grad_out; grad_p = grad_out."""
    device = device_of(backend)
    params, grads = _lists(GRAD_SHAPES, torch.float64, device, requires_grad=True)
    rates = torch.rand(T, dtype=torch.float64, device=device, requires_grad=True)
    out = sgd_step(params, grads, rates, backend=backend)
    weights = [torch.randn_like(o) for o in out]
    d = torch.autograd.grad(sum((o * w).sum() for o, w in zip(out, weights)), params + grads + [rates])
    n = len(params)
    for i in range(n):
        torch.testing.assert_close(d[i], weights[i])
        torch.testing.assert_close(d[n + i], -rates.view(T, *([1] * (grads[i].dim() - 1))) * weights[i])
    expected_rates = -sum((g * w).reshape(T, -1).sum(1) for g, w in zip(grads, weights))
    torch.testing.assert_close(d[-1], expected_rates)


@pytest.mark.parametrize("native", ["cpu", "cuda", "triton"])
@pytest.mark.parametrize("case", ["float", "per-task", "per-tensor", "no-params", "broadcast"])
def test_opcheck(native, case):
    reason = dispatch.unavailable_reason(native, "sgd_step", device_of(native))
    if reason is not None:
        pytest.skip(f"backend {native!r} unavailable: {reason}")
    device = device_of(native)
    n = len(GRAD_SHAPES)
    params, grads = _lists(GRAD_SHAPES, torch.float32, device, requires_grad=True)
    rates, alpha = None, 0.5
    if case == "per-task":
        rates = torch.rand(T, 1, device=device, requires_grad=True)
    elif case == "per-tensor":
        rates, alpha = torch.rand(1, n, device=device, requires_grad=True), 1.0
    elif case == "no-params":
        params = []
    elif case == "broadcast":
        params = [torch.randn(s[1:], device=device).expand(s) for s in GRAD_SHAPES]
    torch.library.opcheck(_op(native), (params, grads, rates, alpha))


def test_meta_gradient_through_two_steps(backend):
    """Second order through two chained updates (the inner loop's pattern): the
    gradient of a loss of the second update wrt the first params equals the
    reference backend's."""
    device = device_of(backend)

    def run(name):
        gen = torch.Generator().manual_seed(3)
        w0 = torch.randn(T, 4, generator=gen, dtype=torch.float64).to(device).requires_grad_()
        x = torch.randn(T, 4, generator=gen, dtype=torch.float64).to(device)
        rates = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64, device=device, requires_grad=True)
        w = w0
        for _ in range(2):
            loss = ((w * x).sum(1) ** 2).sum()
            (g,) = torch.autograd.grad(loss, [w], create_graph=True)
            (w,) = sgd_step([w], [g], rates, backend=name)
        return torch.autograd.grad((w ** 3).sum(), [w0, rates])

    for got, expected in zip(run(backend), run("torch")):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (none here)")
@pytest.mark.parametrize("name", ["cuda", "triton"])
def test_capturable_in_a_cuda_graph(name):
    """The launch copies nothing from the host (pointers and plan are kernel
    arguments), so sgd_step records into a CUDA graph; replays read the static
    inputs' new values. Warm-up first (Triton compiles, allocator pools)."""
    reason = dispatch.unavailable_reason(name, "sgd_step", "cuda")
    if reason is not None:
        pytest.skip(reason)
    shapes = [(T, 64, 3, 3, 3), (T, 64), (T, 5000), (T, 1)]
    params, grads = _lists(shapes, torch.float32, "cuda")
    params[1] = params[1][0].expand(T, 64)
    rates = torch.rand(T, len(shapes), device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        sgd_step(params, grads, rates, backend=name)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = sgd_step(params, grads, rates, backend=name)
    for trial in range(2):
        for t in params[:1] + params[2:] + grads:
            t.copy_(torch.randn_like(t))
        rates.copy_(torch.rand_like(rates))
        graph.replay()
        for o, e in zip(out, _expected(params, grads, rates)):
            assert torch.equal(o, e), f"replay {trial}"


# ---------------------------------------------------------------------------
# Bad input: messages name the argument
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("params, grads, rates, error, match", [
    (torch.zeros(3), [torch.zeros(3)], 0.1, TypeError, "params: expected a list"),
    ([torch.zeros(3)], [torch.zeros(3), torch.zeros(3)], 0.1, ValueError, r"grads: expected 1 tensors"),
    ([torch.zeros(3)], [torch.zeros(4)], 0.1, ValueError, r"grads\[0\]: expected shape \(3,\)"),
    ([torch.zeros(3)], [torch.zeros(3, dtype=torch.float64)], 0.1, TypeError, r"grads\[0\]: expected dtype"),
    ([torch.zeros(3), torch.zeros(2, dtype=torch.float64)], [torch.zeros(3), torch.zeros(2, dtype=torch.float64)],
     0.1, TypeError, r"params\[1\]: expected dtype torch.float32"),
    ([torch.zeros(3, dtype=torch.int64)], [torch.zeros(3, dtype=torch.int64)], 0.1, TypeError, "floating-point"),
    (["x"], [torch.zeros(3)], 0.1, TypeError, r"params\[0\]: expected a torch.Tensor"),
    ([torch.zeros(3, 2)], [torch.zeros(3, 2)], torch.zeros(5), ValueError, r"rates: expected .* got a tensor of shape"),
    ([torch.zeros(3, 2)], [torch.zeros(3, 2)], [0.1, 0.2], ValueError, "rates: a list gives one rate per tensor"),
    ([torch.zeros(3, 2)] * 3, [torch.zeros(3, 2)] * 3, torch.zeros(3), ValueError, "ambiguous"),
    ([torch.zeros(3, 2)], [torch.zeros(3, 2)], torch.zeros(2, 2), ValueError, "rates: expected"),
    ([torch.zeros(3, 2)], [torch.zeros(3, 2)], torch.zeros(3, dtype=torch.int64), TypeError, "rates: expected a float"),
    ([torch.zeros(3, 2)], [torch.zeros(3, 2)], True, TypeError, "rates: expected"),
    ([torch.zeros(3, 2)], [torch.zeros(3, 2)], "0.1", TypeError, "rates: expected"),
])
def test_bad_input(params, grads, rates, error, match):
    with pytest.raises(error, match=match):
        sgd_step(params, grads, rates)


def test_bad_backend():
    with pytest.raises(ValueError, match="backend"):
        sgd_step([torch.zeros(2)], [torch.zeros(2)], 0.1, backend="nope")


def test_native_op_checks_its_arguments():
    """Direct calls of the C++ op (bypassing the Python checks) fail cleanly."""
    reason = dispatch.unavailable_reason("cpu", "sgd_step", "cpu")
    if reason is not None:
        pytest.skip(reason)
    op = torch.ops.mzsr_fast.sgd_step.default
    with pytest.raises(RuntimeError, match="params has 1 tensors but grads has 2"):
        op([torch.zeros(2)], [torch.zeros(2), torch.zeros(2)], None, 1.0)
    with pytest.raises(RuntimeError, match="must be contiguous"):
        op([], [torch.zeros(4, 4).t()], None, 1.0)
    with pytest.raises(RuntimeError, match="rates has 2 rows"):
        op([], [torch.zeros(3, 2)], torch.zeros(2, 1), 1.0)
    with pytest.raises(RuntimeError, match="rates has dtype"):
        op([], [torch.zeros(3, 2)], torch.zeros(1, 1, dtype=torch.float64), 1.0)


def test_exported_from_package():
    assert mzsr_fast.sgd_step is sgd_step
