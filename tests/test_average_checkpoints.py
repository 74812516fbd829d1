"""scripts/average_checkpoints.py: the mean of a run's checkpoints."""

import pytest
import torch

from mzsr_fast.model import PARAMETER_NAMES, MZSRNet
from mzsr_fast.pretrained import ModelInfo, load_model, save_model
from scripts_module import load_script


def _script():
    return load_script("average_checkpoints")


def _checkpoint(path, seed, step, rate, **info):
    torch.manual_seed(seed)
    net = MZSRNet()
    rows = ((rate,) * len(PARAMETER_NAMES), (rate / 2,) * len(PARAMETER_NAMES))
    save_model(path, net, ModelInfo("metatrain-direct_x2", notes={"step": str(step), "holdout": "20"},
                                    own_schedule=rows, **info))
    return net


def test_the_mean_of_weights_and_schedules_with_the_newest_info(tmp_path):
    nets = [_checkpoint(tmp_path / f"{s}.safetensors", seed, s, rate, adapt_loss="charbonnier")
            for seed, s, rate in ((1, 200, 0.1), (2, 300, 0.2), (3, 100, 0.3))]
    out = tmp_path / "mean.safetensors"
    assert _script().main([str(out)] + [str(tmp_path / f"{s}.safetensors") for s in (200, 300, 100)]) == 0
    net, info = load_model(str(out))
    for name, value in net.state_dict().items():
        expected = sum(n.state_dict()[name].double() for n in nets) / 3
        torch.testing.assert_close(value.double(), expected, rtol=0, atol=1e-6)  # float32 sums of three
    assert info.schedule[0] == pytest.approx((0.2,) * len(PARAMETER_NAMES))
    assert info.schedule[1] == pytest.approx((0.1,) * len(PARAMETER_NAMES))
    assert info.notes["step"] == "300" and info.notes["averaged"] == "100,200,300" and info.notes["holdout"] == "20"
    assert info.adapt_loss == "charbonnier" and info.kind == "direct_x2"


def test_scalar_schedules_average_step_by_step():
    assert _script().mean_schedule([(0.01, 0.02), (0.03, 0.04)]) == pytest.approx((0.02, 0.03))


def test_checkpoints_of_different_runs_are_refused(tmp_path, capsys):
    _checkpoint(tmp_path / "a.safetensors", 1, 100, 0.1)
    _checkpoint(tmp_path / "b.safetensors", 2, 200, 0.1, adapt_loss="charbonnier")
    out = tmp_path / "mean.safetensors"
    assert _script().main([str(out), str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]) == 2
    assert "adapt_loss 'charbonnier'" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("args,match", [
    (["a"], "expected two or more files, got 1"),
    (["a", "missing"], "missing is not a file"),
    (["out", "a"], "is one of the checkpoints"),
])
def test_bad_arguments_are_named(tmp_path, capsys, args, match):
    _checkpoint(tmp_path / "a", 1, 100, 0.1)
    _checkpoint(tmp_path / "out", 1, 100, 0.1)
    with pytest.raises(SystemExit):
        _script().main([str(tmp_path / "out")] + [str(tmp_path / a) for a in args])
    assert match in capsys.readouterr().err
