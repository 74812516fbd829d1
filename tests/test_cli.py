"""The mzsr-fast command: subcommands and bad input."""
import json
import subprocess
import sys

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
    from mzsr_fast.pretrained import bundled_models, load_model
    for name, shipped in bundled_models().items():
        line = report["bundled_models"][name]
        if shipped:
            assert f"{load_model(name)[1].notes['step']} meta-training iterations" in line, line
        else:
            assert line == "not trained yet"


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


@pytest.fixture
def model_file(tmp_path):
    from mzsr_fast import MZSRNet
    from mzsr_fast.pretrained import ModelInfo, save_model

    net = MZSRNet()
    net.reset_parameters(torch.Generator().manual_seed(0))
    path = tmp_path / "model.safetensors"
    save_model(path, net, ModelInfo("tiny", "direct_x2", "direct", (2,)))
    return str(path)


def test_sr_example(tmp_path, model_file, capsys):
    out = tmp_path / "sr"
    assert main(["sr", "example-lr", "-o", str(out), "--steps", "1", "--model", model_file]) == 0
    assert read_image(out / "butterfly_lr_g_d_2.0_x2_mzsr1.png").shape == (3, 256, 256)
    assert "[1/1]" in capsys.readouterr().out


def test_sr_converts_gray_rgba_16bit(tmp_path, model_file):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.random.randint(0, 255, (24, 25), np.uint8), "L").save(folder / "gray.png")
    Image.fromarray(np.random.randint(0, 255, (26, 24, 4), np.uint8), "RGBA").save(folder / "rgba.png")
    Image.fromarray(np.random.randint(0, 65535, (24, 24), np.uint16)).save(folder / "deep.png")
    with pytest.warns(UserWarning, match="alpha"):
        assert main(["sr", str(folder), "-o", str(tmp_path / "o"), "--steps", "1", "--model", model_file]) == 0
    assert read_image(tmp_path / "o" / "gray_x2_mzsr1.png").shape == (3, 48, 50)


def test_sr_warning_is_one_line(tmp_path, model_file):
    """Warnings print as one line (a subprocess: pytest records warnings instead of printing them)."""
    done = subprocess.run([sys.executable, "-m", "mzsr_fast", "sr", "example-lr", "-o", str(tmp_path), "--model",
                           model_file, "--steps", "1", "--kernel", "g_b_1.3"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    err = done.stderr
    assert err.startswith("mzsr-fast sr: warning: kernel: the preset comes with bicubic subsampling")
    assert err.count("\n") == 1


@pytest.mark.parametrize("extra,message", [
    (["--steps", "-1"], "steps: expected an integer >= 0"),
    (["--scale", "4"], "scale: the model 'tiny' was trained for scales (2,), got 4"),
    (["--kernel", "1,2"], "kernel: '1,2' is neither a preset"),
    (["--cuda-graph", "--device", "cpu"], "cuda_graph: needs lr on a CUDA device, got cpu"),
])
def test_sr_bad_input(tmp_path, model_file, capsys, extra, message):
    assert main(["sr", "example-lr", "-o", str(tmp_path), "--model", model_file] + extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_sr_bad_images(tmp_path, model_file, capsys):
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "one.png")
    assert main(["sr", str(tmp_path / "one.png"), "-o", str(tmp_path), "--model", model_file]) == 2
    assert "smaller than the 21x21 kernel" in capsys.readouterr().err
    for scale in ("0", "1.5"):
        assert main(["sr", "example-lr", "-o", str(tmp_path), "--model", model_file, "--scale", scale]) == 2


def test_sr_main_job_with_shipped_default_model(tmp_path):
    """The README's main command: the bundled LR example with the default model."""
    assert main(["sr", "example-lr", "-o", str(tmp_path), "--kernel", "g_d_2.0", "--steps", "1"]) == 0
    sr = read_image(tmp_path / "butterfly_lr_g_d_2.0_x2_mzsr1.png")
    gt = read_image(example_path("example"))
    from mzsr_fast import imresize, metrics

    bicubic = imresize(read_image(example_path("example-lr")), scale=2).clamp(0, 1)
    assert metrics.psnr(sr, gt, 2) > metrics.psnr(bicubic, gt, 2) + 1.0


def test_sr_with_untrained_bundled_model_says_so(tmp_path, capsys):
    from mzsr_fast.pretrained import bundled_models

    untrained = [name for name, shipped in bundled_models().items() if not shipped]
    if not untrained:
        pytest.skip("every bundled model is shipped")
    assert main(["sr", "example-lr", "-o", str(tmp_path), "--model", untrained[0]]) == 2
    assert "not trained yet" in capsys.readouterr().err


@pytest.mark.parametrize("kernel,expected", [("g_d_0.2", 30.24), ("g_d_2.0", 28.73),
                                             ("g_d_ani", 28.15), ("g_b_1.3", 30.54)])
def test_eval_bicubic_prints_paper_column(shared_dir, tmp_path, capsys, kernel, expected):
    args = ["eval", "--gt", str(shared_dir / "data" / "Set5"), "--kernel", kernel, "--method", "bicubic",
            "-o", str(tmp_path)]
    assert main(args) == 0
    mean_row = [line for line in capsys.readouterr().out.splitlines() if "**mean**" in line][0]
    assert f"| {expected:.2f} |" in mean_row
    report = json.loads((tmp_path / "results.json").read_text())
    assert abs(report["scores"][-1]["psnr"] - expected) <= 0.01
    assert (tmp_path / "results.md").exists() and (tmp_path / "results.csv").exists()


def test_eval_reference_lr_folder(shared_dir, capsys):
    args = ["eval", "--gt", str(shared_dir / "data" / "Set5"), "--lr", str(shared_dir / "data" / "mzsr_g20"),
            "--kernel", "g_d_2.0", "--method", "bicubic"]
    assert main(args) == 0
    assert "| 28.73 |" in [line for line in capsys.readouterr().out.splitlines() if "**mean**" in line][0]


def test_eval_mzsr_steps(tmp_path, model_file, capsys):
    gt = tmp_path / "gt"
    gt.mkdir()
    Image.fromarray(np.random.randint(0, 255, (52, 48, 3), np.uint8)).save(gt / "a.png")
    assert main(["eval", "--gt", str(gt), "--steps", "0,1", "--model", model_file]) == 0
    out = capsys.readouterr().out
    assert "| mzsr | 0 |" in out and "| mzsr | 1 |" in out


def test_eval_bad_input(tmp_path, capsys):
    assert main(["eval", "--gt", str(tmp_path / "none")]) == 2
    assert "--gt: " in capsys.readouterr().err
    assert main(["eval", "--gt", str(tmp_path), "--steps", "1,x"]) == 2
    assert "--steps: expected integers" in capsys.readouterr().err


def test_eval_zssr(tmp_path, capsys):
    gt = tmp_path / "gt"
    gt.mkdir()
    Image.fromarray(np.random.randint(0, 255, (48, 48, 3), np.uint8)).save(gt / "a.png")
    assert main(["eval", "--gt", str(gt), "--method", "zssr", "--steps", "3"]) == 0
    assert "| zssr | 3 |" in capsys.readouterr().out
