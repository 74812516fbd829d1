"""Triton kernel of sgd_step, the fused multi-tensor SGD update:

    out[i] = params[i] - alpha * rates[task, i] * grads[i]   (no params: 0 - ...)

One launch per group of up to GROUP tensors. The chunk plan is the one of
csrc/ops/sgd_step_math.h (tensor_plan / chunk_at, the same formulas here):
each tensor is cut into task slices when the rate or the param layout varies
per task, each slice into chunks of BLOCK elements; program c finds its tensor
in the group's prefix sums of chunks and updates one chunk. The tensors
themselves and the plan's integers are kernel arguments (tuples), so a launch
copies nothing from the host and can be captured in a CUDA graph.

Rounding: p - r * g with two roundings (product, then difference) in the
compute dtype, like the reference and the C++/CUDA kernels: the launch passes
enable_fp_fusion=False so Triton does not contract them into one FMA.

The launcher ``sgd_step`` is a plain function (not differentiable) with the
name and arguments of the op; mzsr_fast.ops.sgd_step registers it as
mzsr_fast::sgd_step_triton, with its fake kernel and autograd.

The integer arguments (sizes, offsets) are not specialised on their values
(do_not_specialize), so new shapes reuse the compiled kernel; only the group
size, dtype and whether params are given select a compilation.

On CPU tensors this runs only under TRITON_INTERPRET=1 set before import.
Half inputs on CPU are computed in float32 and cast back (the interpreter's
half arithmetic is not worth trusting); on GPU they load as half and compute
in float32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["sgd_step", "tensor_plan", "BLOCK", "GROUP"]

BLOCK = 4096  # elements per program (and per chunk)
GROUP = 16    # tensors per launch (the MZSR net has 16)


@triton.jit(do_not_specialize=["first", "slice_len", "per_slice", "column", "broadcast", "rates_task_stride"])
def _sgd_step_kernel(p, g, o, first, slice_len, per_slice, column, broadcast, rates, rates_task_stride,
                     N: tl.constexpr, HAS_PARAMS: tl.constexpr, BLOCK: tl.constexpr):
    c = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    for e in tl.static_range(N):
        if (c >= first[e]) & (c < first[e + 1]):
            local = c - first[e]
            t = local // per_slice[e]
            start = (local - t * per_slice[e]) * BLOCK
            offset = t * slice_len[e] + start
            mask = offs < slice_len[e] - start
            rate = tl.load(rates + t * rates_task_stride + column[e])  # compute dtype
            step = rate * tl.load(g[e] + offset + offs, mask=mask, other=0).to(rate.dtype)
            if HAS_PARAMS:
                param_offset = offset - broadcast[e] * t * slice_len[e]  # broadcast: the slice-0 offset, start
                value = tl.load(p[e] + param_offset + offs, mask=mask, other=0).to(rate.dtype) - step
            else:
                value = -step
            tl.store(o[e] + offset + offs, value.to(o[e].dtype.element_ty), mask=mask)


def tensor_plan(numel: int, tasks: int, broadcast: bool, rate_tasks: int, chunk: int) -> tuple[int, int, int]:
    """(slice_len, chunks_per_slice, chunks) of one tensor, as tensor_plan() in
    csrc/ops/sgd_step_math.h."""
    if numel == 0:
        return 0, 0, 0
    slices = tasks if (rate_tasks > 1 or broadcast) else 1
    slice_len = numel // slices
    per_slice = -(-slice_len // chunk)
    return slice_len, per_slice, slices * per_slice


def _is_broadcast(p: torch.Tensor) -> bool:
    return p.dim() >= 1 and p.shape[0] > 1 and p.stride(0) == 0


def sgd_step(params: list[torch.Tensor], grads: list[torch.Tensor], rates: torch.Tensor | None,
             alpha: float) -> list[torch.Tensor]:
    """Launch the kernel. Arguments as mzsr_fast::sgd_step (already checked by
    mzsr_fast.ops.sgd_step): grads contiguous, params contiguous or broadcast
    over the leading axis (or an empty list), rates None or [1 or T, 1 or n] in the
    compute dtype. Returns new tensors."""
    outs = [torch.empty_like(g, memory_format=torch.contiguous_format) for g in grads]
    if not grads or all(g.numel() == 0 for g in grads):
        return outs
    device, dtype = grads[0].device, grads[0].dtype
    named = [(f"grads[{i}]", g) for i, g in enumerate(grads)] + [(f"params[{i}]", p) for i, p in enumerate(params)]
    for name, t in named + ([("rates", rates)] if rates is not None else []):
        if t.device != device:  # a launcher never moves data between devices
            raise ValueError(f"{name}: expected a tensor on grads[0]'s device {device}, got {t.device}")
    if device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
        wide = sgd_step([p.float() for p in params], [g.float() for g in grads], rates, alpha)
        return [w.to(dtype) for w in wide]
    compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    if rates is None:
        scaled = torch.full((1, 1), alpha, dtype=compute, device=device)
    else:
        scaled = (rates * alpha).to(compute).contiguous()
    rate_tasks, rate_tensors = scaled.shape
    # rate_index() of sgd_step_math.h as a stride per task and a column per tensor
    rates_task_stride = rate_tensors if rate_tasks > 1 else 0
    work = [i for i, g in enumerate(grads) if g.numel() > 0]
    for lo in range(0, len(work), GROUP):
        group = work[lo:lo + GROUP]
        first, slice_lens, per_slices, flags = [0], [], [], []
        for i in group:
            g = grads[i]
            broadcast = bool(params) and _is_broadcast(params[i])
            slice_len, per_slice, chunks = tensor_plan(g.numel(), g.shape[0] if g.dim() else 1, broadcast,
                                                       rate_tasks, BLOCK)
            first.append(first[-1] + chunks)
            slice_lens.append(slice_len)
            per_slices.append(per_slice)
            flags.append(int(broadcast))
        gs = tuple(grads[i] for i in group)
        ps = tuple(params[i] for i in group) if params else gs  # read only when HAS_PARAMS
        columns = tuple(i if rate_tensors > 1 else 0 for i in group)
        _sgd_step_kernel[(first[-1],)](ps, gs, tuple(outs[i] for i in group), tuple(first), tuple(slice_lens),
                                       tuple(per_slices), columns, tuple(flags), scaled, rates_task_stride,
                                       N=len(group), HAS_PARAMS=bool(params), BLOCK=BLOCK,
                                       enable_fp_fusion=False)
    return outs
