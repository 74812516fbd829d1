"""End to end through the command line: pretrain, then metatrain from it,
with validation, a CSV log, and safetensors weights that load without pickle."""
import csv
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from mzsr_fast.cli import main
from mzsr_fast.model import MZSRNet
from safetensors.torch import save_file

TINY = ["--threads", "1", "--prefetch", "2", "--log-every", "1"]


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_pretrain_then_metatrain_end_to_end(image_dir, val_dir, tmp_path, capsys):
    pre = tmp_path / "pre"
    code = main(["pretrain", str(image_dir), "--out", str(pre), "--iterations", "3", "--patch-size", "16",
                 "--batch-size", "4", "--checkpoint-every", "2", "--validate-every", "3", "--val-dir", str(val_dir),
                 *TINY])
    assert code == 0
    captured = capsys.readouterr()
    assert "pretrain: 3 iterations done" in captured.out
    assert "pretrain [" in captured.err and "ETA" in captured.err  # plain progress lines (not a terminal)
    net = MZSRNet()
    net.load_state_dict(load_file(str(pre / "latest.safetensors")))
    log = rows(pre / "log.csv")
    assert [int(r["step"]) for r in log] == [1, 2, 3]
    assert float(log[-1]["val_psnr"]) > 10 and log[0]["val_psnr"] == ""
    assert json.loads((pre / "config.json").read_text())["batch_size"] == 4

    meta = tmp_path / "meta"
    code = main(["metatrain", str(image_dir), "--init", str(pre), "--out", str(meta), "--iterations", "2",
                 "--meta-batch", "2", "--task-batch", "2", "--patch-size", "16", "--inner-steps", "2",
                 "--validate-every", "2", "--val-dir", str(val_dir), *TINY])
    assert code == 0, capsys.readouterr().err
    log = rows(meta / "log.csv")
    assert [int(r["step"]) for r in log] == [1, 2]
    for column in ("loss", "query_loss_1", "query_loss_2", "msl_1", "msl_2", "order", "it_per_s"):
        assert log[-1][column] != ""
    assert float(log[-1]["psnr_g_d_2.0_mzsr1"]) > 10 and float(log[-1]["psnr_g_d_2.0_mzsr10"]) > 10
    with safe_open(str(meta / "latest.safetensors"), framework="pt") as f:
        assert f.metadata()["kind"] == "direct_x2" and f.metadata()["mode"] == "direct"
    net.load_state_dict(load_file(str(meta / "latest.safetensors")))
    # the result is a model the adapter accepts as a file
    from mzsr_fast.adapt import adapt
    sr = adapt(torch.rand(3, 24, 24), "g_d_2.0", scale=2, steps=1, model=str(meta / "latest.safetensors"))
    assert sr.shape == (3, 48, 48)


def test_metatrain_variants_run(image_dir, tmp_path):
    for variant, extra in (("multiscale", ["--first-order"]), ("bicubic_x2", ["--no-msl"]),
                           ("direct_x4", ["--learn-inner-lr"])):
        out = tmp_path / variant
        init = tmp_path / f"{variant}_init.safetensors"
        save_file({k: v.contiguous() for k, v in MZSRNet().state_dict().items()}, str(init))
        code = main(["metatrain", str(image_dir), "--init", str(init), "--out", str(out), "--iterations", "1",
                     "--meta-batch", "2", "--task-batch", "1", "--patch-size", "24", "--inner-steps", "1",
                     "--no-progress", *TINY, "--variant", variant, *extra])
        assert code == 0, variant
        config = json.loads((out / "config.json").read_text())
        assert config["variant"] == variant


def test_bad_data_folder_exits_with_code_2(tmp_path, capsys):
    assert main(["pretrain", str(tmp_path / "missing"), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "no such data folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["metatrain", str(tmp_path / "empty"), "--init", str(tmp_path), "--out", str(tmp_path / "run2"),
                 "--no-progress"]) == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "run2").exists()  # no folder of only a .lock


def test_bad_settings_exit_with_code_2(image_dir, tmp_path, capsys):
    assert main(["metatrain", str(image_dir), "--init", str(tmp_path / "none.safetensors"), "--out",
                 str(tmp_path / "r"), "--no-progress", "--threads", "1"]) == 2
    assert "no such weights file" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    (tmp_path / "kept").mkdir()  # a folder that was there before is left, lock file and all
    assert main(["metatrain", str(image_dir), "--init", str(tmp_path / "none.safetensors"), "--out",
                 str(tmp_path / "kept"), "--no-progress", "--threads", "1"]) == 2
    assert (tmp_path / "kept").is_dir()
    assert main(["pretrain", str(image_dir), "--out", str(tmp_path / "r2"), "--validate-every", "5"]) == 2
    assert "--val-dir" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["pretrain", str(image_dir), "--out", str(tmp_path / "r3"), "--device", "cuda"]) == 2
        assert "device: CUDA was asked for but no CUDA device is available" in capsys.readouterr().err


NOT_WRITABLE = "The given NumPy array is not writable"


@pytest.mark.slow
def test_metatrain_gives_torch_no_read_only_numpy_array(image_dir, tmp_path):
    """A 1x1 image among the training images (skipped as too small) decoded to
    a read-only numpy array that torch.from_numpy took as it was. PyTorch warns
    once per process, so the run is a process of its own, with that warning an error."""
    import shutil
    import subprocess
    import sys

    from PIL import Image

    data = tmp_path / "data"
    shutil.copytree(image_dir, data)
    Image.new("RGB", (1, 1), (10, 20, 30)).save(data / "dot.png")
    save_file(MZSRNet().state_dict(), str(tmp_path / "init.safetensors"))
    command = [sys.executable, "-W", f"error:{NOT_WRITABLE}", "-m", "mzsr_fast.cli", "metatrain", str(data),
               "--init", str(tmp_path / "init.safetensors"), "--out", str(tmp_path / "run"), "--iterations", "1",
               "--meta-batch", "2", "--task-batch", "2", "--patch-size", "16", "--inner-steps", "1",
               "--device", "cpu", "--no-progress", *TINY]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and NOT_WRITABLE not in result.stderr, result.stderr
    assert "dot.png (1x1)" in result.stderr  # the image was read, then skipped as too small
