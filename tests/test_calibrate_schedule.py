"""scripts/calibrate_schedule.py: the candidate schedules it scores."""

import pytest

from mzsr_fast.model import PARAMETER_NAMES
from scripts_module import load_script


def _script():
    return load_script("calibrate_schedule")


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


def test_keep_steps_leaves_the_first_steps_as_they_are():
    script = _script()
    assert script.scaled((0.01,), 0.5, keep=1) == (0.01, 0.005)  # the one learned step, then half of it
    assert script.scaled((0.04, 0.02, 0.01), 2, keep=1) == (0.04, 0.04, 0.02)
    first = tuple(0.001 * (i + 1) for i in range(len(PARAMETER_NAMES)))
    assert script.scaled((first,), 0.5, keep=1) == (first, tuple(v * 0.5 for v in first))
    rows = script.layer_scaled((first,), 3, 2, 2.0, keep=1)
    assert rows[0] == first and rows[1] == rows[2]
    assert [a == b for a, b in zip(rows[1], first)] == [not name.startswith("layers.2.") for name in PARAMETER_NAMES]


def _tiny_data(tmp_path):
    import numpy as np
    from PIL import Image

    data = tmp_path / "train"
    data.mkdir()
    gen = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(gen.integers(0, 256, (46, 50, 3), dtype=np.uint8)).save(data / name)
    return data


def test_write_stores_the_best_schedule_and_the_adaptation_loss(tmp_path):
    from mzsr_fast.model import MZSRNet
    from mzsr_fast.pretrained import ModelInfo, load_model, save_model

    data = _tiny_data(tmp_path)
    model = tmp_path / "m.safetensors"
    save_model(model, MZSRNet(), ModelInfo("m", own_schedule=(0.01,)))
    assert _script().main([str(model), str(data), "--holdout", "1", "--val-crop", "0", "--steps", "1",
                           "--multipliers", "0.5,1", "--adapt-loss", "charbonnier", "--write"]) == 0
    _, info = load_model(str(model))
    assert info.adapt_loss == "charbonnier" and info.schedule in ((0.005,), (0.01,))
    assert "calibration" in info.notes


def test_step_search_is_scored_and_written_and_no_step_search_clears_it(tmp_path, capsys):
    from mzsr_fast.adapt import STEP_SEARCH
    from mzsr_fast.model import MZSRNet
    from mzsr_fast.pretrained import ModelInfo, load_model, save_model

    data = _tiny_data(tmp_path)
    model = tmp_path / "m.safetensors"
    save_model(model, MZSRNet(), ModelInfo("m", own_schedule=(0.01,)))
    common = [str(model), str(data), "--holdout", "1", "--val-crop", "0", "--steps", "1", "--multipliers", "1"]
    assert _script().main(common) == 0
    plain = capsys.readouterr().out
    assert _script().main(common + ["--step-search", "0.5,2", "--write"]) == 0
    assert capsys.readouterr().out.split("MZSR(1)")[1] != plain.split("MZSR(1)")[1]  # scored with the search
    assert load_model(str(model))[1].step_search == (0.5, 2.0)
    assert _script().main(common + ["--step-search", "--write"]) == 0
    assert load_model(str(model))[1].step_search == STEP_SEARCH
    assert _script().main(common + ["--no-step-search", "--write"]) == 0
    assert load_model(str(model))[1].step_search == ()


def test_keep_steps_writes_a_schedule_that_keeps_the_first_step(tmp_path):
    from mzsr_fast.model import MZSRNet
    from mzsr_fast.pretrained import ModelInfo, load_model, save_model

    data = _tiny_data(tmp_path)
    model = tmp_path / "m.safetensors"
    save_model(model, MZSRNet(), ModelInfo("m", own_schedule=(0.01,)))
    common = [str(model), str(data), "--holdout", "1", "--val-crop", "0", "--steps", "2"]
    with pytest.raises(SystemExit):
        _script().main(common + ["--keep-steps", "2"])
    assert _script().main(common + ["--keep-steps", "1", "--multipliers", "0.5", "--write"]) == 0
    assert load_model(str(model))[1].schedule == (0.01, 0.005)

