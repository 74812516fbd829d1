"""The batched MAML inner loop of meta-transfer learning (SPEC section 7).

Every parameter of MZSRNet gets a leading task axis [T, ...] ("stacked"
parameters); one call adapts T tasks at once, each with its own weights:

    result = inner_loop(dict(net.named_parameters()), (x_s, y_s), (x_q, y_q),
                        steps=5, lr=0.01, order=2)
    loss = multi_step_loss(result.query_losses, msl_weights(meta_step))
    loss.backward()          # meta-gradient into net's parameters

Public functions:

- ``stack_params(params, tasks)``: dict name -> [T, ...] views (p.expand).
- ``stacked_forward(params, x, strategy=None)``: [T, N, 3, H, W] -> same,
  task t through its own weights. Strategies (STRATEGIES): "loop" (per-task
  Python loop), "loop_cl" (the same with channels-last activations),
  "grouped" (tasks folded into channels, one grouped convolution per layer),
  "vmap" (torch.func.vmap of functional_forward). None picks
  PREFERRED_STRATEGY for the device type.
- ``inner_loop(...)``: the steps of SGD on the support set of every task,
  exact second order (order=2) or first order (order=1), the update being the
  fused multi-tensor op mzsr_fast.sgd_step; returns the adapted parameters
  and the query loss of every task after every step.
- ``msl_weights(step, steps)``: the MAML++ multi-step loss weights of SPEC
  section 7; ``multi_step_loss(query_losses, weights)``: the meta loss.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .model import CHANNELS, functional_forward
from .ops.sgd_step import sgd_step

__all__ = ["InnerLoopResult", "inner_loop", "stack_params", "stacked_forward", "msl_weights", "multi_step_loss",
           "STRATEGIES", "PREFERRED_STRATEGY", "LOSSES"]

_LAYERS = len(CHANNELS) - 1


# ---------------------------------------------------------------------------
# Stacked forward: T tasks x N images, each task with its own weights
# ---------------------------------------------------------------------------

def _forward_loop(params: Mapping[str, torch.Tensor], x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    names = list(params)
    # unbind, not params[k][t]: its backward is one stack, indexing's is T zero-filled copies.
    per_task = list(zip(*(params[k].unbind(0) for k in names)))
    outs = []
    for t, xt in enumerate(x.unbind(0)):
        if channels_last:
            xt = xt.contiguous(memory_format=torch.channels_last)
        outs.append(functional_forward(dict(zip(names, per_task[t])), xt))
    return torch.stack(outs)


def _forward_loop_cl(params, x):
    return _forward_loop(params, x, channels_last=True)


def _forward_grouped(params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    tasks, n, c, h, w = x.shape
    inp = x.transpose(0, 1).reshape(n, tasks * c, h, w)  # channels of task t: [t c, (t + 1) c)
    out = inp
    for i in range(_LAYERS):
        weight, bias = params[f"layers.{i}.weight"], params[f"layers.{i}.bias"]
        out = F.conv2d(out, weight.reshape(-1, *weight.shape[2:]), bias.reshape(-1), padding=1, groups=tasks)
        if i < _LAYERS - 1:
            out = F.relu(out)
    return (inp + out).reshape(n, tasks, c, h, w).transpose(0, 1)


def _forward_vmap(params, x):
    return torch.func.vmap(functional_forward)(dict(params), x)


# name -> forward(params {name: [T, ...]}, x [T, N, C, H, W]) -> [T, N, C, H, W]
STRATEGIES: dict[str, Callable] = {"loop": _forward_loop, "loop_cl": _forward_loop_cl,
                                   "grouped": _forward_grouped, "vmap": _forward_vmap}

# Fastest strategy per device type. Measured on the project's CPU (2 cores, float32,
# T=5 tasks x N=8 images of 64x64, seconds, best of 3, benchmarks/bench_maml.py):
#
#   strategy   forward   forward+backward   one 2nd-order step (grad, update, query, meta-backward)
#   loop         0.33         0.80              11.2
#   loop_cl      0.30         0.68               3.9
#   grouped      1.04         3.61              18.2
#   vmap         1.38         3.11              13.0
#
# On CPU oneDNN's channels-last convolutions make the double backward of the
# second-order meta-gradient about 3x cheaper. Grouped convolution is slower on
# this CPU; on GPU it folds the T launches per layer into one (not measured
# here: no GPU on the project's machines, so the CUDA choice is the usual one).
PREFERRED_STRATEGY = {"cpu": "loop_cl", "cuda": "grouped"}


def stack_params(params: Mapping[str, torch.Tensor], tasks: int) -> dict[str, torch.Tensor]:
    """dict name -> [tasks, ...]: every task starts from the same tensor (an
    expand view, no copy; gradients wrt it sum into the original)."""
    if isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 1:
        raise ValueError(f"tasks: expected an integer >= 1, got {tasks!r}")
    return {name: p.unsqueeze(0).expand(tasks, *p.shape) for name, p in params.items()}


def _check_strategy(strategy: str | None, device: torch.device) -> Callable:
    if strategy is None:
        strategy = PREFERRED_STRATEGY.get(device.type, "loop")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {tuple(STRATEGIES)} or None, got {strategy!r}")
    return STRATEGIES[strategy]


def _check_stacked(params: Mapping[str, torch.Tensor], tasks: int, name: str = "params") -> None:
    if not isinstance(params, Mapping):
        raise TypeError(f"{name}: expected a dict name -> tensor, got {type(params).__name__}")
    missing = [k for i in range(_LAYERS) for k in (f"layers.{i}.weight", f"layers.{i}.bias") if k not in params]
    if missing:
        raise ValueError(f"{name}: missing MZSRNet parameters {missing}")
    for k, p in params.items():
        if not isinstance(p, torch.Tensor) or p.dim() < 1 or p.shape[0] != tasks:
            shape = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
            raise ValueError(f"{name}[{k!r}]: expected a stacked tensor [T={tasks}, ...], got {shape}")


def _check_images(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 5 or x.shape[2] != CHANNELS[0]:
        raise ValueError(f"{name}: expected [T, N, {CHANNELS[0]}, H, W], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")


def stacked_forward(params: Mapping[str, torch.Tensor], x: torch.Tensor, strategy: str | None = None) -> torch.Tensor:
    """MZSRNet of T tasks at once: params {name: [T, ...]} (MZSRNet names),
    x [T, N, 3, H, W] -> [T, N, 3, H, W], out[t] = f(params[:][t], x[t]).
    Differentiable wrt params and x to any order."""
    _check_images(x, "x")
    _check_stacked(params, x.shape[0])
    return _check_strategy(strategy, x.device)(params, x)


# ---------------------------------------------------------------------------
# Losses and the MAML++ multi-step loss
# ---------------------------------------------------------------------------

def _l1(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (out - target).abs().flatten(1).mean(1)


def _mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (out - target).square().flatten(1).mean(1)


# name -> loss(out [T, ...], target [T, ...]) -> [T], the mean over everything but the task axis
LOSSES: dict[str, Callable] = {"l1": _l1, "mse": _mse}


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

@dataclass
class InnerLoopResult:
    """params: name -> [T, ...] adapted parameters (after the last step).
    query_losses: [steps, T], the query loss of every task after every step
    (None without a query set). support_losses: [steps, T], the support loss
    before every step (detached, for logging)."""
    params: dict[str, torch.Tensor]
    query_losses: torch.Tensor | None
    support_losses: torch.Tensor


def _step_rates(lr, steps: int, tasks: int, n_params: int) -> list:
    """The lr of each step, in a form sgd_step takes unambiguously."""
    if isinstance(lr, bool):
        raise TypeError(f"lr: expected a float, a [T] tensor, a [steps, n_params] tensor or a list of steps "
                        f"rates, got {lr!r}")
    if isinstance(lr, (int, float)):
        return [float(lr)] * steps
    if isinstance(lr, (list, tuple)):
        if len(lr) != steps:
            raise ValueError(f"lr: a list gives one rate per step, expected {steps} rates, got {len(lr)}")
        return list(lr)
    if not isinstance(lr, torch.Tensor):
        raise TypeError(f"lr: expected a float, a [T] tensor, a [steps, n_params] tensor or a list of steps "
                        f"rates, got {type(lr).__name__}")
    if lr.dim() == 0:
        return [lr] * steps
    if lr.dim() == 1 and lr.shape[0] == tasks:
        return [lr.view(tasks, 1)] * steps
    if lr.dim() == 2 and tuple(lr.shape) == (steps, n_params):
        return [lr[k].view(1, n_params) for k in range(steps)]
    raise ValueError(f"lr: expected a float, a 0-D tensor, a [T] = [{tasks}] tensor (per task) or a "
                     f"[steps, n_params] = [{steps}, {n_params}] tensor (per step and parameter tensor), got "
                     f"shape {tuple(lr.shape)}")


def _check_pair(pair, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TypeError(f"{name}: expected an (input, target) pair of [T, N, 3, H, W] tensors")
    x, y = pair
    _check_images(x, f"{name}[0]")
    _check_images(y, f"{name}[1]")
    if x.shape != y.shape:
        raise ValueError(f"{name}[1]: expected the shape of {name}[0] {tuple(x.shape)}, got {tuple(y.shape)}")
    return x, y


def inner_loop(params: Mapping[str, torch.Tensor], support, query, steps: int, lr, order: int = 2,
               loss: str | Callable = "l1", *, strategy: str | None = None,
               backend: str | None = None) -> InnerLoopResult:
    """Adapt T tasks at once by ``steps`` SGD steps from a shared initialisation.

    params: the initialisation, dict name -> tensor as dict(MZSRNet().named_parameters())
    (no task axis). support, query: (input, target) pairs of [T, N, 3, H, W]
    (query may be None; N and H, W may differ between the two). lr: a float,
    a 0-D or [T] tensor (per task), a [steps, n_params] tensor (per step and
    parameter tensor, in the order of params; MAML++ LSLR, may require grad),
    or a list of ``steps`` rates (per step). order: 2 for the exact second-order
    meta-gradient (the inner gradients are differentiated through), 1 for
    first-order MAML (the inner gradients are treated as constants). loss:
    "l1" (MZSR), "mse", or loss(out, target) -> [T] per-task losses.
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
    loss_fn = LOSSES.get(loss) if isinstance(loss, str) else loss
    if loss_fn is None or not callable(loss_fn):
        raise ValueError(f"loss: expected one of {tuple(LOSSES)} or a callable, got {loss!r}")
    forward = _check_strategy(strategy, x_s.device)
    names = list(params)
    rates = _step_rates(lr, steps, tasks, len(names))

    meta = torch.is_grad_enabled()  # build the graph to the initialisation only when grad is on
    create_graph = meta and order == 2
    with torch.enable_grad():
        fast = stack_params(params, tasks)
        _check_stacked(fast, tasks)
        # parameters the caller does not differentiate (or all, under no_grad) start as fresh leaves
        fast = {k: p if meta and p.requires_grad else p.detach().requires_grad_() for k, p in fast.items()}
        query_losses, support_losses = [], []
        for k in range(steps):
            per_task = loss_fn(forward(fast, x_s), y_s)
            inputs = [fast[name] for name in names]
            grads = torch.autograd.grad(per_task.sum(), inputs, create_graph=create_graph, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(inputs, grads)]
            support_losses.append(per_task.detach())
            fast = dict(zip(names, sgd_step(inputs, grads, rates[k], backend=backend)))
            if x_q is not None:
                query_losses.append(loss_fn(forward(fast, x_q), y_q))
    empty = x_s.new_zeros((0, tasks))
    support = torch.stack(support_losses) if support_losses else empty
    query = None if x_q is None else torch.stack(query_losses) if query_losses else empty
    if not meta:
        fast = {k: p.detach() for k, p in fast.items()}
        query = query.detach() if query is not None else None
    return InnerLoopResult(params=fast, query_losses=query, support_losses=support)
