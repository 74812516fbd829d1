"""Checkpoint files: atomic writes, keeping the last N, verification, RNG state,
and a process killed (SIGKILL) in the middle of a checkpoint write."""
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from mzsr_fast.model import MZSRNet
from mzsr_fast.train import checkpoints
from mzsr_fast.train.checkpoints import CheckpointManager, atomic_write, load_weights, rng_state, set_rng_state
from mzsr_fast.train.pretrain import pretrain
from train_helpers import tiny_pretrain


def test_atomic_write_failing_before_the_rename_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write(target, b"old")

    def die(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(checkpoints.os, "replace", die)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write(target, b"new content")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]  # the temporary file was removed


def test_manager_keeps_the_last_n_and_verifies(tmp_path):
    manager = CheckpointManager(tmp_path, keep=2)
    net = MZSRNet()
    for step in (1, 2, 3):
        with torch.no_grad():
            net.layers[0].bias.fill_(step)
        manager.save(step, net.state_dict(), {"kind": "test"})
    assert [c.step for c in manager.list()] == [2, 3]
    checkpoint, weights, state = manager.latest()
    assert checkpoint.step == 3 and state["step"] == 3 and float(weights["layers.0.bias"][0]) == 3
    assert torch.equal(load_weights(tmp_path / "latest.safetensors")["layers.0.bias"], weights["layers.0.bias"])
    # weights that do not match their state: that checkpoint is skipped with a warning
    with open(manager.list()[-1].weights_path, "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\0\0\0\0")
    with pytest.warns(UserWarning, match="SHA-256"):
        assert manager.latest()[0].step == 2


def test_latest_safetensors_loads_without_pickle(tmp_path):
    from safetensors.torch import load_file
    manager = CheckpointManager(tmp_path, keep=1)
    net = MZSRNet()
    manager.save(7, net.state_dict(), {}, metadata={"kind": "direct_x2"})
    fresh = MZSRNet()
    fresh.load_state_dict(load_file(str(tmp_path / "latest.safetensors")))
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), net.state_dict().values()))
    state = torch.load(manager.list()[0].state_path, weights_only=True)
    assert state["step"] == 7


def test_rng_state_round_trip():
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    saved = rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(5), random.random()
    set_rng_state(saved)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_clean_removes_leftovers_of_interrupted_writes(tmp_path):
    manager = CheckpointManager(tmp_path, keep=3)
    manager.save(2, MZSRNet().state_dict(), {})
    (tmp_path / "checkpoints" / ".tmp-abc").write_bytes(b"partial")
    (tmp_path / "checkpoints" / "step-00000004.safetensors").write_bytes(b"weights without a state")
    manager.clean()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step-00000002.safetensors", "step-00000002.state.pt"]


KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {helpers!r})
    from mzsr_fast.train import checkpoints
    from mzsr_fast.train.pretrain import pretrain
    from train_helpers import tiny_pretrain

    real_replace = os.replace

    def replace(src, dst):
        # the state file of the second checkpoint: its temporary file is
        # written and fsync'ed; die before it is renamed into place
        if str(dst).endswith("step-00000004.state.pt"):
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)

    checkpoints.os.replace = replace
    pretrain(tiny_pretrain({data!r}, {out!r}, iterations=6))
""")


def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one_and_resumes(image_dir, tmp_path):
    run = tmp_path / "killed"
    script = KILLER.format(helpers=os.path.dirname(__file__), data=str(image_dir), out=str(run))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    folder = run / "checkpoints"
    names = sorted(os.listdir(folder))
    assert any(n.startswith(".tmp-") for n in names)            # the state that never got renamed
    assert "step-00000004.safetensors" in names                  # weights written, not committed
    manager = CheckpointManager(run)
    checkpoint, _, state = manager.latest()
    assert checkpoint.step == 2 and state["step"] == 2          # the previous checkpoint is intact
    assert torch.equal(load_weights(run / "latest.safetensors")["layers.0.weight"],
                       load_weights(checkpoint.weights_path)["layers.0.weight"])

    resumed = pretrain(tiny_pretrain(image_dir, run, iterations=6, resume=True))
    assert resumed.step == 6 and not any(n.startswith(".tmp-") for n in os.listdir(folder))
    straight = pretrain(tiny_pretrain(image_dir, tmp_path / "straight", iterations=6))
    a, b = load_weights(resumed.latest), load_weights(straight.latest)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unreadable_checkpoints_do_not_count_toward_keep(tmp_path):
    # a run resumed at 2 past newer checkpoints 4 and 6 that cannot be read
    net = MZSRNet()
    writer = CheckpointManager(tmp_path, keep=0)
    for step in (2, 4, 6):
        writer.save(step, net.state_dict(), {})
    for step in (4, 6):
        (tmp_path / "checkpoints" / f"step-{step:08d}.state.pt").write_bytes(b"truncated")
    manager = CheckpointManager(tmp_path, keep=2)
    manager.save(3, net.state_dict(), {})
    assert [c.step for c in manager.list()] == [2, 3, 4, 6]  # two good ones kept, the broken ones left
    manager.save(5, net.state_dict(), {})
    assert [c.step for c in manager.list()] == [3, 4, 5, 6]
    manager.save(6, net.state_dict(), {})  # rewrites the broken 6; the broken 4 is older than the kept two
    assert [c.step for c in manager.list()] == [5, 6]


def test_latest_refuses_when_no_checkpoint_can_be_read(tmp_path):
    manager = CheckpointManager(tmp_path)
    assert manager.latest() is None  # no checkpoint at all
    manager.save(1, MZSRNet().state_dict(), {})
    (tmp_path / "checkpoints" / "step-00000001.safetensors").unlink()
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="none of its 1 checkpoint"):
        manager.latest()
