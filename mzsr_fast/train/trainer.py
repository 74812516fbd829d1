"""What both trainers (pretrain.Pretrainer, metatrain.MetaLearner) set up
alike: checked settings, the device of this process, the global batch shared
by the processes, the image bank and patch sampler, and the model, loaded
from config.init or initialised from config.seed. What each trains, and how,
stays in its own module; run.train drives both through the interface listed
in run's docstring.
"""
from __future__ import annotations

import warnings

import torch

from ..model import MZSRNet
from . import distributed
from .checkpoints import load_into, resolve_weights
from .data import ImageBank, PatchSampler, holdout_paths
from .precision import cpu_has_native_bf16

__all__ = ["Trainer"]


class Trainer:
    """The common start of a trainer.

    batch_field names the config field of the global batch (shared by the
    processes) and batch_unit what it counts, for the error message. Sets
    config, dist, device, pin, shard (this rank's [start, stop) of the global
    batch), bank, sampler and model (on the CPU: the trainer moves it to
    device, in the memory format it wants).
    """

    def __init__(self, config, dist: distributed.Distributed | None, bank: ImageBank | None, *,
                 batch_field: str, batch_unit: str):
        self.config = config.check()
        self.dist = dist or distributed.Distributed()
        self.device = self.dist.device
        self.pin = self.device.type == "cuda"  # batches pinned for CUDA copies
        if config.amp and self.device.type == "cpu" and cpu_has_native_bf16() is False:
            warnings.warn("amp: this CPU has no native bf16 (no AVX512-BF16 or AMX): bf16 convolutions may "
                          "run slower than fp32 here", UserWarning, stacklevel=2)
        batch = getattr(config, batch_field)
        if batch < self.dist.world_size:
            raise ValueError(f"{batch_field}: {batch} {batch_unit} cannot be shared by "
                             f"{self.dist.world_size} processes")
        self.shard = self.dist.shard(batch)
        init = resolve_weights(config.init) if config.init else None  # a wrong path fails before loading data
        # the held-out validation images (config.holdout) never reach the bank
        self.holdout = holdout_paths(config.data_dir, config.holdout) if config.holdout else []
        self.bank = bank if bank is not None else ImageBank(config.data_dir, config.patch_size, exclude=self.holdout)
        self.sampler = PatchSampler(self.bank, config.patch_size, config.seed, config.flat_threshold)
        self.model = MZSRNet()
        if init:
            load_into(self.model, init)
        else:
            self.model.reset_parameters(torch.Generator().manual_seed(config.seed))
