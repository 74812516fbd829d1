"""Data parallel: 2 CPU processes (gloo) sharing a meta-batch give the
meta-gradient of one process with the whole meta-batch; an error of rank 0
stops rank 1 too."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mzsr_fast.train import MetaLearner, Pretrainer, metatrain
from mzsr_fast.train.checkpoints import load_weights
from mzsr_fast.train.lock import RunLock
from train_helpers import distributed_work, in_process_group, locked_folder_work, tiny_meta, tiny_pretrain

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def test_two_processes_match_one(image_dir, tmp_path):
    mp.spawn(in_process_group, args=(2, str(tmp_path / "init"), distributed_work, str(image_dir), str(tmp_path)),
             nprocs=2, join=True)
    parallel = torch.load(tmp_path / "rank0.pt", weights_only=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for tasks in (4, 3):  # 2 + 2 tasks, and an uneven 2 + 1
            learner = MetaLearner(tiny_meta(image_dir, tmp_path / "single", meta_batch=tasks, inner_lr=0.05))
            stats = learner.compute_gradients(learner.batch(0), 0)
            for ours, theirs in zip(learner.model.parameters(), parallel[f"meta{tasks}"]):
                torch.testing.assert_close(theirs, ours.grad, rtol=1e-4, atol=1e-7)
            torch.testing.assert_close(parallel[f"meta{tasks}_loss"], stats["loss"], rtol=1e-5, atol=1e-8)
        trainer = Pretrainer(tiny_pretrain(image_dir, tmp_path / "single", batch_size=4))
        trainer.train_step(trainer.batch(0), 0)
        for ours, theirs in zip(trainer.model.parameters(), parallel["pretrain"]):
            torch.testing.assert_close(theirs, ours.grad, rtol=1e-4, atol=1e-7)
        # the whole loop: only rank 0 wrote, and the weights match a 1-process run
        assert parallel["run_step"] == 2
        single = metatrain(tiny_meta(image_dir, tmp_path / "single_run", meta_batch=4, iterations=2))
        a, b = load_weights(single.latest), load_weights(tmp_path / "run" / "latest.safetensors")
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6)
        assert not any(name.startswith(".tmp-") for name in os.listdir(tmp_path / "run" / "checkpoints"))
    finally:
        torch.set_num_threads(threads)


def test_a_folder_in_use_stops_every_rank(image_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with RunLock(run):  # rank 0 is refused; rank 1 must not wait for it forever
        mp.spawn(in_process_group, args=(2, str(tmp_path / "init"), locked_folder_work, str(image_dir), str(run)),
                 nprocs=2, join=True)
    assert (run / "rank0.txt").read_text().startswith(f"RunLockedError: --out: {run} is in use by another "
                                                      f"training process (pid {os.getpid()} on ")
    assert (run / "rank1.txt").read_text() == "RuntimeError: rank 1: stopping because rank 0 failed (its error " \
                                              "is on its stderr)"
