"""scripts/ship_weights.py: what it ships, and what it refuses (exit 2, the
argument named), into a temporary folder (never the package's weights)."""

import pytest
import torch

from mzsr_fast.model import MZSRNet
from mzsr_fast.pretrained import ModelInfo, load_model, save_model
from scripts_module import load_script


def _script():
    return load_script("ship_weights").main


def _weights(path, **info):
    net = MZSRNet()
    net.reset_parameters(torch.Generator().manual_seed(3))
    save_model(path, net, ModelInfo("run", **info))
    return net


def test_ships_a_checkpoint_with_its_iteration_schedule_and_loss(tmp_path):
    source = tmp_path / "step-00000300.safetensors"
    net = _weights(source, kind="direct_x4", mode="direct", scales=(4,), notes={"step": "300"},
                   own_schedule=(0.02, 0.01), adapt_loss="charbonnier", step_search=(0.5, 1.0))
    assert _script()([str(source), "direct_x4", "--out", str(tmp_path)]) == 0
    shipped, info = load_model(tmp_path / "direct_x4.safetensors")
    assert (info.name, info.kind, info.scales, info.notes["step"]) == ("direct_x4", "direct_x4", (4,), "300")
    assert info.own_schedule == (0.02, 0.01) and info.adapt_loss == "charbonnier" and info.step_search == (0.5, 1.0)
    for a, b in zip(shipped.parameters(), net.parameters()):
        assert torch.equal(a, b)


def test_a_run_folder_ships_its_latest(tmp_path):
    _weights(tmp_path / "latest.safetensors", kind="direct_x2", notes={"step": "7"})
    assert _script()([str(tmp_path), "direct_x2", "--out", str(tmp_path)]) == 0
    assert load_model(tmp_path / "direct_x2.safetensors")[1].notes["step"] == "7"


def test_init_iterations_are_counted(tmp_path, capsys):
    """A run continued from a meta-trained model ships the total count, and the
    earlier part separately; a file with no count to add to is refused."""
    source = tmp_path / "step-00000350.safetensors"
    _weights(source, kind="direct_x2", notes={"step": "350"})
    assert _script()([str(source), "direct_x2", "--out", str(tmp_path), "--init-iterations", "400"]) == 0
    notes = load_model(tmp_path / "direct_x2.safetensors")[1].notes
    assert (notes["step"], notes["init_iterations"]) == ("750", "400")
    _weights(source, kind="direct_x2")
    assert _script()([str(source), "direct_x2", "--out", str(tmp_path), "--init-iterations", "400"]) == 2
    assert "--init-iterations: " in capsys.readouterr().err
    assert _script()([str(source), "direct_x2", "--out", str(tmp_path), "--init-iterations", "-1"]) == 2


@pytest.mark.parametrize("case", ["missing", "other_kind", "pretrain", "not_safetensors", "no_out_folder"])
def test_refusals(tmp_path, capsys, case):
    source, out = tmp_path / "w.safetensors", tmp_path
    if case == "other_kind":
        _weights(source, kind="bicubic_x2", mode="bicubic")
    elif case == "pretrain":
        _weights(source, notes={"stage": "pretrain"})
    elif case == "not_safetensors":
        source.write_bytes(b"\x80\x04 a pickle, say")
    elif case == "no_out_folder":
        _weights(source, kind="direct_x2")
        out = tmp_path / "absent"
    assert _script()([str(source), "direct_x2", "--out", str(out)]) == 2
    assert ("--out: " if case == "no_out_folder" else "weights: ") in capsys.readouterr().err
    assert not (tmp_path / "direct_x2.safetensors").exists()
