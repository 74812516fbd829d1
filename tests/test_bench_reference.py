"""benchmarks/bench_reference.py's plumbing, without TensorFlow: why it skips,
which checkpoint it takes, the worker's .npy exchange (against a stand-in
checkout and a stand-in tensorflow module) and the report's rows."""
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

# The name pytest gives the benchmark file when it collects benchmarks/ (no package there).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_reference as bench  # noqa: E402

# A stand-in for the reference's test.Test: "restoring" resets an offset, each
# adaptation step (one Session.run) adds 0.01 to it, and the SR is the LR
# repeated `scale` times each way plus the offset.
FAKE_TEST = '''
import numpy as np
import tensorflow as tf


class Session:
    def run(self, step):
        return step()


class Test:
    def __init__(self, model_path, save_path, kernel, scale, conf, method_num, num_of_adaptation):
        assert conf.options["intra_op_parallelism_threads"] == conf.options["inter_op_parallelism_threads"] == 1
        self.scale, self.sess = int(scale), Session()

    def initialize(self):
        print("restored")  # the reference's prints must not reach the protocol's stdout
        self.offset = 0.0

    def train(self):
        for _ in range(self.max_iters):
            self.sess.run(self.step)

    def step(self):
        self.offset += 0.01

    def forward_pass(self, image, output_shape):
        sr = image.repeat(self.scale, 0).repeat(self.scale, 1) + self.offset
        assert sr.shape == tuple(output_shape)
        return np.clip(sr, 0, 1)
'''
FAKE_TF_V1 = '''
__version__ = "stand-in"


def disable_v2_behavior():
    pass


class ConfigProto:
    def __init__(self, **options):
        self.options = options
'''


def _checkout(root: Path, checkpoints=("Pretrained/Pretrained",)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in ("test.py", "model.py", "imresize.py"):
        (root / name).write_text(textwrap.dedent(FAKE_TEST) if name == "test.py" else "")
    for name in checkpoints:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        for ext in (".index", ".data-00000-of-00001"):
            (root / f"{name}{ext}").write_bytes(b"")
    return root


def test_unset_directory_skips_with_the_variable_to_set():
    with pytest.raises(bench.Unavailable, match="MZSR_REFERENCE_DIR is not set"):
        bench.reference_setup({})


def test_a_folder_without_the_reference_s_code_is_named(tmp_path):
    with pytest.raises(bench.Unavailable, match=r"not a checkout of the reference \(no test.py, model.py, imresize.py\)"):
        bench.reference_setup({"MZSR_REFERENCE_DIR": str(tmp_path)})


def test_a_checkout_without_checkpoints_is_named(tmp_path):
    with pytest.raises(bench.Unavailable, match="Model/Directx2, Pretrained/Pretrained"):
        bench.reference_setup({"MZSR_REFERENCE_DIR": str(_checkout(tmp_path, checkpoints=()))})


def test_the_meta_trained_checkpoint_is_taken_when_its_data_file_is_there(tmp_path):
    both = _checkout(tmp_path / "a", ("Model/Directx2", "Pretrained/Pretrained"))
    assert bench.find_checkpoint(both) == both / "Model/Directx2"
    partial = _checkout(tmp_path / "b")
    (partial / "Model").mkdir()
    (partial / "Model/Directx2.index").write_bytes(b"")  # a clone without the large data files
    assert bench.find_checkpoint(partial) == partial / "Pretrained/Pretrained"


def test_an_interpreter_without_tensorflow_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "MODULES", ("numpy", "no_such_module_here"))
    environ = {"MZSR_REFERENCE_DIR": str(_checkout(tmp_path)), "MZSR_REFERENCE_PYTHON": sys.executable}
    with pytest.raises(bench.Unavailable, match=f"{sys.executable} cannot import no_such_module_here \\("):
        bench.reference_setup(environ)
    with pytest.raises(bench.Unavailable, match="MZSR_REFERENCE_PYTHON=.*nowhere: cannot run it"):
        bench.reference_setup(dict(environ, MZSR_REFERENCE_PYTHON=str(tmp_path / "nowhere")))


def test_the_worker_exchanges_images_and_restores_before_each_request(tmp_path, monkeypatch):
    fake_tf = tmp_path / "site" / "tensorflow"
    (fake_tf / "compat").mkdir(parents=True)
    (fake_tf / "__init__.py").write_text("from . import compat\n")
    (fake_tf / "compat" / "__init__.py").write_text("from . import v1\n")
    (fake_tf / "compat" / "v1.py").write_text(textwrap.dedent(FAKE_TF_V1))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    checkout = _checkout(tmp_path / "checkout")
    reference = bench.Reference(checkout, sys.executable, checkout / "Pretrained/Pretrained")
    worker = bench.ReferenceWorker(reference, np.ones((3, 3)) / 9, scale=2, method=0)
    try:
        assert worker.version == "stand-in"
        lr = torch.rand(3, 4, 5) * 0.5
        for steps in (3, 1):
            sr, seconds, network = worker.adapt(lr, steps)
            assert sr.shape == (3, 8, 10) and sr.dtype == np.float32
            expected = lr.repeat_interleave(2, 1).repeat_interleave(2, 2).numpy() + 0.01 * steps
            np.testing.assert_allclose(sr, expected, atol=1e-6)
            assert 0 <= network <= seconds
        with pytest.raises(RuntimeError, match=r"image: expected \[H, W, 3\], got \[4, 5, 1\]"):
            worker.adapt(lr[:1], 1)
        assert worker.adapt(lr, 0)[0].shape == (3, 8, 10)  # still serving after a refused request
        assert "restored" in worker.log_tail()
    finally:
        worker.close()


def test_the_ratio_pairs_each_round_s_two_runs():
    # the rounds say 0.25, 0.5, 0.9 (median 0.5); a ratio of the medians would say 1 / 4
    assert bench.paired_ratio([1.0, 1.0, 9.0], [4.0, 2.0, 10.0]) == 0.5
    with pytest.raises(ValueError):
        bench.paired_ratio([1.0], [1.0, 2.0])


def test_a_report_row_gives_medians_ratio_and_difference():
    row = bench.format_row("butterfly", (3, 128, 128), 10, "bf16", [1.0, 1.0, 9.0], [4.0, 2.0, 10.0],
                           [3.0, 4.0, 5.0], 7.7e-7)
    assert row == "| butterfly 128x128 | MZSR(10) | bf16 | 1.000 s | 4.000 s (4.000 s in TF) | 0.50 | 7.7e-07 |"
    assert row.count("|") == bench.HEADER.splitlines()[0].count("|")
