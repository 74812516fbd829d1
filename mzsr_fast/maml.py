"""The batched MAML inner loop of meta-transfer learning (docs/method.md section 7).

Every parameter of MZSRNet gets a leading task axis [T, ...] ("stacked"
parameters); one call adapts T tasks at once, each with its own weights:

    result = inner_loop(dict(net.named_parameters()), (x_s, y_s), (x_q, y_q),
                        steps=5, rates=0.01, order=2)
    loss = multi_step_loss(result.query_losses, msl_weights(meta_step))
    loss.backward()          # meta-gradient into net's parameters

Public functions:

- ``stack_params(params, tasks)``: dict name -> [T, ...] views (p.expand).
- ``stacked_forward(params, x, strategy=None)``: [T, N, 3, H, W] -> same,
  task t through its own weights; the strategies (STRATEGIES, chosen per
  device by PREFERRED_STRATEGY) are in mzsr_fast.stacked.
- ``inner_loop(...)``: the steps of SGD on the support set of every task,
  exact second order (order=2) or first order (order=1), the update being the
  fused multi-tensor op mzsr_fast.sgd_step; returns the adapted parameters
  and the query loss of every task after every step.
- ``msl_weights(step, steps)``: the MAML++ multi-step loss weights of docs/method.md
  section 7; ``multi_step_loss(query_losses, weights)``: the meta loss.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from .losses import LOSSES, task_losses
from .ops.sgd_step import sgd_step
from .stacked import (PREFERRED_STRATEGY, STRATEGIES, check_images, check_stacked, choose_strategy, stack_params,
                      stacked_forward)

__all__ = ["InnerLoopResult", "inner_loop", "sgd_update_", "stack_params", "stacked_forward", "msl_weights",
           "multi_step_loss", "STRATEGIES", "PREFERRED_STRATEGY"]

# ---------------------------------------------------------------------------
# The MAML++ multi-step loss
# ---------------------------------------------------------------------------

def msl_weights(step: int, steps: int = 5, decay: float = 6e-5, floor: float | None = None, *,
                dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """MAML++ multi-step loss weights at meta-iteration ``step`` (0-based): [steps].

    Uniform 1/steps at step 0; each of the first steps-1 weights falls by
    ``decay`` per meta-step to ``floor`` (default 0.03/steps = 0.006 for 5
    steps), the last rises by (steps-1) * decay per meta-step to
    1 - (steps-1) * floor (0.976), so the weights always sum to 1 and settle
    after (1/steps - floor) / decay meta-steps (3,233 for the defaults).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected an integer >= 1, got {steps!r}")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step: expected an integer >= 0, got {step!r}")
    floor = 0.03 / steps if floor is None else float(floor)
    start = 1.0 / steps
    if not 0.0 <= floor <= start:
        raise ValueError(f"floor: expected a value in [0, 1/steps = {start}], got {floor}")
    if decay < 0:
        raise ValueError(f"decay: expected a value >= 0, got {decay}")
    early = max(start - step * decay, floor)
    last = min(start + step * (steps - 1) * decay, 1.0 - (steps - 1) * floor)
    return torch.tensor([early] * (steps - 1) + [last], dtype=dtype, device=device)


def multi_step_loss(query_losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The meta loss: sum over steps of weights[k] * (mean over tasks of
    query_losses[k]). query_losses [steps, T], weights [steps] -> scalar."""
    if query_losses.dim() != 2:
        raise ValueError(f"query_losses: expected [steps, T], got shape {tuple(query_losses.shape)}")
    if weights.shape != query_losses.shape[:1]:
        raise ValueError(f"weights: expected shape ({query_losses.shape[0]},), got {tuple(weights.shape)}")
    return (weights.to(query_losses) @ query_losses).mean()


# ---------------------------------------------------------------------------
# Inner loop
# ---------------------------------------------------------------------------

def sgd_update_(params: list[torch.Tensor], grads: list[torch.Tensor], rates) -> None:
    """The inner step in place, p -= rate * g for every tensor (rates: one
    float or 0-d tensor per tensor), with sgd_step's arithmetic (the product
    rounded, then the difference). For loops whose weights must keep their
    storage (a captured CUDA graph replays on fixed addresses); the grads are
    overwritten. Not differentiable: inner_loop uses sgd_step."""
    with torch.no_grad():
        torch._foreach_mul_(grads, rates)
        torch._foreach_sub_(params, grads)


@dataclass
class InnerLoopResult:
    """params: name -> [T, ...] adapted parameters (after the last step).
    query_losses: [steps, T], the query loss of every task after every step
    (None without a query set). support_losses: [steps, T], the support loss
    before every step (detached, for logging)."""
    params: dict[str, torch.Tensor]
    query_losses: torch.Tensor | None
    support_losses: torch.Tensor


def _step_rates(rates, steps: int, tasks: int, n_params: int) -> list:
    """The rates of each step, in a form sgd_step takes unambiguously."""
    if isinstance(rates, bool):
        raise TypeError(f"rates: expected a float, a [T] tensor, a [steps, n_params] tensor or a list of steps "
                        f"rates, got {rates!r}")
    if isinstance(rates, (int, float)):
        return [float(rates)] * steps
    if isinstance(rates, (list, tuple)):
        if len(rates) != steps:
            raise ValueError(f"rates: a list gives one rate per step, expected {steps} rates, got {len(rates)}")
        return list(rates)
    if not isinstance(rates, torch.Tensor):
        raise TypeError(f"rates: expected a float, a [T] tensor, a [steps, n_params] tensor or a list of steps "
                        f"rates, got {type(rates).__name__}")
    if rates.dim() == 0:
        return [rates] * steps
    if rates.dim() == 1 and rates.shape[0] == tasks:
        return [rates.view(tasks, 1)] * steps
    if rates.dim() == 2 and tuple(rates.shape) == (steps, n_params):
        return [rates[k].view(1, n_params) for k in range(steps)]
    raise ValueError(f"rates: expected a float, a 0-D tensor, a [T] = [{tasks}] tensor (per task) or a "
                     f"[steps, n_params] = [{steps}, {n_params}] tensor (per step and parameter tensor), got "
                     f"shape {tuple(rates.shape)}")


def _loss_function(loss, name: str) -> Callable:
    """loss(out [T, ...], target [T, ...]) -> [T] for a LOSSES name or a callable."""
    if callable(loss):
        return loss
    if isinstance(loss, str) and loss in LOSSES:
        return lambda out, target: task_losses(loss, out, target)
    raise ValueError(f"{name}: expected one of {LOSSES} or a callable, got {loss!r}")


def _check_pair(pair, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TypeError(f"{name}: expected an (input, target) pair of [T, N, 3, H, W] tensors")
    x, y = pair
    check_images(x, f"{name}[0]")
    check_images(y, f"{name}[1]")
    if x.shape != y.shape:
        raise ValueError(f"{name}[1]: expected the shape of {name}[0] {tuple(x.shape)}, got {tuple(y.shape)}")
    return x, y


def inner_loop(params: Mapping[str, torch.Tensor], support, query, steps: int, rates, order: int = 2,
               loss: str | Callable = "l1", *, query_loss: str | Callable | None = None,
               strategy: str | None = None, backend: str | None = None) -> InnerLoopResult:
    """Adapt T tasks at once by ``steps`` SGD steps from a shared initialisation.

    params: the initialisation, dict name -> tensor as dict(MZSRNet().named_parameters())
    (no task axis). support, query: (input, target) pairs of [T, N, 3, H, W]
    (query may be None; N and H, W may differ between the two). rates: a float,
    a 0-D or [T] tensor (per task), a [steps, n_params] tensor (per step and
    parameter tensor, in the order of params; MAML++ LSLR, may require grad),
    or a list of ``steps`` rates (per step). order: 2 for the exact second-order
    meta-gradient (the inner gradients are differentiated through), 1 for
    first-order MAML (the inner gradients are treated as constants). loss:
    the support loss the steps descend, one of mzsr_fast.losses.LOSSES ("l1",
    MZSR's) or loss(out, target) -> [T] per-task losses; query_loss: the
    loss reported on the query set (None: loss).
    strategy: the stacked-forward strategy (None: PREFERRED_STRATEGY);
    backend: the sgd_step backend (None: automatic).

    Task t depends only on its own data: the result equals T separate
    single-task loops. Under torch.no_grad() the loop still takes gradients,
    but returns detached results (no meta-graph is built).
    """
    if order not in (1, 2):
        raise ValueError(f"order: expected 1 (first-order MAML) or 2 (exact second order), got {order!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps: expected an integer >= 0, got {steps!r}")
    if not isinstance(params, Mapping) or not params:
        raise TypeError(f"params: expected a non-empty dict name -> tensor, got {type(params).__name__}")
    x_s, y_s = _check_pair(support, "support")
    tasks = x_s.shape[0]
    x_q = y_q = None
    if query is not None:
        x_q, y_q = _check_pair(query, "query")
        if x_q.shape[0] != tasks:
            raise ValueError(f"query[0]: expected {tasks} tasks like support, got {x_q.shape[0]}")
    loss_fn = _loss_function(loss, "loss")
    query_fn = loss_fn if query_loss is None else _loss_function(query_loss, "query_loss")
    forward = choose_strategy(strategy, x_s.device)
    names = list(params)
    step_rates = _step_rates(rates, steps, tasks, len(names))

    meta = torch.is_grad_enabled()  # build the graph to the initialisation only when grad is on
    create_graph = meta and order == 2
    with torch.enable_grad():
        fast = stack_params(params, tasks)
        check_stacked(fast, tasks)
        # parameters the caller does not differentiate (or all, under no_grad) start as fresh leaves
        fast = {k: p if meta and p.requires_grad else p.detach().requires_grad_() for k, p in fast.items()}
        query_losses, support_losses = [], []
        for k in range(steps):
            per_task = loss_fn(forward(fast, x_s), y_s)
            inputs = [fast[name] for name in names]
            grads = torch.autograd.grad(per_task.sum(), inputs, create_graph=create_graph, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(inputs, grads)]
            support_losses.append(per_task.detach())
            fast = dict(zip(names, sgd_step(inputs, grads, step_rates[k], backend=backend)))
            if x_q is not None:
                query_losses.append(query_fn(forward(fast, x_q), y_q))
    empty = x_s.new_zeros((0, tasks))
    support = torch.stack(support_losses) if support_losses else empty
    query = None if x_q is None else torch.stack(query_losses) if query_losses else empty
    if not meta:
        fast = {k: p.detach() for k, p in fast.items()}
        query = query.detach() if query is not None else None
    return InnerLoopResult(params=fast, query_losses=query, support_losses=support)
