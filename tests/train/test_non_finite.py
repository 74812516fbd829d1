"""Non-finite training: NaN / infinite --init weights are refused, a run whose
loss or weights stop being finite stops with an error, and no checkpoint
with a NaN or an infinity is ever written."""
import csv
import math
import re

import pytest
import torch
from safetensors.torch import save_file

from mzsr_fast.cli import main
from mzsr_fast.model import MZSRNet
from mzsr_fast.train import MetaLearner, NonFiniteError, metatrain
from mzsr_fast.train.checkpoints import CheckpointManager, first_non_finite, load_weights
from train_helpers import tiny_meta

META_CLI = ["--iterations", "2", "--meta-batch", "2", "--task-batch", "2", "--patch-size", "16", "--inner-steps",
            "1", "--threads", "1", "--no-progress"]


PRETRAIN_CLI = ["--iterations", "1", "--patch-size", "16", "--batch-size", "2", "--threads", "1", "--no-progress"]


@pytest.mark.parametrize("command, value, dtype, expected", [
    ("metatrain", math.nan, torch.float32, "NaN or infinite values"),
    ("metatrain", math.inf, torch.float32, "NaN or infinite values"),
    ("metatrain", 1, torch.int32, "torch.int32 values"),
    ("pretrain", math.nan, torch.float32, "NaN or infinite values"),
])
def test_init_weights_that_are_not_finite_floats_are_refused(image_dir, tmp_path, capsys, command, value, dtype,
                                                             expected):
    init = tmp_path / "init.safetensors"
    save_file({k: torch.full_like(v, value, dtype=dtype) for k, v in MZSRNet().state_dict().items()}, str(init))
    options = META_CLI if command == "metatrain" else PRETRAIN_CLI
    assert main([command, str(image_dir), "--init", str(init), "--out", str(tmp_path / "run"), *options]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"error: {re.escape(str(init))}: layers\.\d+\.(weight|bias) holds {expected}", err)
    assert err.count("\n") == 1
    assert not (tmp_path / "run" / "checkpoints").exists()


def poison_after(monkeypatch, step: int, value: float) -> None:
    """MetaLearner.train_step fills the first layer's weights with value after iteration step (0-based)."""
    train_step = MetaLearner.train_step

    def poisoned(self, batch, i):
        stats = train_step(self, batch, i)
        if i == step:
            with torch.no_grad():
                self.model.layers[0].weight.fill_(value)
        return stats

    monkeypatch.setattr(MetaLearner, "train_step", poisoned)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_loss_that_stops_being_finite_stops_the_run_before_it_is_logged_or_saved(image_dir, tmp_path,
                                                                                   monkeypatch, value):
    poison_after(monkeypatch, 2, value)  # the loss of iteration 4 (0-based 3) is not finite
    with pytest.raises(NonFiniteError, match=r"the loss at iteration 4 is (nan|inf): training diverged") as error:
        metatrain(tiny_meta(image_dir, tmp_path, iterations=6))
    assert f"the checkpoint of iteration 2 in {tmp_path} is intact" in str(error.value)
    assert [c.step for c in CheckpointManager(tmp_path).list()] == [2]
    assert first_non_finite(load_weights(tmp_path / "latest.safetensors")) is None
    with open(tmp_path / "log.csv") as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == [1, 2, 3]  # not the diverged iteration 4


def test_a_diverged_run_exits_with_code_2(image_dir, tmp_path, monkeypatch, capsys):
    init = tmp_path / "init.safetensors"
    save_file({k: v.contiguous() for k, v in MZSRNet().state_dict().items()}, str(init))
    poison_after(monkeypatch, 0, math.nan)
    assert main(["metatrain", str(image_dir), "--init", str(init), "--out", str(tmp_path / "run"), *META_CLI]) == 2
    err = capsys.readouterr().err
    assert "error: metatrain: the loss at iteration 2 is nan: training diverged" in err
    assert f"{tmp_path / 'run'} has no checkpoint yet" in err
    assert err.count("\n") == 1


def test_a_checkpoint_with_non_finite_weights_is_not_written(image_dir, tmp_path, monkeypatch):
    poison_after(monkeypatch, 1, math.nan)  # iteration 2's loss is finite, its weights are not
    with pytest.raises(NonFiniteError, match="checkpoint of iteration 2 not written: weights.layers.0.weight holds"):
        metatrain(tiny_meta(image_dir, tmp_path, iterations=3))
    assert CheckpointManager(tmp_path).list() == [] and not (tmp_path / "latest.safetensors").exists()


def test_a_state_with_a_non_finite_optimiser_moment_is_not_written(tmp_path):
    state = {"optimizer": {"state": {0: {"exp_avg_sq": torch.tensor([1.0, math.inf])}}}}
    with pytest.raises(NonFiniteError, match="state.optimizer.state.0.exp_avg_sq holds NaN or infinite"):
        CheckpointManager(tmp_path).save(1, MZSRNet().state_dict(), state)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_non_finite_flat_threshold_is_refused(image_dir, tmp_path, capsys, value):
    assert main(["pretrain", str(image_dir), "--out", str(tmp_path), "--flat-threshold", value, "--iterations", "1",
                 "--no-progress"]) == 2
    assert f"error: flat_threshold: expected a finite number, got {float(value)!r}" in capsys.readouterr().err
