"""MZSR(n) against the original: the reference implementation (TensorFlow,
JWSoh/MZSR), run from the user's checkout by its own meta-test code, side by
side with mzsr_fast.adapt. Same checkpoint (the reference's, imported by
import_tf_checkpoint for ours), same LR image, kernel (g_d_2.0), steps and
learning rates (the reference's direct x2 schedule), adaptation on the whole
image (adapt_pixels=0: the 256x256 one is over the default pixel budget), one
thread each; the rounds alternate between the two. Reports the largest output difference and
the time ratio ours / original (median over the rounds) for our fp32, tf32 (the
fast float32 mode: Winograd convolutions in the steps too) and bf16 (the
original is fp32). fp32 fails beyond 1e-5 of the original's output, tf32
beyond 1e-3 (TOLERANCE).

    MZSR_REFERENCE_DIR=../MZSR MZSR_REFERENCE_PYTHON=../tfvenv/bin/python \\
        pytest benchmarks/bench_reference.py --benchmark-only -s

MZSR_REFERENCE_DIR: a checkout of the reference; MZSR_REFERENCE_PYTHON: an
interpreter with TensorFlow (1.15 or 2.x), numpy, scipy and imageio, which runs
benchmarks/reference_worker.py (default: this one). Without them the tests
skip, saying what is missing. Timed on both sides: the son's degradation, the
n steps and the final SR pass (not the checkpoint's restore); ours is the
whole mzsr_fast.adapt call.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import mzsr_fast
from mzsr_fast.cli import example_path
from mzsr_fast.pretrained import CATALOGUE, import_tf_checkpoint, load_model

WORKER = Path(__file__).with_name("reference_worker.py")
DIR_VARIABLE, PYTHON_VARIABLE = "MZSR_REFERENCE_DIR", "MZSR_REFERENCE_PYTHON"
# The reference's checkpoints, first found first: its meta-trained direct x2
# model, else its pretrained network (the same network; the numbers compared
# do not depend on how good the weights are).
CHECKPOINTS = ("Model/Directx2", "Pretrained/Pretrained")
# The reference's test.py model number for direct x2 (its schedule 2e-2, 1e-2 x3,
# then 5e-3: CATALOGUE["direct_x2"].schedule) and the matching kernel.
METHOD, MODEL_KIND, KERNEL, SCALE = 0, "direct_x2", "g_d_2.0", 2
# What the reference needs besides its own files.
MODULES = ("tensorflow", "numpy", "scipy", "imageio")
IMAGES = {"butterfly-lr": "example-lr", "butterfly": "example"}  # LR inputs: 128x128 and 256x256
ROUNDS = 5
# Largest absolute output difference allowed: fp32 follows the original's
# arithmetic in the steps' forward and input gradients (its weight gradients
# are sums in another order); tf32 (all of the steps' convolutions by Winograd)
# rounds differently, and with large rates the steps' sign-of-error gradients
# carry that to about 1e-4 after ten steps.
TOLERANCE = {"fp32": 1e-5, "tf32": 1e-3}


class Unavailable(Exception):
    """The reference cannot be run here; the message says why."""


@dataclass(frozen=True)
class Reference:
    checkout: Path
    python: str
    checkpoint: Path  # prefix: CHECKPOINT.index and CHECKPOINT.data-00000-of-00001


def find_checkpoint(checkout: Path) -> Path:
    """The first of CHECKPOINTS in checkout whose index and data files are both there."""
    for name in CHECKPOINTS:
        prefix = checkout / name
        if all(Path(f"{prefix}{ext}").is_file() for ext in (".index", ".data-00000-of-00001")):
            return prefix
    raise Unavailable(f"{checkout}: none of the reference's checkpoints {', '.join(CHECKPOINTS)} "
                      "(.index with .data-00000-of-00001) is there")


def missing_modules(python: str) -> list[str]:
    """Which of MODULES python cannot import."""
    probe = "import importlib.util, sys; print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))"
    try:
        done = subprocess.run([python, "-c", probe, *MODULES], capture_output=True, text=True, timeout=60)
    except OSError as error:
        raise Unavailable(f"{PYTHON_VARIABLE}={python}: cannot run it ({error.strerror})") from None
    if done.returncode != 0:
        raise Unavailable(f"{PYTHON_VARIABLE}={python}: exit code {done.returncode}: {done.stderr.strip()[-200:]}")
    return done.stdout.split()


def reference_setup(environ=os.environ) -> Reference:
    """The reference named by the environment; Unavailable saying what is missing."""
    where = environ.get(DIR_VARIABLE)
    if not where:
        raise Unavailable(f"{DIR_VARIABLE} is not set: set it to a checkout of the reference (JWSoh/MZSR) "
                          "to compare against the original")
    checkout = Path(where)
    absent = [f for f in ("test.py", "model.py", "imresize.py") if not (checkout / f).is_file()]
    if absent:
        raise Unavailable(f"{DIR_VARIABLE}={where}: not a checkout of the reference (no {', '.join(absent)})")
    checkpoint = find_checkpoint(checkout)
    python = environ.get(PYTHON_VARIABLE) or sys.executable
    missing = missing_modules(python)
    if missing:
        raise Unavailable(f"{python} cannot import {', '.join(missing)} (set {PYTHON_VARIABLE} to an interpreter "
                          "that has TensorFlow, numpy, scipy and imageio)")
    return Reference(checkout, python, checkpoint)


class ReferenceWorker:
    """benchmarks/reference_worker.py running in the reference's interpreter,
    one thread, kept alive across calls; images go both ways as .npy files."""

    def __init__(self, reference: Reference, kernel: np.ndarray, scale: int, method: int):
        self.folder = tempfile.TemporaryDirectory(prefix="mzsr-reference-")
        kernel_path = os.path.join(self.folder.name, "kernel.npy")
        np.save(kernel_path, np.asarray(kernel, dtype=np.float64))
        threads = {v: "1" for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                    "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")}
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", **threads)
        self.log = open(os.path.join(self.folder.name, "worker.log"), "w+")
        self.process = subprocess.Popen(
            [reference.python, str(WORKER), str(reference.checkout), str(reference.checkpoint), kernel_path,
             str(scale), str(method)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
            text=True, env=env)
        self.version = self._answer()["ready"]
        self.calls = 0

    def _answer(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            raise RuntimeError(f"the reference worker exited ({self.process.returncode}): {self.log_tail()}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"the reference worker: {answer['error']}")
        return answer

    def log_tail(self, chars: int = 2000) -> str:
        self.log.seek(0)
        return self.log.read()[-chars:]

    def adapt(self, lr: torch.Tensor, steps: int) -> tuple[np.ndarray, float, float]:
        """The reference's MZSR(steps) of lr [3, H, W]: (SR [3, sH, sW] float32,
        seconds, of them seconds in TensorFlow's Session.run)."""
        self.calls += 1
        image = os.path.join(self.folder.name, f"lr-{self.calls}.npy")
        output = os.path.join(self.folder.name, f"sr-{self.calls}.npy")
        np.save(image, lr.detach().cpu().float().permute(1, 2, 0).numpy())
        self.process.stdin.write(json.dumps({"image": image, "steps": steps, "output": output}) + "\n")
        self.process.stdin.flush()
        answer = self._answer()
        sr = np.load(output).transpose(2, 0, 1)
        for path in (image, output):
            os.remove(path)
        return sr, answer["seconds"], answer["network_seconds"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)
        self.log.close()
        self.folder.cleanup()


def paired_ratio(ours: list[float], original: list[float]) -> float:
    """The median over rounds of ours / original, each round's two runs back to
    back (steadier than a ratio of medians while the load changes)."""
    return statistics.median(a / b for a, b in zip(ours, original, strict=True))


def format_row(name: str, shape, steps: int, precision: str, ours: list[float], original: list[float],
               original_network: list[float], max_diff: float) -> str:
    """One markdown row: the medians, ours / original (paired_ratio), and the largest |difference|."""
    return (f"| {name} {shape[-2]}x{shape[-1]} | MZSR({steps}) | {precision} | {statistics.median(ours):.3f} s | "
            f"{statistics.median(original):.3f} s ({statistics.median(original_network):.3f} s in TF) | "
            f"{paired_ratio(ours, original):.2f} | {max_diff:.1e} |")


HEADER = ("| LR image | steps | precision | ours | original (of it in TF's session) | ours / original | max abs diff |\n"
          "|---|---|---|---|---|---|---|")


@pytest.fixture(scope="module")
def reference():
    try:
        found = reference_setup()
    except Unavailable as why:
        pytest.skip(str(why))
    with tempfile.TemporaryDirectory() as folder:
        model = os.path.join(folder, "reference.safetensors")
        import_tf_checkpoint(found.checkpoint, model, mode="direct", scales=(SCALE,))
        net, info = load_model(model)
    assert info.schedule == CATALOGUE[MODEL_KIND].schedule
    worker = ReferenceWorker(found, mzsr_fast.preset(KERNEL).kernel.numpy(), SCALE, METHOD)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        print(f"\nreference: {found.checkpoint}, TensorFlow {worker.version}, one thread each\n{HEADER}")
        yield worker, net, found
    finally:
        torch.set_num_threads(threads)
        worker.close()


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
@pytest.mark.parametrize("steps", [1, 10])
@pytest.mark.parametrize("name", list(IMAGES))
def test_against_reference(benchmark, reference, name, steps, precision):
    worker, net, found = reference
    lr = mzsr_fast.io.read_image(example_path(IMAGES[name]))
    kernel = mzsr_fast.preset(KERNEL).kernel.float()
    original, original_network, ours, outputs = [], [], [], {}

    def run_original():  # before each of our rounds (pedantic's untimed setup)
        outputs["original"], seconds, network = worker.adapt(lr, steps)
        original.append(seconds)
        original_network.append(network)

    def run_ours():
        start = time.perf_counter()
        outputs["ours"] = mzsr_fast.adapt(lr, kernel, SCALE, steps, model=net, mode="direct", precision=precision,
                                          adapt_pixels=0)  # the whole image, as the original adapts
        ours.append(time.perf_counter() - start)

    benchmark.pedantic(run_ours, setup=run_original, rounds=ROUNDS, warmup_rounds=1)
    rounds = min(ROUNDS, len(ours))  # the warm-up round is not counted (one round in all with --benchmark-disable)
    ours, original, original_network = ours[-rounds:], original[-rounds:], original_network[-rounds:]
    max_diff = float(np.abs(outputs["ours"].numpy() - outputs["original"]).max())
    benchmark.extra_info.update({
        "ours_s": ours, "original_s": original, "original_network_s": original_network,
        "ours_over_original": paired_ratio(ours, original), "max_abs_diff": max_diff,
        "checkpoint": found.checkpoint.name, "tensorflow": worker.version})
    print(format_row(name, lr.shape, steps, precision, ours, original, original_network, max_diff))
    if precision in TOLERANCE:
        assert max_diff <= TOLERANCE[precision], \
            f"{precision} output differs from the original's by {max_diff:.2e} > {TOLERANCE[precision]}"
