"""One training process per run folder: a second one is refused, naming the
holder; the lock of a killed process does not block --resume."""
import os
import subprocess
import sys
import textwrap

import pytest

from mzsr_fast.cli import main
from mzsr_fast.train import RunLockedError, metatrain, pretrain
from mzsr_fast.train.checkpoints import CheckpointManager
from mzsr_fast.train.lock import RunLock
from train_helpers import tiny_meta, tiny_pretrain


def test_a_second_run_in_the_same_folder_is_refused_while_the_first_runs(image_dir, tmp_path):
    refusals = []

    def start_another(step, run):
        if step == 1:
            with pytest.raises(RunLockedError) as error:
                pretrain(tiny_pretrain(image_dir, tmp_path, iterations=2))
            refusals.append(str(error.value))

    result = metatrain(tiny_meta(image_dir, tmp_path, iterations=2), on_step=start_another)
    assert result.step == 2
    assert len(refusals) == 1
    assert f"{tmp_path} is in use by another training process (pid {os.getpid()} on " in refusals[0]
    # only the first run wrote: its checkpoint, and a log of its own columns
    assert [c.step for c in CheckpointManager(tmp_path).list()] == [2]
    assert (tmp_path / "log.csv").read_text().startswith("step,time_s,it_per_s,meta_lr,")
    # released at the end: the folder can be resumed in the same process
    assert metatrain(tiny_meta(image_dir, tmp_path, iterations=3, resume=True)).step == 3


def test_lock_is_exclusive_between_open_files_and_released_on_exit(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
            RunLock(tmp_path).acquire()
    with RunLock(tmp_path):  # released, and the stale file does not matter
        pass


HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {helpers!r})
    from mzsr_fast.train import pretrain
    from train_helpers import tiny_pretrain

    def hold(step, run):
        if step == 3:  # the checkpoint of iteration 2 is saved
            print("training", flush=True)
            time.sleep(600)

    pretrain(tiny_pretrain({data!r}, {out!r}, iterations=4), on_step=hold)
""")


def test_cli_refuses_a_folder_in_use_and_resumes_after_the_holder_was_killed(image_dir, tmp_path, capsys):
    run = tmp_path / "run"
    script = HOLDER.format(helpers=os.path.dirname(__file__), data=str(image_dir), out=str(run))
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "training\n", holder.stderr.read()
        args = ["pretrain", str(image_dir), "--out", str(run), "--iterations", "4", "--patch-size", "16",
                "--batch-size", "4", "--lr", "1e-3", "--log-every", "1", "--checkpoint-every", "2",
                "--prefetch", "2", "--threads", "1", "--no-progress"]
        assert main(args + ["--resume"]) == 2
        err = capsys.readouterr().err
        assert f"is in use by another training process (pid {holder.pid} on " in err
        assert err.count("\n") == 1
    finally:
        holder.kill()  # SIGKILL: no clean-up; the kernel drops the lock
        holder.wait()
    assert (run / ".lock").exists()
    assert main(args + ["--resume"]) == 0
    assert [c.step for c in CheckpointManager(run).list()] == [2, 4]
