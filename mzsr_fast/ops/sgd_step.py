"""sgd_step: the fused multi-tensor SGD update of the MAML inner loop.

    out[i] = params[i] - rate * grads[i]

for every tensor of a list, in one kernel launch. The rates are

- a float (or a 0-D tensor): one rate for everything;
- a [T] tensor: one rate per task, broadcast over the leading (task) axis that
  every tensor then has ([T, ...]);
- a list of n floats / 0-D tensors, or an [n] tensor: one rate per tensor
  (MAML++ learnable per-layer rates, LSLR; may require grad);
- a [T, n], [T, 1] or [1, n] tensor: the explicit table (rate per task and
  tensor). A 1-D tensor of length T == n is ambiguous and must be given this way.

Backends (mzsr_fast.dispatch): "cpu" and "cuda" (mzsr_fast._C; schema in
csrc/ops/sgd_step.cpp), "triton" (the launcher of mzsr_fast.kernels.sgd_step,
imported at its first call) and "torch" (the reference,
mzsr_fast.reference.sgd_step). A fused backend is one custom op of the schema
in _SCHEMAS, named mzsr_fast::sgd_step (C++/CUDA) and
mzsr_fast::sgd_step_triton (Triton, defined here):

    sgd_step  params, grads [T, ...] (params may be empty: 0), rates None or a
              [1 or T, 1 or n] table in the compute dtype, alpha -> new tensors

Both fused backends get the same fake kernel (torch.compile) and autograd
from _register. Derivatives of every order wrt params, grads and tensor
rates, on every backend: the backward is grad_params = grad_out, grad_grads =
-rate * grad_out (the same fused op with no params) and grad_rates =
-sum(grads * grad_out) per rate (torch ops), so second-order MAML through the
update is exact.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import _checks, _extension, dispatch
from ..reference import sgd_step as reference

__all__ = ["sgd_step", "rate_table"]


# ---------------------------------------------------------------------------
# Argument checks (once, at the public function)
# ---------------------------------------------------------------------------

def _check_lists(params, grads) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    for name, value in (("params", params), ("grads", grads)):
        if isinstance(value, torch.Tensor) or not isinstance(value, Sequence):
            raise TypeError(f"{name}: expected a list of tensors, got {type(value).__name__}")
    params, grads = list(params), list(grads)
    if len(grads) != len(params):
        raise ValueError(f"grads: expected {len(params)} tensors (one per params entry), got {len(grads)}")
    for i, (p, g) in enumerate(zip(params, grads)):
        for name, t in ((f"params[{i}]", p), (f"grads[{i}]", g)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
            if t.dtype not in _checks.FLOAT_DTYPES:
                raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")
        if g.shape != p.shape:
            raise ValueError(f"grads[{i}]: expected shape {tuple(p.shape)} like params[{i}], got {tuple(g.shape)}")
        if p.dtype != params[0].dtype:
            raise TypeError(f"params[{i}]: expected dtype {params[0].dtype} like params[0], got {p.dtype}")
        if g.dtype != p.dtype:
            raise TypeError(f"grads[{i}]: expected dtype {p.dtype} like params[{i}], got {g.dtype}")
        if p.device != params[0].device:
            raise ValueError(f"params[{i}]: expected a tensor on {params[0].device} like params[0], got {p.device}")
        if g.device != p.device:
            raise ValueError(f"grads[{i}]: expected a tensor on {p.device} like params[{i}], got {g.device}")
    return params, grads


def _leading_size(tensors: list[torch.Tensor]) -> int | None:
    """The leading (task) size every tensor shares, or None."""
    if not tensors or any(t.dim() == 0 for t in tensors):
        return None
    size = tensors[0].shape[0]
    return size if all(t.shape[0] == size for t in tensors) else None


def rate_table(rates, tensors: list[torch.Tensor]) -> tuple[torch.Tensor | None, float]:
    """Turn a user's rates into the op's (table, alpha): (None, rates) for a
    float, else ([1 or T, 1 or n] tensor in the compute dtype, 1.0).
    Differentiable wrt tensor rates. tensors: the params (or grads), for T, n,
    dtype, device."""
    n = len(tensors)
    tasks = _leading_size(tensors)
    dtype = reference.compute_dtype(tensors[0].dtype)
    device = tensors[0].device
    forms = (f"a float, a 0-D tensor, a [T] tensor (one rate per task, T = {tasks}), a list of {n} rates or "
             f"an [{n}] tensor (one per tensor), or a [T or 1, {n} or 1] tensor")
    if isinstance(rates, bool):
        raise TypeError(f"rates: expected {forms}, got {rates!r}")
    if isinstance(rates, (int, float)):
        return None, float(rates)
    if isinstance(rates, (list, tuple)):
        if len(rates) != n:
            raise ValueError(f"rates: a list gives one rate per tensor, expected {n} rates, got {len(rates)}")
        entries = []
        for j, r in enumerate(rates):
            if isinstance(r, torch.Tensor):
                if r.numel() != 1:
                    raise ValueError(f"rates[{j}]: expected one rate, got a tensor of shape {tuple(r.shape)}")
                if r.device != device:
                    raise ValueError(f"rates[{j}]: expected a tensor on {device} like params, got {r.device}")
                entries.append(r.reshape(()).to(dtype))
            elif isinstance(r, (int, float)) and not isinstance(r, bool):
                entries.append(torch.tensor(float(r), dtype=dtype, device=device))
            else:
                raise TypeError(f"rates[{j}]: expected a float or a one-element tensor, got {type(r).__name__}")
        return torch.stack(entries).reshape(1, n), 1.0
    if not isinstance(rates, torch.Tensor):
        raise TypeError(f"rates: expected {forms}, got {type(rates).__name__}")
    if not rates.is_floating_point():
        raise TypeError(f"rates: expected a floating-point tensor, got dtype {rates.dtype}")
    if rates.device != device:
        raise ValueError(f"rates: expected a tensor on {device} like params, got {rates.device}")
    if rates.dim() == 0:
        shape = (1, 1)
    elif rates.dim() == 1:
        length = rates.shape[0]
        per_task, per_tensor = length == tasks, length == n
        if length == 1:
            shape = (1, 1)
        elif per_task and per_tensor:
            raise ValueError(f"rates: a [{length}] tensor is ambiguous here ({tasks} tasks and {n} tensors): pass "
                             f"rates.view(-1, 1) for one rate per task or rates.view(1, -1) for one per tensor")
        elif per_task:
            shape = (length, 1)
        elif per_tensor:
            shape = (1, length)
        else:
            raise ValueError(f"rates: expected {forms}, got a tensor of shape {tuple(rates.shape)}")
    elif rates.dim() == 2 and rates.shape[0] in (1, tasks) and rates.shape[1] in (1, n):
        shape = tuple(rates.shape)
    else:
        raise ValueError(f"rates: expected {forms}, got a tensor of shape {tuple(rates.shape)}")
    return rates.to(dtype).reshape(shape).contiguous(), 1.0


# ---------------------------------------------------------------------------
# The fused op: schema, fake kernel and autograd of every backend
# ---------------------------------------------------------------------------

_SCHEMAS = {"sgd_step": "(Tensor[] params, Tensor[] grads, Tensor? rates, float alpha) -> Tensor[]"}


def _kernel_param(p: torch.Tensor) -> torch.Tensor:
    """Contiguous, or broadcast over the leading axis (p.expand(T, ...)), as the kernels take it."""
    if p.is_contiguous():
        return p
    if p.dim() >= 1 and p.stride(0) == 0 and p[0].is_contiguous():
        return p
    return p.contiguous()


def _call(op, params, grads, rates, alpha):
    return list(op([_kernel_param(p) for p in params], [g.contiguous() for g in grads], rates, alpha))


def _fake(params, grads, rates, alpha):
    return [torch.empty_like(g, memory_format=torch.contiguous_format) for g in grads]


def _setup_context(ctx, inputs, output):
    params, grads, rates, alpha = inputs
    ctx.alpha = alpha
    keep_grads = rates is not None and rates.requires_grad  # only grad_rates needs them
    ctx.save_for_backward(rates, *(grads if keep_grads else ()))


def _rates_grad(grads, grad_outs, rates, alpha):
    """-alpha * sum(grads * grad_out) over the elements of each rate, shaped as rates."""
    tasks, per_tensor = rates.shape
    sums = []
    for g, go in zip(grads, grad_outs):
        product = g.to(rates.dtype) * go.to(rates.dtype)
        sums.append(product.reshape(tasks, -1).sum(1) if tasks > 1 else product.sum().reshape(1))
    table = torch.stack(sums, 1)  # [tasks, n]
    if per_tensor == 1:
        table = table.sum(1, keepdim=True)
    return table * (-alpha)


def _register(op) -> None:
    """Fake kernel and autograd of one fused backend's op."""

    def backward(ctx, grad_outs):
        rates, *grads = ctx.saved_tensors
        need_params, need_grads, need_rates, _ = ctx.needs_input_grad
        grad_outs = list(grad_outs)
        grad_params = [go if need else None for go, need in zip(grad_outs, need_params)]
        grad_grads = [None] * len(grad_outs)
        if any(need_grads):  # -alpha * rates * grad_out: the same op without params (itself differentiable)
            scaled = _call(op, [], grad_outs, rates, ctx.alpha)
            grad_grads = [s if need else None for s, need in zip(scaled, need_grads)]
        grad_rates = _rates_grad(grads, grad_outs, rates, ctx.alpha) if need_rates and rates is not None else None
        return grad_params, grad_grads, grad_rates, None

    torch.library.register_fake(op, _fake)
    torch.library.register_autograd(op, backward, setup_context=_setup_context)


_TRITON = torch.library.custom_op("mzsr_fast::sgd_step_triton", dispatch.triton_launcher("sgd_step", "sgd_step"),
                                  mutates_args=(), schema=_SCHEMAS["sgd_step"])
_register(_TRITON)
_NATIVE = _extension.native_op("sgd_step")
if _NATIVE is not None:
    _register(_NATIVE)

# backend name -> its op (dispatch.choose picks only available backends)
_FUSED = {"cpu": _NATIVE, "cuda": _NATIVE, "triton": _TRITON}


# ---------------------------------------------------------------------------
# Public function
# ---------------------------------------------------------------------------

def sgd_step(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], rates,
             *, backend: str | None = None) -> list[torch.Tensor]:
    """One SGD step on a list of tensors: p - rate * g for every p, g of params, grads.

    params, grads: equal-length lists of floating tensors, same shape and dtype
    pairwise, all on one device (in the MAML inner loop each is [T, ...], task
    first; a param may be p.expand(T, ...)). rates: see the module docstring.
    Returns a list of new tensors. backend: None (fastest available), "cpu",
    "cuda", "triton" or "torch".
    """
    params, grads = _check_lists(params, grads)
    if not grads:
        return []
    table, alpha = rate_table(rates, grads)
    backend = dispatch.choose("sgd_step", grads[0].device, backend)
    if backend == "torch":
        return reference.sgd_step(params, grads, table, alpha)
    return _call(_FUSED[backend], params, grads, table, alpha)
