"""Resuming: bitwise the same weights as an uninterrupted run (CPU, and CUDA
with deterministic cuDNN and no TF32), stop signals, changed settings
refused, the log kept consistent."""
import csv
import os
import shutil
import signal

import pytest
import torch

from mzsr_fast.cli import main
from mzsr_fast.train import ConfigMismatchError, metatrain, pretrain
from mzsr_fast.train.checkpoints import CheckpointManager, load_weights, read_state
from train_helpers import tiny_meta, tiny_pretrain


def same_weights(a, b) -> bool:
    wa, wb = load_weights(a), load_weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_pretrain_stopped_and_resumed_is_bitwise_the_uninterrupted_run(image_dir, tmp_path):
    straight = pretrain(tiny_pretrain(image_dir, tmp_path / "straight", iterations=4))
    half = pretrain(tiny_pretrain(image_dir, tmp_path / "split", iterations=2))
    assert half.step == 2
    resumed = pretrain(tiny_pretrain(image_dir, tmp_path / "split", iterations=4, resume=True))
    assert resumed.step == 4
    assert same_weights(straight.latest, resumed.latest)
    state_a = read_state(CheckpointManager(tmp_path / "straight").list()[-1].state_path)
    state_b = read_state(CheckpointManager(tmp_path / "split").list()[-1].state_path)
    exp_avg = [s["exp_avg"] for s in state_a["optimizer"]["state"].values()]
    assert all(torch.equal(x, s["exp_avg"]) for x, s in zip(exp_avg, state_b["optimizer"]["state"].values()))


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_metatrain_stopped_by_a_signal_and_resumed_is_bitwise_the_uninterrupted_run(image_dir, tmp_path, device,
                                                                                    request):
    if device == "cuda":
        request.getfixturevalue("deterministic_cuda")  # skips without a GPU
    # learnable inner rates and a switch from first to second order inside the run
    settings = dict(iterations=3, learn_inner_lr=True, first_order_until=2, checkpoint_every=0, device=device)
    straight = metatrain(tiny_meta(image_dir, tmp_path / "straight", **settings))

    def interrupt(step, run):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: the loop checkpoints and returns

    stopped = metatrain(tiny_meta(image_dir, tmp_path / "split", **settings), on_step=interrupt)
    assert stopped.interrupted and stopped.step == 1
    assert [c.step for c in CheckpointManager(tmp_path / "split").list()] == [1]
    resumed = metatrain(tiny_meta(image_dir, tmp_path / "split", resume=True, **settings))
    assert resumed.step == 3 and not resumed.interrupted
    assert same_weights(straight.latest, resumed.latest)
    assert same_weights(tmp_path / "straight" / "inner_lr.safetensors", tmp_path / "split" / "inner_lr.safetensors")
    # the log holds each iteration once, with the order switch at iteration 3 (0-based step 2)
    with open(tmp_path / "split" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert [r["order"] for r in rows] == ["1", "1", "2"]


def test_resume_refuses_a_changed_setting(image_dir, tmp_path):
    metatrain(tiny_meta(image_dir, tmp_path, iterations=1))
    with pytest.raises(ConfigMismatchError) as error:
        metatrain(tiny_meta(image_dir, tmp_path, iterations=2, resume=True, order=1, inner_lr=0.02))
    message = str(error.value)
    assert "order: 2 -> 1" in message and "inner_lr: 0.01 -> 0.02" in message
    assert "--allow-config-change" in message
    assert [c.step for c in CheckpointManager(tmp_path).list()] == [1]  # nothing was written


def test_a_resume_already_past_its_iterations_says_so(image_dir, tmp_path, capsys):
    metatrain(tiny_meta(image_dir, tmp_path, iterations=2))
    capsys.readouterr()
    assert metatrain(tiny_meta(image_dir, tmp_path, iterations=1, resume=True)).step == 2
    assert "is at iteration 2, at or past --iterations 1: nothing to train" in capsys.readouterr().err


def test_a_resume_that_fails_leaves_config_json_as_it_was(image_dir, tmp_path):
    """An allowed change that the checkpoint cannot take (learnable rates of
    another shape) fails without rewriting config.json."""
    import json

    metatrain(tiny_meta(image_dir, tmp_path, iterations=1, inner_steps=1, learn_inner_lr=True))
    before = (tmp_path / "config.json").read_text()
    with pytest.raises(ValueError, match="no learnable inner rates of shape"):
        metatrain(tiny_meta(image_dir, tmp_path, iterations=2, inner_steps=2, learn_inner_lr=True, resume=True,
                            allow_config_change=True))
    assert (tmp_path / "config.json").read_text() == before and json.loads(before)["inner_steps"] == 1


def test_an_allowed_change_of_the_meta_rate_takes_effect(image_dir, tmp_path):
    """The optimiser's saved state holds the rate it ran at; a resume with a
    new meta_lr steps at the new one (and logs it): two runs resumed from one
    checkpoint with different rates part, one with the saved rate matches the
    uninterrupted run."""
    settings = dict(learn_inner_lr=True, checkpoint_every=1)
    metatrain(tiny_meta(image_dir, tmp_path / "whole", iterations=2, **settings))
    for name in ("same", "faster"):
        metatrain(tiny_meta(image_dir, tmp_path / name, iterations=1, **settings))
    metatrain(tiny_meta(image_dir, tmp_path / "same", iterations=2, resume=True, **settings))
    metatrain(tiny_meta(image_dir, tmp_path / "faster", iterations=2, resume=True, allow_config_change=True,
                        **{**settings, "meta_lr": 1e-2}))
    whole, same, faster = (load_weights(tmp_path / name / "latest.safetensors") for name in ("whole", "same", "faster"))
    assert all(torch.equal(whole[k], same[k]) for k in whole)
    step = {k: (faster[k] - same[k]).abs().max() for k in whole}
    first = {k: (same[k] - load_weights(tmp_path / "faster" / "checkpoints" / "step-00000001.safetensors")[k])
             .abs().max() for k in whole}
    assert all(step[k] > 5 * first[k] for k in whole if first[k] > 0)  # Adam moves each weight by about the rate
    with open(tmp_path / "faster" / "log.csv") as f:
        assert [row["meta_lr"] for row in csv.DictReader(f)] == ["0.001", "0.01"]


def test_resume_refusal_through_the_cli_and_allowing_it(image_dir, tmp_path, capsys):
    base = ["pretrain", str(image_dir), "--out", str(tmp_path), "--patch-size", "16", "--batch-size", "2",
            "--threads", "1", "--no-progress"]
    assert main(base + ["--iterations", "1"]) == 0
    assert main(base + ["--iterations", "2", "--resume", "--lr", "1e-3"]) == 2
    err = capsys.readouterr().err
    assert "lr: 0.0004 -> 0.001" in err and "--allow-config-change" in err
    assert main(base + ["--iterations", "2", "--resume", "--lr", "1e-3", "--allow-config-change"]) == 0
    assert "with a changed setting: lr: 0.0004 -> 0.001" in capsys.readouterr().err
    assert [c.step for c in CheckpointManager(tmp_path).list()][-1] == 2


def test_an_existing_run_is_not_overwritten_without_resume(image_dir, tmp_path):
    pretrain(tiny_pretrain(image_dir, tmp_path, iterations=1))
    with pytest.raises(ValueError, match="already holds a pretrain run at iteration 1; pass --resume"):
        pretrain(tiny_pretrain(image_dir, tmp_path, iterations=2))


def test_resume_of_another_kind_of_run_is_refused(image_dir, tmp_path):
    pretrain(tiny_pretrain(image_dir, tmp_path, iterations=1))
    with pytest.raises(ConfigMismatchError, match="holds a 'pretrain' run"):
        metatrain(tiny_meta(image_dir, tmp_path, iterations=2, resume=True))


PRETRAIN_CLI = ["--patch-size", "16", "--batch-size", "2", "--threads", "1", "--no-progress", "--checkpoint-every",
                "1"]


def test_resume_without_a_checkpoint_is_refused_unless_resume_or_start(image_dir, tmp_path, capsys):
    base = ["pretrain", str(image_dir), "--out", str(tmp_path), *PRETRAIN_CLI]
    assert main(base + ["--iterations", "1", "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"--resume: {tmp_path} has no checkpoint to resume from; pass --resume-or-start" in err
    assert not (tmp_path / "checkpoints").exists()
    assert main(base + ["--iterations", "1", "--resume-or-start"]) == 0  # a new run
    assert main(base + ["--iterations", "2", "--resume-or-start"]) == 0  # continued
    assert [c.step for c in CheckpointManager(tmp_path).list()] == [1, 2]
    assert main(base + ["--iterations", "3", "--resume", "--resume-or-start"]) == 2  # one or the other
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_run_whose_checkpoints_are_all_unreadable_is_neither_resumed_nor_restarted(image_dir, tmp_path, capsys):
    base = ["pretrain", str(image_dir), "--out", str(tmp_path), *PRETRAIN_CLI]
    assert main(base + ["--iterations", "2"]) == 0
    checkpoints = CheckpointManager(tmp_path).list()
    for checkpoint in checkpoints:
        with open(checkpoint.state_path, "wb") as f:
            f.write(b"not a state file")
    capsys.readouterr()
    for flags in (["--resume"], ["--resume-or-start"], []):
        with pytest.warns(UserWarning, match="skipping a broken checkpoint"):
            assert main(base + ["--iterations", "3", *flags]) == 2, flags
        err = capsys.readouterr().err
        assert f"{tmp_path / 'checkpoints'}: none of its 2 checkpoint(s) can be read" in err
        assert all(c.state_path in err for c in checkpoints) and "Move them away" in err
    assert [c.step for c in CheckpointManager(tmp_path).list()] == [1, 2]  # nothing deleted or written


def _flip_a_bit_of_adams_moment(checkpoint) -> None:
    """Flip one bit inside the first exp_avg tensor of checkpoint's state file:
    torch.load alone would return the altered moment without complaint."""
    moment = next(iter(read_state(checkpoint.state_path)["optimizer"]["state"].values()))["exp_avg"]
    data = bytearray(open(checkpoint.state_path, "rb").read())
    position = data.find(bytes(moment.untyped_storage().tolist()[:64]))  # its bytes as stored
    assert position > 0
    data[position + 6] ^= 0x01
    with open(checkpoint.state_path, "wb") as f:
        f.write(data)


def test_resume_refuses_a_state_file_with_a_flipped_byte_and_falls_back(image_dir, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["pretrain", str(image_dir), "--out", str(run), *PRETRAIN_CLI]
    assert main(base + ["--iterations", "2"]) == 0
    first, second = CheckpointManager(run).list()
    _flip_a_bit_of_adams_moment(second)
    with pytest.warns(UserWarning, match=f"skipping a broken checkpoint: {second.state_path}: checkpoint state "
                                         f"does not match its SHA-256"):
        assert main(base + ["--iterations", "3", "--resume"]) == 0  # resumed at 1: iterations 2 and 3 again
    straight = ["pretrain", str(image_dir), "--out", str(tmp_path / "straight"), *PRETRAIN_CLI]
    assert main(straight + ["--iterations", "3"]) == 0
    assert same_weights(tmp_path / "straight" / "latest.safetensors", run / "latest.safetensors")  # as if undamaged

    for checkpoint in CheckpointManager(run).list():  # now every one of them
        _flip_a_bit_of_adams_moment(checkpoint)
    capsys.readouterr()
    with pytest.warns(UserWarning, match="skipping a broken checkpoint"):
        assert main(base + ["--iterations", "4", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mzsr-fast pretrain: error: {run / 'checkpoints'}: none of its 3 checkpoint(s) "
                          f"can be read") and err.count("does not match its SHA-256") == 3
    assert "\n" not in err


def test_a_log_that_is_not_utf8_is_kept_aside_on_resume(image_dir, tmp_path):
    pretrain(tiny_pretrain(image_dir, tmp_path, iterations=2))
    garbage = b"step,loss\n1,\xff\xfe\x00\n"
    (tmp_path / "log.csv").write_bytes(garbage)
    with pytest.warns(UserWarning, match=f"{tmp_path / 'log.csv'}: not a readable UTF-8 CSV log") as record:
        assert pretrain(tiny_pretrain(image_dir, tmp_path, iterations=3, resume=True)).step == 3
    assert str(tmp_path / "log.unreadable-2.csv") in str(record[0].message)
    assert (tmp_path / "log.unreadable-2.csv").read_bytes() == garbage
    with open(tmp_path / "log.csv", encoding="utf-8") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [3]


def test_damaged_rows_of_the_log_are_dropped_on_resume(image_dir, tmp_path):
    pretrain(tiny_pretrain(image_dir, tmp_path, iterations=2))
    with open(tmp_path / "log.csv", encoding="utf-8") as f:
        lines = f.read().splitlines()
    lines[1:1] = ["\u00b2" + lines[1][1:], "x" + lines[1][1:], ""]  # step "²" (isdigit, not an int), "x1"
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert pretrain(tiny_pretrain(image_dir, tmp_path, iterations=3, resume=True)).step == 3
    with open(tmp_path / "log.csv", encoding="utf-8") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3]


def test_a_setting_newer_than_the_saved_run_counts_as_its_default():
    """Runs saved before a setting existed (holdout, val_crop) resume without
    --allow-config-change when the setting keeps its default."""
    from mzsr_fast.train import MetatrainConfig
    from mzsr_fast.train.settings import config_dict, config_differences, field_defaults

    config = MetatrainConfig("data", out="run")
    saved = {k: v for k, v in config_dict(config).items() if k != "holdout"}
    assert config_differences(saved, config_dict(config), defaults=field_defaults(config)) == []
    config.holdout = 5
    assert config_differences(saved, config_dict(config), defaults=field_defaults(config)) == ["holdout: 0 -> 5"]


def test_a_committed_run_resumes_elsewhere_without_its_init_file(image_dir, tmp_path, capsys):
    """A run moved to another folder (a fresh clone) whose --init file is gone
    resumes from its checkpoint with its card's command, with or without --init."""
    init = tmp_path / "init.safetensors"
    pretrain(tiny_pretrain(image_dir, tmp_path / "pre", iterations=1))
    os.replace(tmp_path / "pre" / "latest.safetensors", init)
    base = ["metatrain", str(image_dir), "--patch-size", "16", "--meta-batch", "2", "--task-batch", "2",
            "--inner-steps", "2", "--threads", "1", "--no-progress", "--device", "cpu", "--checkpoint-every", "1"]
    first = tmp_path / "first"
    assert main(base + ["--out", str(first), "--init", str(init), "--iterations", "1"]) == 0
    moved = tmp_path / "clone" / "run"
    shutil.copytree(first, moved)
    init.unlink()
    # the recorded --init path no longer exists: not loaded, not a changed setting
    assert main(base + ["--out", str(moved), "--init", str(init), "--iterations", "2", "--resume-or-start"]) == 0
    assert main(base + ["--out", str(moved), "--iterations", "3", "--resume"]) == 0
    assert "changed setting" not in capsys.readouterr().err
    assert [c.step for c in CheckpointManager(moved).list()][-1] == 3
    # starting a new run still needs the init weights
    assert main(base + ["--out", str(tmp_path / "new"), "--iterations", "1", "--resume-or-start"]) == 2
    assert "--init: " in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "new"), "--iterations", "1"]) == 2
