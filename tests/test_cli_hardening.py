"""The mzsr-fast command under stress: partial batches, existing and unwritable
outputs, writers killed mid-write, grey images, interrupts, bad model files,
and a parser that answers without importing torch."""
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mzsr_fast.cli import build_parser, main
from mzsr_fast.io import read_image
from test_cli import _rgb, model_file  # noqa: F401  (model_file is a fixture)

ROOT = Path(__file__).resolve().parent.parent
SR = ["--steps", "0", "--kernel", "g_d_2.0"]  # no adaptation, no estimate: the cheapest sr


def _no_adaptation(monkeypatch):
    """Make any adaptation fail the test: the checks under test come before it."""
    import importlib

    def adapt(*args, **kwargs):
        raise AssertionError("adapt was called")

    monkeypatch.setattr(importlib.import_module("mzsr_fast.adapt"), "adapt", adapt)


def test_sr_good_bad_good_writes_both_good_ones_and_exits_2(tmp_path, model_file, capsys):
    _rgb(tmp_path / "one.png", 24, 24, 1)
    _rgb(tmp_path / "two.png", 24, 24, 2)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    inputs = [tmp_path / "one.png", tmp_path / "bad.png", tmp_path / "two.png", tmp_path / "missing.png",
              tmp_path / "." / "one.png"]  # one.png twice: read once
    assert main(["sr", *map(str, inputs), "-o", str(tmp_path / "o"), "--model", model_file, *SR]) == 2
    captured = capsys.readouterr()
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["one_x2_mzsr0.png", "two_x2_mzsr0.png"]
    assert captured.out.count("[1/2]") == 1 and captured.out.count("[2/2]") == 1
    errors = captured.err.splitlines()
    assert len(errors) == 2 and errors[0].startswith("mzsr-fast sr: error: ")
    assert f"{tmp_path / 'bad.png'}: not an image file" in errors[0]  # found before any image ran
    assert f"{tmp_path / 'missing.png'}: no such file or folder" in errors[1]


def test_degrade_reports_an_image_damaged_past_its_header_and_runs_the_others(tmp_path, capsys):
    _rgb(tmp_path / "a.png", 32, 32, 1)
    _rgb(tmp_path / "cut.png", 32, 32, 2)
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    assert main(["degrade", str(tmp_path / "cut.png"), str(tmp_path / "a.png"), "-o", str(tmp_path / "o")]) == 2
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["a_x2.png"]
    err = capsys.readouterr().err
    assert f"{tmp_path / 'cut.png'}: corrupt or truncated image" in err and err.count("\n") == 1


def test_no_readable_input_makes_no_output_folder(tmp_path, model_file, capsys):
    (tmp_path / "bad.png").write_text("text")
    assert main(["sr", str(tmp_path / "bad.png"), str(tmp_path / "gone.png"), "-o", str(tmp_path / "o"),
                 "--model", model_file]) == 2
    assert capsys.readouterr().err.count("\n") == 2 and not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", [["sr", "example-lr", "--model", "MODEL", *SR], ["degrade", "example"],
                                     ["eval", "--gt", "GT", "--method", "bicubic"]])
def test_existing_outputs_are_refused_without_force(tmp_path, model_file, capsys, command):
    (tmp_path / "gt").mkdir()
    _rgb(tmp_path / "gt" / "a.png", 32, 32)
    args = [{"MODEL": model_file, "GT": str(tmp_path / "gt")}.get(a, a) for a in command] + ["-o", str(tmp_path / "o")]
    assert main(args) == 0
    written = {p.name: p.read_bytes() for p in (tmp_path / "o").iterdir()}
    for path in (tmp_path / "o").iterdir():
        path.write_bytes(b"old")
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists (use --force to overwrite)" in err
    assert all(p.read_bytes() == b"old" for p in (tmp_path / "o").iterdir())
    assert main(args + ["--overwrite"]) == 0 and main(args + ["--force"]) == 0
    if command[0] != "eval":  # the report holds timings
        assert {p.name: p.read_bytes() for p in (tmp_path / "o").iterdir()} == written


def test_import_tf_refuses_a_folder_or_an_unwritable_one(tmp_path, capsys):
    assert main(["import-tf", "prefix", "-o", str(tmp_path)]) == 2
    assert "is a folder; expected a file name" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["import-tf", "prefix", "-o", str(tmp_path / "file" / "out.safetensors")]) == 2
    assert "-o: cannot write to the folder" in capsys.readouterr().err


def test_output_under_a_file_exits_2_before_any_adaptation(tmp_path, model_file, capsys, monkeypatch):
    _no_adaptation(monkeypatch)
    (tmp_path / "file").write_text("x")
    assert main(["sr", "example-lr", "-o", str(tmp_path / "file" / "o"), "--model", model_file, *SR]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert f"-o: cannot make the output folder {tmp_path / 'file' / 'o'} ({tmp_path / 'file'} is a file)" \
        in captured.err


def test_unwritable_output_folder_exits_2_and_makes_nothing(tmp_path, model_file, capsys, monkeypatch):
    """os.access says no (as for a read-only folder, which root could still write to)."""
    _no_adaptation(monkeypatch)
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: not str(path).startswith(str(locked))
                        and real_access(path, mode))
    for out in (locked, locked / "new" / "deeper"):
        assert main(["sr", "example-lr", "-o", str(out), "--model", model_file, *SR]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1
        assert f"-o: cannot write to the output folder {out}" in captured.err or \
            f"-o: cannot make the output folder {out}" in captured.err
    assert os.listdir(locked) == []  # new/deeper was made for the trial, and removed


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True,
                    reason="root writes into read-only folders (the os.access test above covers the check)")
def test_read_only_output_folder_exits_2(tmp_path, model_file, capsys, monkeypatch):
    _no_adaptation(monkeypatch)
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        assert main(["sr", "example-lr", "-o", str(tmp_path / "ro" / "o"), "--model", model_file, *SR]) == 2
        assert "cannot make the output folder" in capsys.readouterr().err
    finally:
        (tmp_path / "ro").chmod(0o755)


def test_a_failed_command_removes_the_empty_folders_it_made(tmp_path, model_file, capsys):
    _rgb(tmp_path / "tiny.png", 2, 2)
    out = tmp_path / "new" / "o"
    assert main(["degrade", str(tmp_path / "tiny.png"), "-o", str(out), "--scale", "3"]) == 2
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()  # an existing empty folder stays
    assert main(["degrade", str(tmp_path / "tiny.png"), "-o", str(tmp_path / "kept"), "--scale", "3"]) == 2
    assert (tmp_path / "kept").is_dir()


_STALLED_WRITER = textwrap.dedent("""
    import signal, sys, time
    from PIL import Image

    # Ctrl-C as a terminal delivers it, even when the tests themselves run in the
    # background, where the shell starts them (and so this child) with SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def stalled(image, fp, filename, *args, **kwargs):  # half a PNG, then wait to be killed
        fp.write(b"\\x89PNG\\r\\n\\x1a\\n half")
        fp.flush()
        print("writing", flush=True)
        time.sleep(120)

    Image.init()
    Image.SAVE["PNG"] = stalled
    from mzsr_fast.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL])
def test_a_command_killed_mid_write_leaves_the_old_file(tmp_path, signum):
    """`mzsr-fast degrade --force` killed while its PNG is half written: the
    output keeps its old content (Ctrl-C: exit 130, no temporary file left)."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "butterfly_hr_x2.png").write_bytes(b"old")
    child = subprocess.Popen([sys.executable, "-c", _STALLED_WRITER, "degrade", "example", "-o", str(out), "--force"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "writing\n", child.stderr.read()
        child.send_signal(signum)
        code = child.wait(timeout=60)
    finally:
        child.kill()
    assert (out / "butterfly_hr_x2.png").read_bytes() == b"old"
    leftovers = [name for name in os.listdir(out) if name != "butterfly_hr_x2.png"]
    if signum == signal.SIGINT:
        assert code == 130 and leftovers == []
        assert child.stderr.read().strip() == "mzsr-fast degrade: interrupted"
    else:
        assert code == -signal.SIGKILL and all(name.startswith(".tmp-") for name in leftovers)


def test_sr_of_grey_images_writes_grey_ones(tmp_path, model_file):
    """A grey input is adapted as three equal channels; its output is their mean, grey, in its bit depth."""
    rgb = read_image(os.path.join(ROOT, "mzsr_fast", "data", "butterfly_lr_g_d_2.0.png"))[:, :32, :30]
    grey8 = np.round(rgb.mean(0).numpy() * 255).astype(np.uint8)
    Image.fromarray(grey8, "L").save(tmp_path / "g8.png")
    Image.fromarray(np.stack([grey8] * 3, -1)).save(tmp_path / "rgb.png")
    Image.fromarray(grey8.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    assert main(["sr", *(str(tmp_path / n) for n in ("g8.png", "rgb.png", "g16.png")), "-o", str(tmp_path / "o"),
                 "--model", model_file, "--steps", "1", "--kernel", "g_d_2.0"]) == 0
    g8, g16, colour = (Image.open(tmp_path / "o" / f"{n}_x2_mzsr1.png") for n in ("g8", "g16", "rgb"))
    assert (g8.mode, g16.mode, colour.mode) == ("L", "I;16", "RGB") and g8.size == (60, 64)
    mean = np.asarray(colour, np.float64).mean(-1)  # the same adaptation on the replicated channels
    assert np.abs(np.asarray(g8, np.float64) - mean).max() <= 1.0
    assert np.abs(np.asarray(g16, np.float64) / 257 - mean).max() <= 1.0


def test_a_model_of_the_wrong_shape_is_one_line_naming_the_tensor(tmp_path, capsys):
    from safetensors.torch import save_file

    from mzsr_fast import MZSRNet

    state = dict(MZSRNet().state_dict())
    state["layers.3.weight"] = torch.zeros(64, 64, 5, 5)
    save_file(state, str(tmp_path / "wide.safetensors"))
    assert main(["sr", "example-lr", "-o", str(tmp_path / "o"), "--model", str(tmp_path / "wide.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err == (f"mzsr-fast sr: error: model: {tmp_path / 'wide.safetensors'}: weights do not fit MZSRNet: "
                   f"layers.3.weight has shape [64, 64, 5, 5], expected [64, 64, 3, 3]\n")


@pytest.mark.parametrize("change,message", [
    (lambda s: s.pop("layers.7.bias"), "layers.7.bias is missing"),
    (lambda s: s.update(extra=torch.zeros(1), more=torch.zeros(1)), "extra is not a tensor of MZSRNet (and 1 more)"),
])
def test_init_weights_that_do_not_fit_are_one_line(tmp_path, change, message):
    """metatrain --init and pretrain --init load through checkpoints.load_into."""
    from safetensors.torch import save_file

    from mzsr_fast import MZSRNet
    from mzsr_fast.train.checkpoints import load_into

    state = dict(MZSRNet().state_dict())
    change(state)
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError) as error:
        load_into(MZSRNet(), tmp_path / "w.safetensors")
    assert str(error.value) == f"{tmp_path / 'w.safetensors'}: weights do not fit MZSRNet: {message}"


def test_a_stopped_training_run_exits_130(tmp_path, monkeypatch, capsys):
    """The trainer saves its checkpoint on Ctrl-C and returns interrupted; the command exits 130."""
    import importlib
    from types import SimpleNamespace

    pretrain_module = importlib.import_module("mzsr_fast.train.pretrain")  # mzsr_fast.train.pretrain: the function
    monkeypatch.setattr(pretrain_module, "pretrain", lambda config: SimpleNamespace(interrupted=True, step=7))
    assert main(["pretrain", str(tmp_path), "--out", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err
    assert "stopped at iteration 7; resume with the same command and --resume" in err


@pytest.mark.parametrize("argv", [["--help"], ["sr", "example-lr"], ["info", "--bogus"], ["metatrain", "--help"]])
def test_help_and_usage_errors_do_not_import_torch(argv):
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "mzsr_fast", *argv], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == (0 if "--help" in argv else 2), done.stderr
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "mzsr_fast.cli" in imported and not {name for name in imported if name.split(".")[0] == "torch"}


def test_importing_the_package_and_the_cli_does_not_import_torch():
    code = "import sys, mzsr_fast, mzsr_fast.cli, mzsr_fast.train; print(sorted(m for m in sys.modules if " \
           "m.split('.')[0] in ('torch', 'numpy', 'PIL')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_lazy_names_keep_their_meaning():
    """mzsr_fast.adapt is the function, even after the module of that name is imported."""
    import importlib

    import mzsr_fast
    import mzsr_fast.train

    importlib.import_module("mzsr_fast.adapt")
    importlib.import_module("mzsr_fast.train.pretrain")
    assert callable(mzsr_fast.adapt) and mzsr_fast.adapt.__name__ == "adapt"
    assert mzsr_fast.train.pretrain.__name__ == "pretrain" and callable(mzsr_fast.train.pretrain)
    assert set(mzsr_fast.__all__) <= set(dir(mzsr_fast))
    assert all(getattr(mzsr_fast, name) is not None for name in mzsr_fast.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        mzsr_fast.nothing  # noqa: B018


def test_every_subcommand_the_readme_names_exists():
    commands = build_parser()._subparsers._group_actions[0].choices
    named = set(re.findall(r"mzsr-fast ([a-z][a-z-]*)", (ROOT / "README.md").read_text()))
    assert named and named <= set(commands), named - set(commands)
