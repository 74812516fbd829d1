"""Triton kernel of sgd_step, the fused multi-tensor SGD update:

    out[i] = params[i] - alpha * lr[task, i] * grads[i]      (no params: 0 - ...)

One launch over every chunk of every tensor. The chunk plan is the one of
csrc/ops/sgd_step_math.h (same fields, same order): each row
(tensor, offset, param_offset, length, lr_index) is a run of at most BLOCK
elements of one tensor that share one rate; program c updates row c. The
tensors are reached through three int64 pointer tables (params, grads, out),
so the lists need no concatenation. The plan depends only on the shapes and
is cached per device; each call ships the pointer tables.

On CPU tensors this runs only under TRITON_INTERPRET=1 set before import.
Half inputs on CPU are computed in float32 and cast back (the interpreter's
half arithmetic is not worth trusting); on GPU they load as half and compute
in float32.
"""
from __future__ import annotations

from functools import lru_cache

import torch
import triton
import triton.language as tl

__all__ = ["sgd_step", "plan", "BLOCK"]

BLOCK = 4096  # elements per program (and per chunk)
CHUNK_FIELDS = 5

_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
              torch.float64: tl.float64}


@triton.jit
def _sgd_step_kernel(chunks, p_table, g_table, out_table, lr,
                     HAS_PARAMS: tl.constexpr, DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    row = chunks + tl.program_id(0).to(tl.int64) * 5
    tensor = tl.load(row)
    offset = tl.load(row + 1)
    param_offset = tl.load(row + 2)
    length = tl.load(row + 3)
    rate = tl.load(lr + tl.load(row + 4))  # compute dtype (float32 or float64)
    offs = tl.arange(0, BLOCK)
    mask = offs < length
    g_ptr = tl.load(g_table + tensor).to(tl.pointer_type(DTYPE), bitcast=True)
    step = rate * tl.load(g_ptr + offset + offs, mask=mask, other=0).to(rate.dtype)
    if HAS_PARAMS:
        p_ptr = tl.load(p_table + tensor).to(tl.pointer_type(DTYPE), bitcast=True)
        value = tl.load(p_ptr + param_offset + offs, mask=mask, other=0).to(rate.dtype) - step
    else:
        value = -step
    out_ptr = tl.load(out_table + tensor).to(tl.pointer_type(DTYPE), bitcast=True)
    tl.store(out_ptr + offset + offs, value.to(DTYPE), mask=mask)


def plan(shapes: tuple[tuple[int, int, bool], ...], lr_tasks: int, lr_tensors: int,
         chunk: int) -> list[tuple[int, int, int, int, int]]:
    """The chunk rows for tensors described by (numel, tasks, param_broadcast),
    as csrc/ops/sgd_step_math.h plan(): a tensor is cut into task slices when
    the rate or the param layout varies per task, each slice into chunks."""
    rows = []
    for i, (numel, tasks, broadcast) in enumerate(shapes):
        if numel == 0:
            continue
        slices = tasks if (lr_tasks > 1 or broadcast) else 1
        slice_len = numel // slices
        for t in range(slices):
            lr_index = (t if lr_tasks > 1 else 0) * lr_tensors + (i if lr_tensors > 1 else 0)
            for start in range(0, slice_len, chunk):
                offset = t * slice_len + start
                rows.append((i, offset, start if broadcast else offset, min(chunk, slice_len - start), lr_index))
    return rows


@lru_cache(maxsize=64)
def _device_plan(shapes, lr_tasks: int, lr_tensors: int, chunk: int, device: torch.device) -> torch.Tensor:
    rows = plan(shapes, lr_tasks, lr_tensors, chunk)
    return torch.tensor(rows, dtype=torch.int64).reshape(-1, CHUNK_FIELDS).to(device)


def _is_broadcast(p: torch.Tensor) -> bool:
    return p.dim() >= 1 and p.shape[0] > 1 and p.stride(0) == 0


def sgd_step(params: list[torch.Tensor], grads: list[torch.Tensor], lr: torch.Tensor | None,
             alpha: float) -> list[torch.Tensor]:
    """Launch the kernel. Arguments as mzsr_fast::sgd_step (already checked by
    mzsr_fast.ops.sgd_step): grads contiguous, params contiguous or broadcast
    over the leading axis (or an empty list), lr None or [1 or T, 1 or n] in the
    compute dtype. Returns new tensors."""
    outs = [torch.empty_like(g, memory_format=torch.contiguous_format) for g in grads]
    if not grads or all(g.numel() == 0 for g in grads):
        return outs
    device, dtype = grads[0].device, grads[0].dtype
    if device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
        wide = sgd_step([p.float() for p in params], [g.float() for g in grads], lr, alpha)
        return [w.to(dtype) for w in wide]
    compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    rates = torch.full((1, 1), alpha, dtype=compute, device=device) if lr is None else (lr * alpha).to(compute)
    rates = rates.contiguous()
    shapes = tuple((g.numel(), g.shape[0] if g.dim() else 1, bool(params) and _is_broadcast(params[i]))
                   for i, g in enumerate(grads))
    lr_tasks, lr_tensors = rates.shape
    chunks = _device_plan(shapes, lr_tasks, lr_tensors, BLOCK, device)
    pointers = [[p.data_ptr() for p in params] if params else [0] * len(grads),
                [g.data_ptr() for g in grads], [o.data_ptr() for o in outs]]
    tables = torch.tensor(pointers, dtype=torch.int64).to(device)
    _sgd_step_kernel[(chunks.shape[0],)](chunks, tables[0], tables[1], tables[2], rates,
                                         HAS_PARAMS=bool(params), DTYPE=_TL_DTYPES[dtype], BLOCK=BLOCK)
    return outs
