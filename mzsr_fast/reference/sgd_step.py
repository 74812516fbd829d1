"""Plain-PyTorch reference of sgd_step: the "torch" backend and the oracle of the tests.

    out[i] = params[i] - alpha * rates[task, i] * grads[i]     (params empty: 0 - ...)

rates is None (the rate is alpha) or a [rate_tasks, rate_tensors] table,
rate_tasks in {1, T} (T = the leading axis of every tensor), rate_tensors in
{1, len(grads)}.
Same argument convention as the fused op mzsr_fast::sgd_step, whose public
wrapper (mzsr_fast.ops.sgd_step.sgd_step) turns the user's rates into this form.
Differentiable to any order by torch's own autograd; float64 capable.

Arithmetic is done in the compute dtype (float32 for half types), rounding the
product and then the difference, like the kernels.
"""
from __future__ import annotations

import torch

__all__ = ["sgd_step"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the update is computed in: float32 for half inputs, else their own."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _rate(rates: torch.Tensor, i: int, like: torch.Tensor) -> torch.Tensor:
    """The rate(s) of tensor i, shaped to broadcast against it."""
    column = rates[:, i if rates.shape[1] > 1 else 0]
    if rates.shape[0] == 1:
        return column[0]
    return column.view(rates.shape[0], *([1] * (like.dim() - 1)))


def sgd_step(params: list[torch.Tensor], grads: list[torch.Tensor], rates: torch.Tensor | None = None,
             alpha: float = 1.0) -> list[torch.Tensor]:
    """params, grads: equal-length lists of same-shape tensors (params may be
    empty, meaning zeros); rates: None or [1 or T, 1 or n]; alpha: a float scale.
    Returns the list of updated tensors (new tensors, inputs untouched)."""
    if not grads:
        return []
    dtype = grads[0].dtype
    compute = compute_dtype(dtype)
    if rates is None and compute == dtype:
        steps = torch._foreach_mul(list(grads), alpha)
        return torch._foreach_sub(list(params), steps) if params else torch._foreach_neg(steps)
    outs = []
    for i, g in enumerate(grads):
        rate = alpha * _rate(rates, i, g) if rates is not None else \
            torch.tensor(alpha, dtype=compute, device=g.device)
        step = rate * g.to(compute)
        out = params[i].to(compute) - step if params else -step
        outs.append(out.to(dtype))
    return outs
