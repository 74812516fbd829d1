"""The mzsr-fast command: subcommands and bad input."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from mzsr_fast.cli import example_path, main
from mzsr_fast.io import read_image


def test_degrade_example(tmp_path, capsys):
    assert main(["degrade", "example", "-o", str(tmp_path), "--kernel", "g_d_2.0", "--scale", "2"]) == 0
    out = read_image(tmp_path / "butterfly_hr_x2.png")
    assert out.shape == (3, 128, 128)
    assert "butterfly_hr_x2.png" in capsys.readouterr().out


def test_degrade_reproduces_reference_lr(tmp_path):
    assert main(["degrade", "example", "-o", str(tmp_path)]) == 0
    expected = read_image(example_path("example-lr"))
    assert torch.equal(read_image(tmp_path / "butterfly_hr_x2.png"), expected)


def test_degrade_folder_with_gaussian_string_and_npy(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.full((9, 7), 200, np.uint8), "L").save(folder / "g.png")
    assert main(["degrade", str(folder), "-o", str(tmp_path / "a"), "--kernel", "0.5,3,1", "--scale", "3"]) == 0
    assert read_image(tmp_path / "a" / "g_x3.png").shape == (3, 3, 3)
    np.save(tmp_path / "k.npy", np.full((5, 5), 1 / 25))
    assert main(["degrade", str(folder), "-o", str(tmp_path / "b"), "--kernel", str(tmp_path / "k.npy")]) == 0


def test_info(capsys):
    assert main(["info"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backends"]["blur_downsample"]["torch"] == "available"


@pytest.mark.parametrize("args,message", [
    (["degrade", "missing.png", "-o", "OUT"], "missing.png: no such file"),
    (["degrade", "example", "-o", "OUT", "--kernel", "g_x"], "kernel: 'g_x' is neither a preset"),
    (["degrade", "example", "-o", "OUT", "--kernel", "a,b,c"], "kernel: expected 'theta,lambda1,lambda2'"),
    (["degrade", "example", "-o", "OUT", "--scale", "0"], "scale: expected an integer >= 1"),
])
def test_bad_input_exit_2(tmp_path, capsys, args, message):
    args = [str(tmp_path / a) if a == "OUT" else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_bad_files(tmp_path, capsys):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    assert main(["degrade", str(tmp_path / "bad.png"), "-o", str(tmp_path)]) == 2
    assert "bad.png: not an image" in capsys.readouterr().err
    np.save(tmp_path / "nan.npy", np.full((3, 3), np.nan))
    assert main(["degrade", "example", "-o", str(tmp_path), "--kernel", str(tmp_path / "nan.npy")]) == 2
    assert "kernel: expected finite values" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["degrade", str(tmp_path / "empty"), "-o", str(tmp_path)]) == 2
    assert "no images" in capsys.readouterr().err


def test_usage_error_exit_2(capsys):
    assert main(["degrade"]) == 2
    assert main(["nonsense"]) == 2
