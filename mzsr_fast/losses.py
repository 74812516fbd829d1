"""The losses of the adaptation steps (the MAML inner loop and test-time
adaptation), per task, and their gradients with respect to the network's output.

- "l1": the mean of |e|, e = out - target (MZSR's, docs/method.md section 7).
  Its gradient, sign(e) / n, jumps when a pixel's error changes sign.
- "charbonnier": the mean of sqrt(e^2 + eps^2) - eps, eps = CHARBONNIER_EPS
  on [0, 1] images: L1 for errors much larger than eps, smooth near 0 (its
  gradient e / sqrt(e^2 + eps^2) / n is continuous). A departure from the
  paper, for models meta-trained with large first steps (docs/method.md).
- "mse": the mean of e^2 (for experiments; no shipped model uses it).

    loss = task_losses("l1", out, target)              # out, target [T, ...] -> [T]
    loss, grad = loss_and_gradient("l1", out, target)  # one task: [], d loss / d out
"""
from __future__ import annotations

import torch

from .catalogue import ADAPT_LOSSES as LOSSES

__all__ = ["LOSSES", "CHARBONNIER_EPS", "check_loss", "task_losses", "loss_and_gradient"]

# The smooth loss's eps: about a third of a typical adaptation error (the L1
# loss of a meta-training support set is about 0.035 on [0, 1] images).
CHARBONNIER_EPS = 0.01


def check_loss(loss, name: str = "loss") -> str:
    """loss if it is one of LOSSES, else ValueError naming the argument."""
    if not isinstance(loss, str) or loss not in LOSSES:
        raise ValueError(f"{name}: expected one of {LOSSES}, got {loss!r}")
    return loss


def _pointwise(loss: str, error: torch.Tensor) -> torch.Tensor:
    if loss == "l1":
        return error.abs()
    if loss == "charbonnier":
        return (error.square() + CHARBONNIER_EPS ** 2).sqrt() - CHARBONNIER_EPS
    check_loss(loss)  # raises for a name that is not one of LOSSES: the one left is "mse"
    return error.square()


def task_losses(loss: str, out: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                ) -> torch.Tensor:
    """The loss of each task (differentiable): out, target [T, ...] -> [T], the
    mean over all values of a task, or with mask ([T, N, 1, h, w] for out
    [T, N, C, h, w], 1 where a pixel counts) over the pixels it keeps."""
    if mask is None:
        if out.dim() == 5 and out.shape[1] == 1:  # one image per task: reduced as [T, C, h, w]
            out, target = out[:, 0], target[:, 0]
        return _pointwise(loss, out - target).flatten(1).mean(1)
    values = _pointwise(loss, out - target)
    return (values * mask).flatten(1).sum(1) / (mask.flatten(1).sum(1) * out.shape[2])


def loss_and_gradient(loss: str, out: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """One task's loss (as task_losses) and its gradient with respect to out,
    in autograd's order of products. out, target [N, C, h, w], mask
    [N, 1, h, w] or None -> (loss [], gradient [N, C, h, w])."""
    error = out - target
    values = _pointwise(loss, error)
    if loss == "l1":
        slope = error.sign_()
    elif loss == "charbonnier":
        slope = error.div_(values + CHARBONNIER_EPS)
    else:
        slope = error.mul_(2)
    if mask is None:
        return values.mean(), slope.div_(slope.numel())
    count = mask.sum() * out.shape[1]
    return (values * mask).sum() / count, (1 / count) * mask * slope
