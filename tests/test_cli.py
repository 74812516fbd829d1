"""The mzsr-fast command: subcommands and bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mzsr_fast.adapt import adapt
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
    from mzsr_fast.dispatch import cpu_only_ops
    assert report["cpu_only_ops"] == cpu_only_ops() and set(report["cpu_only_ops"]) == {"conv3x3_winograd"}
    from mzsr_fast.pretrained import bundled_models, load_model
    for name, shipped in bundled_models().items():
        line = report["bundled_models"][name]
        if shipped:
            info = load_model(name)[1]
            assert f"{info.notes['step']} meta-training iterations" in line, line
            search = f"step search {','.join(f'{m:g}' for m in info.step_search)}" if info.step_search \
                else "no step search"
            assert line.endswith(f", {info.adapt_loss} adaptation loss, {search}"), line
        else:
            assert line == "not trained yet"
    assert "charbonnier adaptation loss" in report["bundled_models"]["direct_x2_1step"]


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
    (["--steps", "-1"], "--steps: expected integers >= 0"),
    (["--scale", "4"], "scale: the model 'tiny' was trained for scales (2,), got 4"),
    (["--kernel", "1,2"], "kernel: '1,2' is neither a preset"),
    (["--cuda-graph", "--device", "cpu"], "--cuda-graph: needs a CUDA device, got cpu"),
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


@pytest.mark.parametrize("kernel", ["g_d_2.0", "auto"])
def test_sr_skips_an_image_smaller_than_the_kernel_and_runs_the_others(tmp_path, model_file, capsys, kernel):
    _rgb(tmp_path / "tiny.png", 8, 8)
    _rgb(tmp_path / "good.png", 40, 44)
    inputs = [str(tmp_path / "tiny.png"), str(tmp_path / "good.png")]
    assert main(["sr", *inputs, "-o", str(tmp_path / "out"), "--model", model_file, "--kernel", kernel,
                 "--steps", "1"]) == 2
    assert os.listdir(tmp_path / "out") == ["good_x2_mzsr1.png"]
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'tiny.png'}: image of 8x8 (height x width) is smaller than the 21x21 kernel" in err
    assert "lr:" not in err  # the estimate's warning names the file too


@pytest.mark.parametrize("args,message", [
    (["sr", "example-lr", "-o", "OUT", "--device", "meta"], "--device: expected cpu, cuda or cuda:N, got 'meta'"),
    (["degrade", "example", "-o", "OUT", "--noise", "-1"], "--noise: expected a number >= 0, got -1.0"),
    (["degrade", "example", "-o", "OUT", "--kernel", "0,2,1", "--kernel-size", "4"],
     "--kernel-size: expected an odd positive integer, got 4"),
    (["eval", "--gt", "GT", "--kernel", "random", "--seed", str(2 ** 70)], "--seed: expected an integer in [0, 2**63)"),
    (["import-tf", "prefix", "-o", "MISSING/x.safetensors"], "-o: cannot write to the folder"),
])
def test_option_errors_name_the_option(tmp_path, capsys, args, message):
    args = [a.replace("OUT", str(tmp_path / "out")).replace("GT", str(tmp_path)).replace("MISSING", str(tmp_path / "no"))
            for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    if args[0] == "import-tf":
        assert "(no such folder)" in err


def test_estimate_kernel_json_of_a_fallback_is_valid_json(tmp_path, capsys):
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(tmp_path / "flat.png")
    assert main(["estimate-kernel", str(tmp_path / "flat.png"), "--json"]) == 0

    def no_constants(name):
        raise ValueError(f"not JSON: {name}")

    [result] = json.loads(capsys.readouterr().out, parse_constant=no_constants)
    assert result["fallback"] and result["spread"] is None


def test_eval_reports_an_lr_file_that_does_not_fit_its_gt_and_scores_the_others(tmp_path, model_file, capsys):
    for folder in ("gt", "lr"):
        (tmp_path / folder).mkdir()
    _rgb(tmp_path / "gt" / "a.png", 48, 50)
    _rgb(tmp_path / "gt" / "b.png", 48, 50, seed=1)
    _rgb(tmp_path / "lr" / "a.png", 24, 25)
    _rgb(tmp_path / "lr" / "b.png", 28, 25)  # should be 24x25
    assert main(["eval", "--gt", str(tmp_path / "gt"), "--lr", str(tmp_path / "lr"), "--steps", "0", "--model",
                 model_file]) == 2
    captured = capsys.readouterr()
    assert f"{tmp_path / 'lr' / 'b.png'}: --lr image of 28x25 (height x width) does not fit its GT of 48x50 at x2; " \
           f"expected 24x25" in captured.err
    assert "| a.png |" in captured.out and "| b.png |" not in captured.out


def test_sr_computes_each_number_of_steps_once(tmp_path, model_file, capsys):
    _rgb(tmp_path / "a.png", 40, 44)
    assert main(["sr", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--model", model_file, "--kernel",
                 "g_d_2.0", "--steps", "1,0,1"]) == 0
    assert capsys.readouterr().out.count("a_x2_mzsr1.png") == 1


@pytest.mark.parametrize("kernel", ["g_d_2.0", "auto"])
def test_sr_share_adaptation_leaves_out_an_image_smaller_than_the_kernel(tmp_path, model_file, capsys, kernel):
    _rgb(tmp_path / "a.png", 40, 44)
    _rgb(tmp_path / "strip.png", 5, 60)
    assert main(["sr", str(tmp_path / "a.png"), str(tmp_path / "strip.png"), "-o", str(tmp_path / "out"),
                 "--model", model_file, "--kernel", kernel, "--steps", "1", "--share-adaptation"]) == 2
    assert f"error: {tmp_path / 'strip.png'}: image of 5x60 (height x width) is smaller than the 21x21 kernel" in \
        capsys.readouterr().err
    assert os.listdir(tmp_path / "out") == ["a_x2_mzsr1.png"]


@pytest.mark.parametrize("share", [[], ["--share-adaptation"]])
def test_sr_steps_0_alone_estimates_no_kernel(tmp_path, model_file, capsys, monkeypatch, share):
    """MZSR(0) reads no kernel: --kernel auto estimates one only when a step count needs it."""
    from mzsr_fast import blind

    estimate = blind.estimate_kernel
    calls = []
    monkeypatch.setattr(blind, "estimate_kernel", lambda *a, **k: calls.append(1) or estimate(*a, **k))
    _rgb(tmp_path / "a.png", 40, 44)
    base = ["sr", str(tmp_path / "a.png"), "--model", model_file, "--kernel", "auto", *share]
    assert main(base + ["-o", str(tmp_path / "zero"), "--steps", "0"]) == 0
    assert not calls and "estimated" not in capsys.readouterr().out
    assert os.listdir(tmp_path / "zero") == ["a_x2_mzsr0.png"]
    assert main(base + ["-o", str(tmp_path / "both"), "--steps", "0,1"]) == 0
    assert len(calls) == 1 and "estimated" in capsys.readouterr().out


@pytest.mark.parametrize("option,message", [
    (["--adapt-pixels", "5"], "--adapt-pixels: expected 0 (whole images) or an integer >= 1024, got 5"),
    (["--tile", "0"], "--tile: expected a positive integer"),
    (["--seed", "99999999999999999999999"], "--seed: expected an integer in [0, 2**63)"),
    (["--scale", "5"], "--scale: the shipped models serve scales 2, 3, 4, got 5"),
])
def test_sr_checks_its_options_before_any_work(tmp_path, capsys, option, message):
    _rgb(tmp_path / "a.png", 40, 44)
    assert main(["sr", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--steps", "1", *option]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "estimated" not in captured.out
    assert not (tmp_path / "out").exists()


def test_sr_main_job_with_shipped_default_model(tmp_path):
    """The README's main command: the bundled LR example with the default model."""
    assert main(["sr", "example-lr", "-o", str(tmp_path), "--kernel", "g_d_2.0", "--steps", "1"]) == 0
    sr = read_image(tmp_path / "butterfly_lr_g_d_2.0_x2_mzsr1.png")
    gt = read_image(example_path("example"))
    from mzsr_fast import imresize, metrics

    bicubic = imresize(read_image(example_path("example-lr")), scale=2).clamp(0, 1)
    assert metrics.psnr(sr, gt, 2) > metrics.psnr(bicubic, gt, 2) + 1.0


@pytest.mark.parametrize("scale,name", [(4, "direct_x4"), (3, "multiscale")])
def test_sr_at_another_scale_picks_the_shipped_model_for_it(tmp_path, scale, name):
    """`sr --scale 4` (3) with no --model adapts the shipped direct_x4 (multiscale) and beats bicubic."""
    from mzsr_fast import degrade, imresize, metrics, pretrained
    from mzsr_fast.degradation import load_kernel
    from mzsr_fast.io import write_image

    assert pretrained.default_model("direct", scale) == name
    gt = read_image(example_path("example"))[:, :96, :96]
    write_image(tmp_path / "lr.png", degrade(gt, load_kernel("g_d_2.0")[0], scale))
    assert main(["sr", str(tmp_path / "lr.png"), "-o", str(tmp_path), "--kernel", "g_d_2.0", "--scale", str(scale),
                 "--steps", "1"]) == 0
    sr = read_image(tmp_path / f"lr_x{scale}_mzsr1.png")
    bicubic = imresize(read_image(tmp_path / "lr.png"), scale=scale).clamp(0, 1)
    assert metrics.psnr(sr, gt, scale) > metrics.psnr(bicubic, gt, scale) + 1.0


def test_sr_with_untrained_bundled_model_says_so(tmp_path, capsys, monkeypatch):
    """A bundled name whose weights are not in the install (here: made absent)."""
    from mzsr_fast import pretrained

    monkeypatch.setattr(pretrained, "_bundled_path", lambda name: tmp_path / f"{name}.safetensors")
    assert main(["sr", "example-lr", "-o", str(tmp_path), "--model", "multiscale"]) == 2
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
    assert "| mzsr | tiny | 0 |" in out and "| mzsr | tiny | 1 |" in out
    # with no model named each row says which shipped model made it
    assert main(["eval", "--gt", str(gt), "--steps", "0,1", "--kernel", "g_d_2.0"]) == 0
    out = capsys.readouterr().out
    assert "| **mean** | mzsr | direct_x2 | 0 |" in out and "| **mean** | mzsr | direct_x2_1step | 1 |" in out
    scores = {}
    for name, extra in (("plain", []), ("two", ["--step-search", "2"])):
        assert main(["eval", "--gt", str(gt), "--steps", "1", "--model", model_file, "-o", str(tmp_path / name)]
                    + extra) == 0
        scores[name] = json.loads((tmp_path / name / "results.json").read_text())["scores"][0]["psnr"]
    assert scores["two"] != scores["plain"]  # twice the step: another output, another score


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


@pytest.mark.parametrize("damage,message", [
    ("nan", "layers.0.weight holds NaN or infinite values"),
    ("inf", "layers.0.weight holds NaN or infinite values"),
    ("int", "layers.0.weight is torch.int32, expected floating-point weights"),
])
def test_sr_refuses_a_model_with_bad_weights(tmp_path, capsys, damage, message):
    from safetensors.torch import save_file

    from mzsr_fast import MZSRNet

    state = {k: v.detach().clone() for k, v in MZSRNet().state_dict().items()}
    weight = state["layers.0.weight"]
    state["layers.0.weight"] = {"nan": torch.full_like(weight, float("nan")),
                                "inf": weight.index_fill(0, torch.tensor([1]), float("inf")),
                                "int": torch.ones_like(weight, dtype=torch.int32)}[damage]
    save_file(state, str(tmp_path / "bad.safetensors"), metadata={"scales": "2"})
    assert main(["sr", "example-lr", "-o", str(tmp_path / "out"), "--model", str(tmp_path / "bad.safetensors")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'bad.safetensors'}: {message}" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_sr_bad_model_metadata_names_the_file(tmp_path, model_file, capsys):
    from safetensors.torch import load_file, save_file

    save_file(load_file(model_file), str(tmp_path / "meta.safetensors"), metadata={"scales": "abc"})
    assert main(["sr", "example-lr", "-o", str(tmp_path / "out"), "--model", str(tmp_path / "meta.safetensors")]) == 2
    assert f"{tmp_path / 'meta.safetensors'}: metadata scales='abc'" in capsys.readouterr().err


def _rgb(path, height, width, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


@pytest.mark.parametrize("command", [["sr", "example-lr", "--steps", "1"], ["degrade", "example"],
                                     ["eval", "--gt", "GT", "--method", "bicubic"]])
def test_output_naming_an_existing_file_exits_2_before_any_work(tmp_path, model_file, capsys, command):
    (tmp_path / "gt").mkdir()
    _rgb(tmp_path / "gt" / "a.png", 32, 32)
    (tmp_path / "taken").write_text("a file")
    args = [str(tmp_path / "gt") if a == "GT" else a for a in command] + ["-o", str(tmp_path / "taken")]
    if command[0] == "sr":
        args += ["--model", model_file]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert f"-o: {tmp_path / 'taken'} is an existing file; expected an output folder" in captured.err


def test_eval_report_file_taken_by_a_folder_exits_2_before_any_work(tmp_path, capsys):
    (tmp_path / "gt").mkdir()
    _rgb(tmp_path / "gt" / "a.png", 32, 32)
    (tmp_path / "o" / "results.csv").mkdir(parents=True)
    assert main(["eval", "--gt", str(tmp_path / "gt"), "--method", "bicubic", "-o", str(tmp_path / "o")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and f"{tmp_path / 'o' / 'results.csv'}: is a folder" in captured.err


def test_two_inputs_for_one_output_file_exit_2(tmp_path, model_file, capsys):
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        _rgb(tmp_path / folder / "a.png", 24, 24)
    assert main(["degrade", str(tmp_path / "one"), str(tmp_path / "two"), "-o", str(tmp_path / "o")]) == 2
    assert "would both be written to" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # the folder it made is removed again


def test_degrade_output_is_what_eval_lr_reads(tmp_path, capsys):
    gt = tmp_path / "gt"
    gt.mkdir()
    _rgb(gt / "a_GT.png", 48, 40, 1)
    _rgb(gt / "b.png", 36, 44, 2)
    assert main(["degrade", str(gt), "-o", str(tmp_path / "lr")]) == 0
    assert sorted(p.name for p in (tmp_path / "lr").iterdir()) == ["a_GT_x2.png", "b_x2.png"]
    capsys.readouterr()
    assert main(["eval", "--gt", str(gt), "--lr", str(tmp_path / "lr"), "--method", "bicubic"]) == 0
    with_lr = [line.split("|")[:6] for line in capsys.readouterr().out.splitlines() if "| bicubic |" in line]
    assert main(["eval", "--gt", str(gt), "--method", "bicubic"]) == 0
    degraded_here = [line.split("|")[:6] for line in capsys.readouterr().out.splitlines() if "| bicubic |" in line]
    assert with_lr == degraded_here and len(with_lr) == 3  # two images and the mean, up to PSNR and SSIM
    _rgb(tmp_path / "lr" / "b.png", 18, 22)
    assert main(["eval", "--gt", str(gt), "--lr", str(tmp_path / "lr"), "--method", "bicubic"]) == 2
    assert "--lr: several LR images for b.png" in capsys.readouterr().err


def test_sr_of_a_degraded_file_has_one_scale_suffix_and_one_output_per_n(tmp_path, model_file, capsys):
    _rgb(tmp_path / "bsd_001_x2.png", 24, 26)
    assert main(["sr", str(tmp_path / "bsd_001_x2.png"), "-o", str(tmp_path / "o"), "--steps", "0,2",
                 "--model", model_file]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["bsd_001_x2_mzsr0.png", "bsd_001_x2_mzsr2.png"]
    assert "(48x52 (height x width)" in capsys.readouterr().out


def test_sizes_print_as_height_x_width(tmp_path, capsys):
    _rgb(tmp_path / "wide.png", 10, 16)
    assert main(["degrade", str(tmp_path / "wide.png"), "-o", str(tmp_path / "o")]) == 0
    assert "(5x8 (height x width))" in capsys.readouterr().out
    _rgb(tmp_path / "thin.png", 2, 9)
    assert main(["degrade", str(tmp_path / "thin.png"), "-o", str(tmp_path / "o"), "--scale", "3"]) == 2
    assert "image of 2x9 (height x width) is smaller than the scale 3" in capsys.readouterr().err


def test_debug_is_accepted_after_the_subcommand(tmp_path):
    from mzsr_fast.cli import UsageError

    (tmp_path / "a").write_text("taken")
    with pytest.raises(UsageError, match="a exists"):  # --debug: the traceback
        main(["import-tf", "prefix", "-o", str(tmp_path / "a"), "--debug"])
    with pytest.raises(UsageError, match="a exists"):
        main(["--debug", "import-tf", "prefix", "-o", str(tmp_path / "a")])
    assert main(["import-tf", "prefix", "-o", str(tmp_path / "a")]) == 2


def test_eval_names_the_image_that_fails(tmp_path, capsys):
    gt = tmp_path / "gt"
    gt.mkdir()
    _rgb(gt / "a.png", 32, 32)
    _rgb(gt / "b_tiny.png", 4, 4)
    assert main(["eval", "--gt", str(gt), "--method", "bicubic"]) == 2
    assert f"{gt / 'b_tiny.png'}: gt: image of 4x4 (height x width) is too small" in capsys.readouterr().err
    (gt / "b_tiny.png").unlink()
    (gt / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert main(["eval", "--gt", str(gt), "--method", "bicubic"]) == 2  # a.png scored, c.png reported
    captured = capsys.readouterr()
    error = captured.err.index(f"error: {gt / 'c.png'}: corrupt or truncated image")
    assert error < captured.err.index("a.png bicubic(0)")  # found before a.png was scored
    assert "| a.png | bicubic |" in captured.out and "c.png" not in captured.out
    _rgb(gt / "c.png", 32, 32)
    data = (gt / "c.png").read_bytes()
    (gt / "c.png").write_bytes(data[: len(data) // 2])
    assert main(["eval", "--gt", str(gt), "--method", "bicubic"]) == 2
    assert f"{gt / 'c.png'}: corrupt or truncated image" in capsys.readouterr().err


def test_progress_within_an_image_only_for_long_work(tmp_path, model_file, capsys, monkeypatch):
    from mzsr_fast import cli

    args = ["sr", "example-lr", "-o", str(tmp_path), "--steps", "3", "--model", model_file, "--force"]
    assert main(args) == 0
    assert "step" not in capsys.readouterr().err  # a small image: no progress
    monkeypatch.setattr(cli, "PROGRESS_EVERY", 0.0)
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "butterfly_lr_g_d_2.0.png MZSR(3): step 2/3" in err and "step 3/3" not in err


def test_sr_and_degrade_keep_16_bits(tmp_path, model_file):
    import png

    from mzsr_fast.io import bit_depth

    values = np.random.default_rng(0).integers(0, 65536, (24, 26, 3), dtype=np.uint16)
    with open(tmp_path / "deep.png", "wb") as f:
        png.Writer(26, 24, greyscale=False, bitdepth=16).write(f, values.reshape(24, -1))
    _rgb(tmp_path / "flat.png", 24, 26)
    assert main(["sr", str(tmp_path / "deep.png"), str(tmp_path / "flat.png"), "-o", str(tmp_path / "o"),
                 "--steps", "0", "--model", model_file]) == 0
    assert bit_depth(tmp_path / "o" / "deep_x2_mzsr0.png") == 16
    assert bit_depth(tmp_path / "o" / "flat_x2_mzsr0.png") == 8
    assert main(["degrade", str(tmp_path / "deep.png"), "-o", str(tmp_path / "d")]) == 0
    assert bit_depth(tmp_path / "d" / "deep_x2.png") == 16


def test_sr_decompression_bomb_exits_2_naming_it(tmp_path, model_file, capsys, monkeypatch):
    _rgb(tmp_path / "big.png", 60, 60)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert main(["sr", str(tmp_path / "big.png"), "-o", str(tmp_path / "o"), "--model", model_file]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'big.png'}: refused as a possible decompression bomb" in err and err.count("\n") == 1


def test_sr_refuses_an_image_too_large_for_memory(tmp_path, model_file, capsys, monkeypatch):
    import importlib

    adapt_module = importlib.import_module("mzsr_fast.adapt")
    monkeypatch.setattr(adapt_module, "available_memory", lambda device: 20 * 2 ** 20)
    args = ["sr", "example-lr", "-o", str(tmp_path), "--model", model_file, "--tile", "64"]
    assert main(args + ["--steps", "1", "--adapt-pixels", "all"]) == 2  # 128x128 LR: 2.5 KB per pixel, 40 MiB
    err = capsys.readouterr().err
    assert "butterfly_lr_g_d_2.0.png: 128x128 (height x width) x2 needs about 41 MiB" in err
    assert "more than the 20 MiB available on cpu" in err and err.count("\n") == 1
    assert main(args + ["--steps", "1", "--adapt-pixels", "4096"]) == 0  # 4096 pixels a step: 10 MiB
    assert main(args + ["--steps", "0", "--force"]) == 0  # the output and a 64-pixel tile: 6 MiB


def test_eval_seconds_are_what_the_user_waits_scoring_included(tmp_path, monkeypatch):
    import time

    from mzsr_fast import evaluation, metrics

    (tmp_path / "gt").mkdir()
    _rgb(tmp_path / "gt" / "a.png", 32, 32)
    scoring = metrics.psnr_ssim
    monkeypatch.setattr(metrics, "psnr_ssim", lambda *args: time.sleep(0.25) or scoring(*args))
    [score] = evaluation.evaluate(str(tmp_path / "gt"), "g_d_2.0", 2, [0], method="bicubic")
    assert score.seconds >= 0.25


def test_sr_steps_0_with_a_meta_learned_model_warns_once_for_the_run(tmp_path, recwarn):
    for name in ("a", "b"):
        _rgb(tmp_path / f"{name}.png", 24, 26)
    assert main(["sr", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "o"), "--steps", "0,1",
                 "--kernel", "g_d_2.0", "--model", "direct_x2"]) == 0
    said = [str(w.message) for w in recwarn if w.category.__name__ == "UnadaptedModelWarning"]
    assert len(said) == 1 and said[0].startswith("steps=0: the model 'direct_x2' is meta-learned"), said
    recwarn.clear()
    assert main(["sr", str(tmp_path / "a.png"), "-o", str(tmp_path / "p"), "--steps", "1", "--kernel", "g_d_2.0",
                 "--model", "direct_x2"]) == 0
    assert not [w for w in recwarn if w.category.__name__ == "UnadaptedModelWarning"]


def test_sr_adapt_pixels_all_or_a_budget_and_bad_values(tmp_path, model_file, capsys):
    _rgb(tmp_path / "a.png", 60, 64)
    base = ["sr", str(tmp_path / "a.png"), "--steps", "2", "--kernel", "g_d_2.0", "--model", model_file]
    assert main(base + ["-o", str(tmp_path / "all"), "--adapt-pixels", "all"]) == 0
    assert main(base + ["-o", str(tmp_path / "fits"), "--adapt-pixels", str(60 * 64)]) == 0
    assert main(base + ["-o", str(tmp_path / "budget"), "--adapt-pixels", "1024", "--seed", "3"]) == 0
    whole = read_image(tmp_path / "all" / "a_x2_mzsr2.png")
    assert torch.equal(read_image(tmp_path / "fits" / "a_x2_mzsr2.png"), whole)  # within the budget: whole
    assert not torch.equal(read_image(tmp_path / "budget" / "a_x2_mzsr2.png"), whole)
    capsys.readouterr()
    assert main(base + ["-o", str(tmp_path / "bad"), "--adapt-pixels", "many"]) == 2
    assert "--adapt-pixels: expected a number of pixels or 'all', got 'many'" in capsys.readouterr().err
    assert main(base + ["-o", str(tmp_path / "bad"), "--adapt-pixels", "100"]) == 2
    assert "--adapt-pixels: expected 0 (whole images) or an integer >= 1024, got 100" in capsys.readouterr().err


def test_sr_step_search_default_list_and_bad_values(tmp_path, model_file, capsys):
    """--step-search alone is adapt's STEP_SEARCH (named in the help), with a
    list those multiples: 1 alone is the plain step, 2 alone a different one."""
    from mzsr_fast.adapt import STEP_SEARCH
    from mzsr_fast.cli import build_parser
    _rgb(tmp_path / "a.png", 40, 44)
    base = ["sr", str(tmp_path / "a.png"), "--steps", "1", "--kernel", "g_d_2.0", "--model", model_file]
    for name, extra in (("plain", []), ("one", ["--step-search", "1"]), ("two", ["--step-search", "2"]),
                        ("default", ["--step-search"])):
        assert main(base + ["-o", str(tmp_path / name)] + extra) == 0
    out = {name: read_image(tmp_path / name / "a_x2_mzsr1.png") for name in ("plain", "one", "two")}
    assert torch.equal(out["one"], out["plain"]) and not torch.equal(out["two"], out["plain"])
    sr_help = next(a for a in build_parser()._subparsers._group_actions[0].choices["sr"]._actions
                   if "--step-search" in a.option_strings).help
    assert f"default {','.join(f'{m:g}' for m in STEP_SEARCH)}" in sr_help
    capsys.readouterr()
    assert main(base + ["-o", str(tmp_path / "bad"), "--step-search", "0,1"]) == 2
    assert "--step-search: expected positive finite multiples of the step separated by commas, got '0,1'" in \
        capsys.readouterr().err


def test_no_step_search_turns_off_the_models_own(tmp_path):
    """A model file that asks for a step search: sr uses it, --no-step-search
    gives the plain step (what the same weights without it give)."""
    from mzsr_fast import MZSRNet
    from mzsr_fast.pretrained import ModelInfo, save_model

    net = MZSRNet()
    net.reset_parameters(torch.Generator().manual_seed(0))
    for name, search in (("searching", (0.5, 2.0)), ("plain", ())):
        save_model(tmp_path / f"{name}.safetensors", net, ModelInfo(name, step_search=search))
    _rgb(tmp_path / "a.png", 40, 44)
    base = ["sr", str(tmp_path / "a.png"), "--steps", "1", "--kernel", "g_d_2.0"]
    runs = {"own": ("searching", []), "off": ("searching", ["--no-step-search"]), "plain": ("plain", []),
            "asked": ("plain", ["--step-search", "0.5,2"])}
    for out, (model, extra) in runs.items():
        assert main(base + ["--model", str(tmp_path / f"{model}.safetensors"), "-o", str(tmp_path / out)] + extra) == 0
    image = {out: read_image(tmp_path / out / "a_x2_mzsr1.png") for out in runs}
    assert torch.equal(image["own"], image["asked"]) and torch.equal(image["off"], image["plain"])
    assert not torch.equal(image["own"], image["plain"])


def test_adapt_loss_option_of_sr_and_eval(tmp_path, model_file, capsys):
    """--adapt-loss charbonnier: sr writes adapt's output with that loss, eval
    scores another output than L1's; an unknown name is refused."""
    gt = tmp_path / "gt"
    gt.mkdir()
    _rgb(gt / "a.png", 52, 48)
    base = ["sr", str(gt / "a.png"), "--steps", "1", "--kernel", "g_d_2.0", "--model", model_file]
    for loss in ("l1", "charbonnier"):
        assert main(base + ["-o", str(tmp_path / loss), "--adapt-loss", loss]) == 0
    lr = read_image(gt / "a.png")
    written = read_image(tmp_path / "charbonnier" / "a_x2_mzsr1.png")
    expected = adapt(lr, "g_d_2.0", 2, 1, model=model_file, adapt_loss="charbonnier")
    assert (written - expected).abs().max() <= 0.5 / 255 + 1e-6  # 8-bit rounding
    assert not torch.equal(written, read_image(tmp_path / "l1" / "a_x2_mzsr1.png"))
    scores = {}
    for loss in ("l1", "charbonnier"):
        assert main(["eval", "--gt", str(gt), "--steps", "1", "--model", model_file, "--adapt-loss", loss,
                     "-o", str(tmp_path / f"eval_{loss}")]) == 0
        scores[loss] = json.loads((tmp_path / f"eval_{loss}" / "results.json").read_text())["scores"][0]["psnr"]
    assert scores["l1"] != scores["charbonnier"]
    capsys.readouterr()
    assert main(base + ["-o", str(tmp_path / "bad"), "--adapt-loss", "huber"]) == 2
    assert "--adapt-loss: invalid choice: 'huber'" in capsys.readouterr().err


def test_sr_share_adaptation_writes_every_frame_with_one_estimated_kernel(tmp_path, model_file, capsys):
    frames = [tmp_path / f"frame{i}.png" for i in range(3)]
    for i, frame in enumerate(frames):
        _rgb(frame, 40 + i, 44, seed=i)
    assert main(["sr", *map(str, frames), "-o", str(tmp_path / "o"), "--steps", "1", "--share-adaptation",
                 "--model", model_file]) == 0
    out = capsys.readouterr().out
    assert out.count("estimated shared kernel") == 1 and "3 images MZSR(1):" in out
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [f"frame{i}_x2_mzsr1.png" for i in range(3)]
    assert read_image(tmp_path / "o" / "frame2_x2_mzsr1.png").shape == (3, 84, 88)


def test_sr_help_names_the_default_pixel_budget(capsys):
    from mzsr_fast.adapt import ADAPT_PIXELS
    assert main(["sr", "--help"]) == 0
    assert f"(default {ADAPT_PIXELS})" in " ".join(capsys.readouterr().out.split())


@pytest.mark.slow
def test_the_readmes_phone_photo_command_runs(tmp_path, capsys):
    """The README's large-photo command, on a photo larger than the pixel budget
    (so the windows, the tiled inference and the phase times all run)."""
    import re
    import shlex
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    command = re.search(r"<!-- phone-command -->\n```\n(.*?)\n```", readme).group(1)
    args = shlex.split(command)
    assert args[:2] == ["mzsr-fast", "sr"] and "phone.jpg" in args
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:300, 0:420]
    photo = 128 + 60 * np.sin(x / 9.0)[..., None] * np.cos(y / 11.0)[..., None] + rng.normal(0, 12, (300, 420, 3))
    Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)).save(tmp_path / "phone.jpg", quality=95)
    args = [str(tmp_path / "phone.jpg") if a == "phone.jpg" else str(tmp_path / a) if a == "out" else a
            for a in args[1:]]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert re.search(r"estimated kernel .* in [0-9.]+ s\n", out)
    assert re.search(r"adaptation [0-9.]+ s, inference [0-9.]+ s, writing", out)
    assert read_image(tmp_path / "out" / "phone_x2_mzsr10.png").shape == (3, 600, 840)
