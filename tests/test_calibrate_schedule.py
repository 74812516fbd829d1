"""scripts/calibrate_schedule.py: the candidate schedules it scores."""
import importlib.util
import os

from mzsr_fast.model import PARAMETER_NAMES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script():
    path = os.path.join(ROOT, "scripts", "calibrate_schedule.py")
    spec = importlib.util.spec_from_file_location("calibrate_schedule", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scaled_and_layer_scaled_schedules():
    script = _script()
    assert script.scaled((0.01, 0.005), 2) == (0.02, 0.01)
    rows = script.layer_scaled((0.01, 0.005), 3, 1, 0.5)  # layer 1 halved, three steps, the last rate repeated
    assert len(rows) == 3 and all(len(row) == len(PARAMETER_NAMES) for row in rows)
    for row, rate in zip(rows, (0.01, 0.005, 0.005)):
        for name, value in zip(PARAMETER_NAMES, row):
            assert value == (rate * 0.5 if name.startswith("layers.1.") else rate)
    again = script.layer_scaled(rows, 3, 7, 2.0)  # a per-tensor schedule is refined in place
    assert again[0][PARAMETER_NAMES.index("layers.7.bias")] == 0.02
    assert again[0][PARAMETER_NAMES.index("layers.1.weight")] == 0.005
    assert script.largest_rate(again) == 0.02


def test_write_stores_the_best_schedule_and_the_adaptation_loss(tmp_path):
    import numpy as np
    from PIL import Image

    from mzsr_fast.model import MZSRNet
    from mzsr_fast.pretrained import ModelInfo, load_model, save_model

    data = tmp_path / "train"
    data.mkdir()
    gen = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(gen.integers(0, 256, (46, 50, 3), dtype=np.uint8)).save(data / name)
    model = tmp_path / "m.safetensors"
    save_model(model, MZSRNet(), ModelInfo("m", own_schedule=(0.01,)))
    assert _script().main([str(model), str(data), "--holdout", "1", "--val-crop", "0", "--steps", "1",
                           "--multipliers", "0.5,1", "--adapt-loss", "charbonnier", "--write"]) == 0
    _, info = load_model(str(model))
    assert info.adapt_loss == "charbonnier" and info.schedule in ((0.005,), (0.01,))
    assert "calibration" in info.notes
