"""Large-scale (transfer) pretraining, docs/method.md section 6.

L1 loss on (bicubic-up(bicubic-down(HR)), HR) pairs of random HR patches;
Adam with lr 4e-4 halved every 100k iterations down to a floor of 1e-4;
patches of 96, batch 32, scale 2 (other scales by option).

    from mzsr_fast.train import PretrainConfig, pretrain
    result = pretrain(PretrainConfig("data/train", out="runs/pre", iterations=500_000))
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from . import distributed, validation
from .data import ImageBank, pretrain_pairs, to_unit
from .precision import autocast
from .run import TrainResult, train
from .settings import RunSettings, positive_float, positive_int
from .trainer import Trainer

__all__ = ["PretrainConfig", "pretrain", "Pretrainer", "learning_rate"]


@dataclasses.dataclass
class PretrainConfig(RunSettings):
    """Settings of a pretraining run (defaults: docs/method.md section 6)."""

    data_dir: str
    out: str
    iterations: int = 500_000
    patch_size: int = 96
    batch_size: int = 32
    scale: float = 2.0
    lr: float = 4e-4
    lr_halve_every: int = 100_000
    lr_floor: float = 1e-4
    init: str | None = None
    log_every: int = 100
    prefetch: int = 4

    def check(self) -> "PretrainConfig":
        positive_int(self, "iterations", "patch_size", "batch_size", "lr_halve_every", "log_every", "prefetch")
        self.check_run_settings()
        positive_float(self, "lr", "lr_floor", "scale")
        if self.scale <= 1:
            raise ValueError(f"scale: expected a number > 1, got {self.scale}")
        if self.validate_every and not float(self.scale).is_integer():
            raise ValueError(f"validate_every: PSNR needs an integer scale, got {self.scale}")
        if math.ceil(self.patch_size / self.scale) < 2:
            raise ValueError(f"patch_size: {self.patch_size} is too small for scale {self.scale}")
        return self


def learning_rate(step: int, base: float = 4e-4, halve_every: int = 100_000, floor: float = 1e-4) -> float:
    """The pretraining rate at (0-based) iteration step: base halved every halve_every, not below floor."""
    return max(base * 0.5 ** (step // halve_every), min(floor, base))


class Pretrainer(Trainer):
    """Model, optimiser and data of a pretraining run (the trainer interface of run.train)."""

    def __init__(self, config: PretrainConfig, dist: distributed.Distributed | None = None,
                 bank: ImageBank | None = None):
        super().__init__(config, dist, bank, batch_field="batch_size", batch_unit="patches")
        # channels_last: about 1.4x faster convolutions on CPU (oneDNN), and the usual choice on CUDA
        self.model.to(self.device, memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.columns = ["lr", "loss", "val_psnr"]
        self._val_images = None
        if config.validate_every and self.dist.is_main:  # fail before training, not at the first validation
            self._val_images = validation.load_images(config.val_dir or self.holdout, int(config.scale),
                                                      crop=config.val_crop)

    def batch(self, step: int) -> torch.Tensor:
        """This rank's uint8 HR patches [n, 3, P, P] of iteration step (a pure function of seed and step)."""
        return self.sampler.pretrain_batch(step, *self.shard)

    def lr_at(self, step: int) -> float:
        c = self.config
        return learning_rate(step, c.lr, c.lr_halve_every, c.lr_floor)

    def train_step(self, hr: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        """One Adam step on a uint8 batch; returns {"loss": this rank's share of the global mean L1}."""
        c = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        x, y = pretrain_pairs(to_unit(hr, self.device), c.scale)
        with autocast(self.device, c.amp):
            out = self.model(x.contiguous(memory_format=torch.channels_last))
        # mean over this rank's items, weighted by its share of the global batch
        loss = F.l1_loss(out.float(), y) * (hr.shape[0] / c.batch_size)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.dist.all_reduce_gradients(self.model.parameters())
        self.optimizer.step()
        return {"loss": loss.detach()}

    def row(self, step: int) -> dict:
        return {"lr": self.lr_at(step)}

    def validate(self) -> dict[str, float]:
        scale = int(self.config.scale)
        return {"val_psnr": validation.pretrain_psnr(self.model, self._val_images, scale, self.device)}

    def restore(self, weights: dict, state: dict) -> None:
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])

    def checkpoint(self):
        metadata = {"name": "pretrained", "stage": "pretrain", "scale": str(self.config.scale)}
        return {}, metadata, None


def pretrain(config: PretrainConfig, on_step=None) -> TrainResult:
    """Run (or, with config.resume, continue) pretraining in config.out.

    Returns when config.iterations are done or a stop signal arrived (then
    result.interrupted is True and a checkpoint was saved). on_step(step, run)
    is called after each iteration. Under torchrun the batch is shared by the
    processes and only rank 0 writes.
    """
    return train("pretrain", config, Pretrainer, on_step)
