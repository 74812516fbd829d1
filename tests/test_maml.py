"""The batched MAML inner loop (mzsr_fast.maml) against a per-task Python loop
written with torch.autograd.grad(create_graph=True) and plain tensor
arithmetic: adapted parameters, per-step query losses and the meta-gradient of
the MSL-weighted query losses wrt the initial parameters (and wrt learnable
rates), for second and first order, tight in float64 and to float32 tolerance.
T=3 tasks, K=3 steps, 2 + 2 patches of 12x12. Also: every stacked-forward
strategy against the loop, the MSL schedule of docs/method.md section 7, bad input.
"""
from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from mzsr_fast import maml, sgd_step, stacked
from mzsr_fast.model import PARAMETER_NAMES, MZSRNet, functional_forward


pytestmark = pytest.mark.usefixtures("one_thread")

T, K, N, SIZE = 3, 3, 2, 12
ALPHA = 0.01
WEIGHTS = (0.1, 0.3, 0.6)
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=2e-4, atol=1e-6)}


@lru_cache(maxsize=None)
def _problem(dtype):
    gen = torch.Generator().manual_seed(0)
    net = MZSRNet()
    net.reset_parameters(generator=gen)
    init = {k: v.detach().to(dtype).clone() for k, v in net.named_parameters()}
    # bias non-zero so every parameter's path is exercised
    init = {k: (v + 0.01 * torch.randn(v.shape, generator=gen, dtype=dtype)) if "bias" in k else v
            for k, v in init.items()}
    data = [torch.rand(T, N, 3, SIZE, SIZE, generator=gen, dtype=dtype) for _ in range(4)]
    return init, (data[0], data[1]), (data[2], data[3])


def _leaves(init):
    return {k: v.clone().requires_grad_() for k, v in init.items()}


def _rates(kind: str, dtype):
    gen = torch.Generator().manual_seed(5)
    if kind == "float":
        return ALPHA
    if kind == "per-task":
        return torch.tensor([0.005, 0.01, 0.02], dtype=dtype)
    if kind == "lslr":  # per step and parameter tensor, learnable
        return (0.005 + 0.01 * torch.rand(K, len(PARAMETER_NAMES), generator=gen, dtype=dtype)).requires_grad_()
    raise ValueError(kind)


def _rate(rates, step: int, task: int, index: int):
    if isinstance(rates, float):
        return rates
    if rates.dim() == 1:
        return rates[task]
    return rates[step, index]


@lru_cache(maxsize=None)
def _reference(dtype, order: int, kind: str):
    """Per task: K steps of p - rate * g with g = autograd.grad(..., create_graph=True)
    (detached for order 1); then the meta-gradient of sum_k w_k mean_t q[k, t]."""
    init, (xs, ys), (xq, yq) = _problem(dtype)
    leaves = _leaves(init)
    rates = _rates(kind, dtype)
    adapted, query = [], []
    for t in range(T):
        fast = dict(leaves)
        losses = []
        for k in range(K):
            loss = (functional_forward(fast, xs[t]) - ys[t]).abs().mean()
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            if order == 1:
                grads = [g.detach() for g in grads]
            fast = {name: p - _rate(rates, k, t, i) * g for i, ((name, p), g) in enumerate(zip(fast.items(), grads))}
            losses.append((functional_forward(fast, xq[t]) - yq[t]).abs().mean())
        adapted.append({name: p.detach() for name, p in fast.items()})
        query.append(torch.stack(losses))
    query = torch.stack(query, 1)  # [K, T]
    meta = sum(w * query[k].mean() for k, w in enumerate(WEIGHTS))
    wrt = list(leaves.values()) + ([rates] if isinstance(rates, torch.Tensor) and rates.requires_grad else [])
    meta_grads = torch.autograd.grad(meta, wrt)
    return adapted, query.detach(), meta_grads


def _ours(dtype, order: int, kind: str, **options):
    init, support, query = _problem(dtype)
    leaves = _leaves(init)
    rates = _rates(kind, dtype)
    result = maml.inner_loop(leaves, support, query, K, rates, order=order, **options)
    weights = torch.tensor(WEIGHTS, dtype=dtype)
    meta = maml.multi_step_loss(result.query_losses, weights)
    wrt = list(leaves.values()) + ([rates] if isinstance(rates, torch.Tensor) and rates.requires_grad else [])
    return result, torch.autograd.grad(meta, wrt)


def _compare(dtype, order, kind, **options):
    adapted, query, meta_grads = _reference(dtype, order, kind)
    result, grads = _ours(dtype, order, kind, **options)
    tol = TOL[dtype]
    assert result.query_losses.shape == (K, T)
    torch.testing.assert_close(result.query_losses, query, **tol)
    for name in PARAMETER_NAMES:
        assert result.params[name].shape == (T, *adapted[0][name].shape)
        torch.testing.assert_close(result.params[name], torch.stack([a[name] for a in adapted]), **tol)
    for got, expected in zip(grads, meta_grads):
        scale = expected.abs().max().item()  # meta-gradients are small: tolerance relative to each tensor
        torch.testing.assert_close(got, expected, rtol=tol["rtol"], atol=tol["atol"] + tol["rtol"] * scale)


@pytest.mark.parametrize("order", [2, 1])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_inner_loop_matches_per_task_loop(dtype, order):
    _compare(dtype, order, "float")


@pytest.mark.parametrize("order", [2, 1])
def test_learnable_per_step_per_tensor_rates(order):
    """MAML++ LSLR: rates [steps, n_params] requiring grad; its meta-gradient too."""
    _compare(torch.float64, order, "lslr")


def test_per_task_rates():
    _compare(torch.float64, 2, "per-task")


@pytest.mark.parametrize("strategy", list(maml.STRATEGIES))
def test_every_strategy_in_the_inner_loop(strategy):
    _compare(torch.float32, 2, "float", strategy=strategy)


def test_torch_backend_of_the_update():
    _compare(torch.float32, 1, "float", backend="torch")


def test_first_order_is_detached_inner_gradients():
    """order=1 differs from order=2 (the second-order terms are real), and
    the support losses are the losses before each step."""
    _, _, first = _reference(torch.float64, 1, "float")
    _, _, second = _reference(torch.float64, 2, "float")
    assert max((a - b).abs().max().item() for a, b in zip(first, second)) > 1e-8
    result, _ = _ours(torch.float64, 1, "float")
    init, (xs, ys), _ = _problem(torch.float64)
    before = torch.stack([(functional_forward(init, xs[t]) - ys[t]).abs().mean() for t in range(T)])
    torch.testing.assert_close(result.support_losses[0], before)
    assert not result.support_losses.requires_grad


# ---------------------------------------------------------------------------
# Stacked forward
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", list(maml.STRATEGIES))
def test_stacked_forward_strategies_equal_the_loop(strategy):
    init, (x, y), _ = _problem(torch.float64)
    gen = torch.Generator().manual_seed(2)
    stacked = {k: (v + 0.01 * torch.randn((T, *v.shape), generator=gen, dtype=v.dtype)).requires_grad_()
               for k, v in init.items()}
    out = maml.stacked_forward(stacked, x, strategy)
    expected = torch.stack([functional_forward({k: v[t] for k, v in stacked.items()}, x[t]) for t in range(T)])
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    weights = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    got = torch.autograd.grad((out * weights).sum(), list(stacked.values()))
    want = torch.autograd.grad((expected * weights).sum(), list(stacked.values()))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_explicit_conv_and_relu_are_differentiable_to_any_order():
    """The explicit autograd of the "explicit" strategy: gradcheck, gradgradcheck
    (grouped too), and third derivatives equal to those of F.conv2d / F.relu."""
    gen = torch.Generator().manual_seed(4)
    rand = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).requires_grad_()  # noqa: E731
    x, w, b = rand(2, 4, 5, 6), rand(6, 2, 3, 3), rand(6)
    mine = lambda x, w, b: stacked.relu(stacked.conv3x3(x, w, b, groups=2))  # noqa: E731
    torch_ = lambda x, w, b: torch.relu(torch.nn.functional.conv2d(x, w, b, padding=1, groups=2))  # noqa: E731
    assert torch.autograd.gradcheck(mine, (x, w, b))
    assert torch.autograd.gradgradcheck(mine, (x, w, b))
    v = torch.randn(2, 6, 5, 6, generator=gen, dtype=torch.float64)

    def third(fn):
        out = (fn(x, w, b) ** 2 * v).sum()
        g = torch.autograd.grad(out, (x, w, b), create_graph=True)
        gg = torch.autograd.grad(sum((t ** 2).sum() for t in g), (x, w, b), create_graph=True)
        return torch.autograd.grad(sum((t * t.detach()).sum() for t in gg), (x, w, b))

    for a, e in zip(third(mine), third(torch_)):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_explicit_strategy_under_autocast():
    """Under autocast the explicit strategy casts to bf16 itself: the forward
    equals autocast's channels-last torch path to the bit."""
    init, (x, y), _ = _problem(torch.float32)
    params = {k: v.requires_grad_() for k, v in maml.stack_params(init, T).items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = maml.stacked_forward(params, x, "explicit")
        expected = maml.stacked_forward(params, x, "loop_cl")
    torch.testing.assert_close(out, expected, rtol=0, atol=0)  # the residual add promotes back to float32
    grads = torch.autograd.grad((out.float() - y).abs().mean(), list(params.values()))
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_second_order_under_autocast_explicit_matches_loop_cl():
    """bf16 second-order meta-gradient through the explicit double backward
    against PyTorch's own double backward of the same bf16 graph: both round
    every convolution's output to bf16 (2^-9 relative) but in a different
    order, so they agree to about a percent of the gradient's norm."""
    init, support, query = _problem(torch.float32)
    params = {k: v.requires_grad_() for k, v in init.items()}
    grads = {}
    for strategy in ("explicit", "loop_cl"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            result = maml.inner_loop(params, support, query, K, 0.01, order=2, strategy=strategy)
        meta = torch.autograd.grad(result.query_losses.float().sum(), list(params.values()))
        grads[strategy] = torch.cat([g.flatten() for g in meta])
    relative = (grads["explicit"] - grads["loop_cl"]).norm() / grads["loop_cl"].norm()
    assert relative < 0.03


def test_channels_last_slices_get_canonical_strides():
    """One image per task (x[:, None], as adapt() passes it) slices to [1, C, H, W]
    with batch stride C: channels-last for is_contiguous, NCHW for
    suggest_memory_format, which made every convolution reorder. The
    channels-last strategies must hand the convolutions canonical strides, and
    values and gradients must not change."""
    gen = torch.Generator().manual_seed(5)
    images = torch.rand(2, 3, 7, 9, generator=gen).contiguous(memory_format=torch.channels_last)
    weight = torch.rand(4, 3, 3, 3, generator=gen)
    conv_layout_is_channels_last = lambda t: torch.nn.functional.conv2d(t, weight).is_contiguous(  # noqa: E731
        memory_format=torch.channels_last)
    piece = images[:, None].unbind(0)[1]  # the second: a storage offset to keep
    assert piece.stride()[0] == 3 and piece.storage_offset() > 0 and not conv_layout_is_channels_last(piece)
    fixed = stacked._channels_last(piece)
    assert conv_layout_is_channels_last(fixed) and fixed.data_ptr() == piece.data_ptr()
    torch.testing.assert_close(fixed, piece, rtol=0, atol=0)
    assert stacked._channels_last(fixed) is fixed
    nchw = torch.rand(1, 3, 7, 9, generator=gen)
    assert conv_layout_is_channels_last(stacked._channels_last(nchw))
    x = images.double()[:, None].requires_grad_()
    assert torch.autograd.gradcheck(lambda t: stacked._channels_last(t[1]) * 2, (x,))


def test_stack_params_is_a_view():
    init, _, _ = _problem(torch.float32)
    stacked = maml.stack_params(init, 4)
    for k, v in stacked.items():
        assert v.shape == (4, *init[k].shape) and v.data_ptr() == init[k].data_ptr()


def test_preferred_strategy_table():
    assert set(maml.PREFERRED_STRATEGY.values()) <= set(maml.STRATEGIES)
    assert maml.PREFERRED_STRATEGY["cpu"] in maml.STRATEGIES


# ---------------------------------------------------------------------------
# Behaviour
# ---------------------------------------------------------------------------

def test_no_grad_adapts_without_a_meta_graph():
    init, support, query = _problem(torch.float32)
    with torch.no_grad():
        result = maml.inner_loop(init, support, query, 2, ALPHA)
    assert not any(p.requires_grad for p in result.params.values())
    assert not result.query_losses.requires_grad
    adapted, losses, _ = _reference(torch.float32, 2, "float")
    torch.testing.assert_close(result.query_losses, losses[:2], **TOL[torch.float32])


def test_zero_steps_and_no_query():
    init, support, query = _problem(torch.float32)
    result = maml.inner_loop(_leaves(init), support, query, 0, ALPHA)
    assert result.query_losses.shape == (0, T) and result.support_losses.shape == (0, T)
    torch.testing.assert_close(result.params["layers.0.weight"][1], init["layers.0.weight"])
    result = maml.inner_loop(_leaves(init), support, None, 1, ALPHA, order=1)
    assert result.query_losses is None and result.support_losses.shape == (1, T)


def test_mse_and_callable_losses_agree():
    init, support, query = _problem(torch.float32)
    a = maml.inner_loop(init, support, query, 1, ALPHA, loss="mse")
    b = maml.inner_loop(init, support, query, 1, ALPHA, loss=lambda o, t: (o - t).pow(2).flatten(1).mean(1))
    torch.testing.assert_close(a.query_losses, b.query_losses)


# ---------------------------------------------------------------------------
# MAML++ multi-step loss weights (docs/method.md section 7)
# ---------------------------------------------------------------------------

def test_msl_weights_schedule():
    torch.testing.assert_close(maml.msl_weights(0), torch.full((5,), 0.2))
    w = maml.msl_weights(1000, dtype=torch.float64)
    torch.testing.assert_close(w[:4], torch.full((4,), 0.2 - 1000 * 6e-5, dtype=torch.float64))
    torch.testing.assert_close(w[4], torch.tensor(0.2 + 4 * 1000 * 6e-5, dtype=torch.float64))
    settled = maml.msl_weights(3300, dtype=torch.float64)
    torch.testing.assert_close(settled[:4], torch.full((4,), 0.006, dtype=torch.float64))
    torch.testing.assert_close(settled[4], torch.tensor(0.976, dtype=torch.float64))
    torch.testing.assert_close(maml.msl_weights(10 ** 6, dtype=torch.float64), settled)
    for step in (0, 1, 500, 3000, 3233, 3234, 5000):
        w = maml.msl_weights(step, dtype=torch.float64)
        assert abs(w.sum().item() - 1) < 1e-12
        assert (w[:4] >= 0.006 - 1e-15).all() and w[4] <= 0.976 + 1e-15
    # settles after (0.2 - 0.006) / 6e-5 = 3233.3 meta-steps
    assert maml.msl_weights(3233, dtype=torch.float64)[0] > 0.006
    assert maml.msl_weights(3234, dtype=torch.float64)[0] == pytest.approx(0.006)
    assert maml.msl_weights(0, steps=1).tolist() == [1.0]
    assert maml.msl_weights(100, steps=3, decay=0.01).tolist() == pytest.approx([0.01, 0.01, 0.98])
    assert maml.msl_weights(10, steps=3, decay=0.01).tolist() == pytest.approx([1 / 3 - 0.1] * 2 + [1 / 3 + 0.2])


def test_multi_step_loss_is_weighted_mean_over_tasks():
    q = torch.tensor([[1.0, 3.0], [2.0, 4.0]])
    assert maml.multi_step_loss(q, torch.tensor([0.25, 0.75])).item() == pytest.approx(0.25 * 2 + 0.75 * 3)
    with pytest.raises(ValueError, match="weights"):
        maml.multi_step_loss(q, torch.ones(3))


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------

def test_bad_input_messages():
    init, support, query = _problem(torch.float32)
    with pytest.raises(ValueError, match="order"):
        maml.inner_loop(init, support, query, 1, ALPHA, order=3)
    with pytest.raises(ValueError, match="steps"):
        maml.inner_loop(init, support, query, -1, ALPHA)
    with pytest.raises(ValueError, match=r"rates: expected .*\[steps, n_params\]"):
        maml.inner_loop(init, support, query, 1, torch.ones(7))
    with pytest.raises(ValueError, match="rates: a list gives one rate per step"):
        maml.inner_loop(init, support, query, 2, [0.1])
    with pytest.raises(ValueError, match=r"query\[0\]: expected 3 tasks"):
        maml.inner_loop(init, support, (query[0][:2], query[1][:2]), 1, ALPHA)
    with pytest.raises(ValueError, match=r"support\[0\]: expected \[T, N, 3, H, W\]"):
        maml.inner_loop(init, (support[0][0], support[1][0]), query, 1, ALPHA)
    with pytest.raises(ValueError, match=r"support\[1\]: expected the shape"):
        maml.inner_loop(init, (support[0], support[1][:, :1]), query, 1, ALPHA)
    with pytest.raises(ValueError, match="loss"):
        maml.inner_loop(init, support, query, 1, ALPHA, loss="l3")
    with pytest.raises(ValueError, match="strategy"):
        maml.inner_loop(init, support, query, 1, ALPHA, strategy="magic")
    with pytest.raises(ValueError, match="missing MZSRNet parameters"):
        maml.inner_loop({"layers.0.weight": init["layers.0.weight"]}, support, query, 1, ALPHA)
    with pytest.raises(ValueError, match=r"params\['layers.0.bias'\]: expected a stacked tensor"):
        maml.stacked_forward({**maml.stack_params(init, T), "layers.0.bias": init["layers.0.bias"]}, support[0])
    with pytest.raises(ValueError, match="step"):
        maml.msl_weights(-1)


def test_in_place_update_equals_sgd_step():
    """maml.sgd_update_ (adapt's in-place step) rounds like the sgd_step op: bit for bit."""
    gen = torch.Generator().manual_seed(3)
    params = [torch.randn(5, 7, 3, generator=gen), torch.randn(11, generator=gen)]
    grads = [torch.randn(p.shape, generator=gen) for p in params]
    rates = [0.013, 0.2]
    expected = [p - r * g for p, g, r in zip(params, grads, rates)]
    fused = sgd_step([p.clone() for p in params], [g.clone() for g in grads], torch.tensor(rates))
    in_place = [p.clone() for p in params]
    maml.sgd_update_(in_place, [g.clone() for g in grads], [torch.tensor(r) for r in rates])
    for a, b, c in zip(in_place, fused, expected):
        assert torch.equal(a, b) and torch.equal(a, c)
