"""Helpers of the trainer tests: synthetic images and tiny settings.

The tiny settings train on the CPU (device="cpu") unless a test passes
another device: the trainer's default is CUDA when present, and the bitwise
comparisons (stop/resume, 1 vs 2 processes) would then depend on cuDNN's
algorithm choice and TF32. Tests that do run on CUDA use the
deterministic_cuda fixture (tests/train/conftest.py)."""
from __future__ import annotations

import numpy as np

from mzsr_fast.train import MetatrainConfig, PretrainConfig


def textured(h: int, w: int, seed: int, noise: float = 25.0) -> np.ndarray:
    """A uint8 [h, w, 3] image with edges and texture (passes the flatness test)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(x / (2 + seed % 3)) * np.cos(y / 3.0) + 40 * ((x + 2 * y) % 16 < 8)
    image = base[..., None] + rng.normal(0, noise, (h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def tiny_pretrain(data_dir, out, **overrides) -> PretrainConfig:
    settings = dict(data_dir=str(data_dir), out=str(out), iterations=4, patch_size=16, batch_size=4, lr=1e-3,
                    log_every=1, checkpoint_every=2, progress=False, prefetch=2, threads=1, device="cpu")
    settings.update(overrides)
    return PretrainConfig(**settings)


def tiny_meta(data_dir, out, **overrides) -> MetatrainConfig:
    settings = dict(data_dir=str(data_dir), out=str(out), iterations=3, meta_batch=2, task_batch=2,
                    patch_size=16, inner_steps=2, meta_lr=1e-3, log_every=1, checkpoint_every=2,
                    progress=False, prefetch=2, threads=1, device="cpu")
    settings.update(overrides)
    return MetatrainConfig(**settings)


def in_process_group(rank: int, world_size: int, init_file: str, work, *args) -> None:
    """One process of a gloo test, started by torch.multiprocessing.spawn:
    joins the group, runs work(rank, info, *args) (info: distributed.setup's
    Distributed) and shuts down deterministically.

    Shutdown: all ranks meet at a barrier (no collective in flight) and
    destroy the group, then leave with os._exit(0), without the
    interpreter's own shutdown. Once torch._dynamo is imported (Adam's step
    imports it), the gloo group outlives destroy_process_group, its threads
    still running, and tearing them down at interpreter exit once aborted a
    rank ("terminate called without an active exception"). An error leaves
    the normal way, so that spawn reports it.
    """
    import os
    import sys

    import torch
    import torch.distributed as dist

    from mzsr_fast.train import distributed

    torch.set_num_threads(1)
    os.environ.update(WORLD_SIZE=str(world_size), RANK=str(rank), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        info = distributed.setup("cpu")
        assert info.world_size == world_size and info.rank == rank
        work(rank, info, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def distributed_work(rank: int, info, data_dir: str, out_dir: str) -> None:
    """The work of each rank of the 2-process test: the meta-gradient of
    iteration 0 for a meta-batch of 4 (2 tasks per rank) and of 3 (2 + 1), a
    pretraining gradient for a batch of 4, and a 2-iteration meta-training run
    through the whole loop; rank 0 saves them."""
    import os

    import torch

    from mzsr_fast.train import MetaLearner, Pretrainer, metatrain

    results = {}
    for tasks in (4, 3):
        learner = MetaLearner(tiny_meta(data_dir, out_dir, meta_batch=tasks, inner_lr=0.05), info)
        stats = learner.compute_gradients(learner.batch(0), 0)
        results[f"meta{tasks}"] = [p.grad.clone() for p in learner.model.parameters()]
        results[f"meta{tasks}_loss"] = info.sum(stats["loss"])
    trainer = Pretrainer(tiny_pretrain(data_dir, out_dir, batch_size=4), info)
    trainer.train_step(trainer.batch(0), 0)
    results["pretrain"] = [p.grad.clone() for p in trainer.model.parameters()]
    result = metatrain(tiny_meta(data_dir, os.path.join(out_dir, "run"), meta_batch=4, iterations=2))
    results["run_step"] = result.step
    if rank == 0:
        torch.save(results, os.path.join(out_dir, "rank0.pt"))


def locked_folder_work(rank: int, info, data_dir: str, out_dir: str) -> None:
    """Each rank tries a run in out_dir, which the test holds locked, and
    writes the error it got to out_dir/rank<rank>.txt."""
    import os

    from mzsr_fast.train import metatrain

    try:
        metatrain(tiny_meta(data_dir, out_dir, meta_batch=2, iterations=1))
        outcome = "no error"
    except Exception as error:  # noqa: BLE001  (what each rank got is the result)
        outcome = f"{type(error).__name__}: {error}"
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write(outcome)
