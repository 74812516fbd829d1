"""Checkpoint files: atomic writes, keeping the last N, verification (the
weights' and the state's SHA-256), RNG state, and a process killed (SIGKILL) in
the middle of a checkpoint write."""
import os
import random
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

from mzsr_fast.model import MZSRNet
from mzsr_fast.train import checkpoints
from mzsr_fast.train.checkpoints import (CheckpointManager, atomic_write, load_weights, read_state, rng_state,
                                         set_rng_state)
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
    assert read_state(manager.list()[0].state_path)["step"] == 7


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


def _adam_like_state(seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {"kind": "test", "optimizer": {"state": {0: {"step": torch.tensor(3.0),
                                                        "exp_avg": torch.randn(4096, generator=gen)}}}}


def test_every_flipped_byte_of_a_state_file_is_refused(tmp_path):
    manager = CheckpointManager(tmp_path, keep=0)
    manager.save(1, MZSRNet().state_dict(), _adam_like_state(1))
    path = manager.list()[0].state_path
    original = open(path, "rb").read()
    exp_avg = read_state(path)["optimizer"]["state"][0]["exp_avg"]
    # torch.load alone returns an altered moment for a bit flipped inside it; the checksum catches it
    inside = original.find(exp_avg[:16].numpy().tobytes()) + 9
    positions = sorted({inside, *range(0, len(original), max(1, len(original) // 64)), len(original) - 1})
    for position in positions:
        damaged = bytearray(original)
        damaged[position] ^= 0x10
        with open(path, "wb") as f:
            f.write(damaged)
        with pytest.raises(ValueError, match=f"{path}: (unreadable checkpoint state|checkpoint state does not match "
                                             f"its SHA-256)"):
            read_state(path)
    with open(path, "wb") as f:
        damaged = bytearray(original)
        damaged[inside] ^= 0x10
        f.write(damaged)
    with pytest.raises(ValueError, match="does not match its SHA-256"):
        read_state(path)


def test_a_damaged_state_falls_back_to_the_previous_checkpoint(tmp_path):
    manager = CheckpointManager(tmp_path, keep=0)
    for step in (1, 2):
        manager.save(step, MZSRNet().state_dict(), _adam_like_state(step))
    checkpoints = manager.list()
    for checkpoint in reversed(checkpoints):  # the newest first, then the only one left
        data = bytearray(open(checkpoint.state_path, "rb").read())
        moment = read_state(checkpoint.state_path)["optimizer"]["state"][0]["exp_avg"]
        data[data.find(moment[:16].numpy().tobytes()) + 5] ^= 0x01
        with open(checkpoint.state_path, "wb") as f:
            f.write(data)
        if checkpoint.step == 2:
            with pytest.warns(UserWarning, match="skipping a broken checkpoint: .*step-00000002.state.pt: "
                                                 "checkpoint state does not match its SHA-256"):
                found, _, state = CheckpointManager(tmp_path).latest()
            assert found.step == 1 and torch.equal(state["optimizer"]["state"][0]["exp_avg"],
                                                   _adam_like_state(1)["optimizer"]["state"][0]["exp_avg"])
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"none of its 2 checkpoint\(s\) can be read "
                                                                    r"\(.*SHA-256.*SHA-256"):
        CheckpointManager(tmp_path).latest()


def test_a_state_written_before_state_checksums_loads_with_a_warning(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save(4, MZSRNet().state_dict(), _adam_like_state(4))
    path = manager.list()[0].state_path
    torch.save(dict(read_state(path), format=1), path)  # what the trainers wrote before: the bare state dict
    with pytest.warns(UserWarning, match="format 1, written before state files carried their SHA-256"):
        checkpoint, _, state = CheckpointManager(tmp_path).latest()
    assert checkpoint.step == 4 and state["format"] == 1


@pytest.mark.parametrize("run", ["pretrain_x2"])
def test_the_committed_runs_of_format_1_still_load(run):
    folder = os.path.join(os.path.dirname(__file__), "..", "..", "training", run)
    with pytest.warns(UserWarning, match="format 1"):
        checkpoint, _, state = CheckpointManager(folder).latest()
    assert state["step"] == checkpoint.step and "optimizer" in state


@pytest.mark.parametrize("run", ["metaref_multiscale_lr", "metaref_direct_x2_1step", "metaref_bicubic_x2_1step",
                                 "metaref_direct_x4_lr", "metaref_direct_x2_1step_sched",
                                 "metaref_direct_x2_1step_charb", "metaref_bicubic_x2_1step_charb"])
def test_the_committed_runs_of_format_2_load_verified(run):
    folder = os.path.join(os.path.dirname(__file__), "..", "..", "training", run)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback: the state's SHA-256 is checked
        checkpoint, _, state = CheckpointManager(folder).latest()
    assert state["step"] == checkpoint.step and state["format"] == 2 and "optimizer" in state
