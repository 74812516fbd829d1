"""Training MZSR: large-scale pretraining and meta-transfer learning.

    from mzsr_fast.train import PretrainConfig, pretrain, MetatrainConfig, metatrain
    pretrain(PretrainConfig("data/train", out="runs/pre"))
    metatrain(MetatrainConfig("data/train", out="runs/meta", init="runs/pre"))

Modules: data (images, patches, tasks, prefetching), checkpoints (atomic
files, exact resume), lock (one process per run folder), run (the loop), settings (what a run is
configured with, compared on resume), signals (stop requests), precision (bf16),
trainer (the setup both trainers share), pretrain, metatrain, distributed
(torchrun), progress (bar, CSV, TensorBoard), validation (PSNR on held-out
images), cli (the subcommands). The names below are imported on first use
(mzsr_fast._lazy), so the command line registers its subcommands without torch.
"""
from .._lazy import lazy_package

lazy_package(__name__, names={
    "CheckpointManager": "checkpoints", "NonFiniteError": "checkpoints",
    "DataError": "data", "ImageBank": "data", "PatchSampler": "data", "Prefetcher": "data",
    "MetaLearner": "metatrain", "MetatrainConfig": "metatrain", "metatrain": "metatrain",
    "Pretrainer": "pretrain", "PretrainConfig": "pretrain", "pretrain": "pretrain",
    "RunLockedError": "lock",
    "TrainResult": "run",
    "ConfigMismatchError": "settings",
})

__all__ = ["PretrainConfig", "pretrain", "Pretrainer", "MetatrainConfig", "metatrain", "MetaLearner",
           "TrainResult", "ConfigMismatchError", "DataError", "ImageBank", "PatchSampler", "Prefetcher",
           "CheckpointManager", "NonFiniteError", "RunLockedError"]
