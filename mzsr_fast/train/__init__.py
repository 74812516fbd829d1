"""Training MZSR: large-scale pretraining and meta-transfer learning.

    from mzsr_fast.train import PretrainConfig, pretrain, MetatrainConfig, metatrain
    pretrain(PretrainConfig("data/train", out="runs/pre"))
    metatrain(MetatrainConfig("data/train", out="runs/meta", init="runs/pre"))

Modules: data (images, patches, tasks, prefetching), checkpoints (atomic
files, exact resume), lock (one process per run folder), run (the loop), settings (what a run is
configured with, compared on resume), signals (stop requests), precision (bf16),
trainer (the setup both trainers share), pretrain, metatrain, distributed
(torchrun), progress (bar, CSV, TensorBoard), validation (PSNR on held-out
images), cli (the subcommands).
"""
from .checkpoints import CheckpointManager, NonFiniteError
from .data import DataError, ImageBank, PatchSampler, Prefetcher
from .metatrain import MetaLearner, MetatrainConfig, metatrain
from .pretrain import Pretrainer, PretrainConfig, pretrain
from .lock import RunLockedError
from .run import TrainResult
from .settings import ConfigMismatchError

__all__ = ["PretrainConfig", "pretrain", "Pretrainer", "MetatrainConfig", "metatrain", "MetaLearner",
           "TrainResult", "ConfigMismatchError", "DataError", "ImageBank", "PatchSampler", "Prefetcher",
           "CheckpointManager", "NonFiniteError", "RunLockedError"]
