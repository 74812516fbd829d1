"""Data-parallel training over processes: torchrun (or any launcher that sets
RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT).

Each rank makes its own contiguous share of the global batch (tasks or
patches); every rank scales its loss by (its items / global items), so after
an all-reduce SUM of the gradients every rank holds the gradient of the mean
over the global batch (for equal shares: the average of the ranks'
gradients). gloo on CPU, NCCL on CUDA; only rank 0 writes files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Distributed", "setup", "resolve_device"]


def resolve_device(name: str | None, local_rank: int = 0) -> torch.device:
    """The training device: name ("cpu", "cuda", "cuda:1"), else CUDA when
    present, else CPU. Under torchrun "cuda" means cuda:LOCAL_RANK."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: not a device name: {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device: CUDA was asked for but no CUDA device is available")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


@dataclass
class Distributed:
    """Where this process stands: rank, world size, device; world_size 1 is a plain run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's slice [start, stop) of n global items."""
        from .data import shard
        return shard(n, self.rank, self.world_size)

    def all_reduce_gradients(self, parameters) -> None:
        """Sum the .grad of parameters over ranks, in one flat buffer."""
        if not self.active:
            return
        params = [p for p in parameters if p.grad is not None]
        if not params:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of a small tensor over ranks (a copy; unchanged when not distributed)."""
        if not self.active:
            return values
        out = values.detach().clone().to(self.device)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def any(self, *flags: bool) -> list[bool]:
        """For each flag, True on every rank when it is True on any rank (one all-reduce)."""
        if not self.active:
            return [bool(flag) for flag in flags]
        counts = self.sum(torch.tensor([1.0 if flag else 0.0 for flag in flags], device=self.device))
        return [bool(count > 0) for count in counts.tolist()]

    def on_main(self, fn):
        """fn() on rank 0, then every rank learns whether it failed, so that no
        rank waits forever for a rank 0 that stopped: rank 0 re-raises its
        error, the others raise RuntimeError. A barrier for all ranks; returns
        fn's result on rank 0, None elsewhere."""
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except Exception as caught:  # noqa: BLE001  (re-raised below, after the other ranks know)
                error = caught
        (failed,) = self.any(error is not None)
        if error is not None:
            raise error
        if failed:
            raise RuntimeError(f"rank {self.rank}: stopping because rank 0 failed (its error is on its stderr)")
        return result

    def broadcast_parameters(self, parameters) -> None:
        """Rank 0's values in every rank (same start even if a rank initialised differently)."""
        if not self.active:
            return
        for p in parameters:
            dist.broadcast(p.data, src=0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self, finished: bool = True) -> None:
        """Leave the process group that setup() joined (none when the caller
        had joined one). After a finished run every rank first meets at a
        barrier, so that no rank destroys the group while another is still
        in a collective with it."""
        if self.owns_group and dist.is_initialized():
            if finished:
                dist.barrier()
            dist.destroy_process_group()
            self.owns_group = False


def setup(device: str | None = None) -> Distributed:
    """Join the process group described by the environment (torchrun), if any.

    Without WORLD_SIZE > 1 this is a single-process run. The backend is NCCL
    for CUDA devices and gloo otherwise.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if world_size <= 1:
        return Distributed(device=resolved)
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build")
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        kwargs = {"device_id": resolved} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
        owns = True
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                       device=resolved, owns_group=owns)
