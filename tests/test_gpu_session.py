"""scripts/gpu_session.sh, the one call a lent GPU machine gets, rehearsed on
the CPU: --dry-run runs the same steps (backend checks, tests, benchmarks,
a new and a resumed training run, packing) at tiny sizes, and a copy of the
repository without the compiled extension must fail loudly, not skip green."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mzsr_fast import _extension

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "scripts/gpu_session.sh"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                 reason="needs bash and coreutils timeout")]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_session_images")
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 44, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def _run(root: Path, out: Path, data: Path, minutes: int = 5) -> subprocess.CompletedProcess:
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable)
    env.pop("MZSR_FAST_TEST_TIMEOUT", None)
    return subprocess.run(["bash", str(root / SCRIPT), "--dry-run", "--minutes", str(minutes), "--data", str(data)],
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(_extension.LOAD_ERROR is not None, reason="the dry run uses the built extension")
def test_dry_run_packs_everything_into_at_most_8_files(images, tmp_path):
    out = tmp_path / "out"
    result = _run(ROOT, out, images)
    assert result.returncode == 0, result.stdout + result.stderr
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8, files
    assert all((out / f).stat().st_size <= 16 * 2 ** 20 for f in files)
    summary = (out / "summary.txt").read_text()
    assert "FATAL" not in summary and "SKIPPED" not in summary, summary
    assert "backends: all available" in summary
    assert "tests on the GPU: exit 0" in summary and "tests, the rest: exit 0" in summary
    bench = [f for f in files if f.startswith("benchmarks-cpu-") and f.endswith(".json")]
    assert len(bench) == 1 and json.loads((out / bench[0]).read_text())["benchmarks"]
    with tarfile.open(out / "training-dry_direct_x2.tar.gz") as tar:
        names = tar.getnames()
    assert "dry_direct_x2/latest.safetensors" in names and "dry_direct_x2/config.json" in names
    assert "dry_direct_x2/checkpoints/step-00000002.safetensors" in names  # resumed from iteration 1
    with tarfile.open(out / "logs.tar.gz") as tar:
        logs = {Path(n).name for n in tar.getnames()}
    assert {"tests-gpu.log", "tests-gpu.xml", "tests-rest.log", "benchmarks.log", "backends.log"} <= logs


def test_missing_extension_fails_loudly(images, tmp_path):
    """A repository whose mzsr_fast._C did not build: FATAL naming it in the
    summary and exit 1, though the other steps still run (1 minute: most of
    them are cut or skipped for time, which the summary says). The copy's _C
    is a module that fails to import (a plain missing file could be found
    through an editable install of another checkout)."""
    root = tmp_path / "repo"
    root.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in ("mzsr_fast", ".git"):
            (root / entry.name).symlink_to(entry)
    shutil.copytree(ROOT / "mzsr_fast", root / "mzsr_fast", symlinks=True,
                    ignore=shutil.ignore_patterns("_C*", "__pycache__", "kernels"))
    (root / "mzsr_fast" / "_C.py").write_text('raise ImportError("simulated: the extension did not build")\n')
    out = tmp_path / "out"
    result = _run(root, out, images, minutes=1)
    assert result.returncode == 1, result.stdout + result.stderr
    summary = (out / "summary.txt").read_text()
    assert "FATAL: a backend this run needs is unavailable" in summary, summary
    assert "mzsr_fast._C: the extension mzsr_fast._C could not be loaded (simulated" in summary, summary
    assert "failed=1" in summary
    assert len(list(out.iterdir())) <= 8


def test_per_test_time_limit(tmp_path):
    """MZSR_FAST_TEST_TIMEOUT (tests/conftest.py) fails a test that runs too long
    and lets the others run."""
    (tmp_path / "test_sleepy.py").write_text("import time\n\n\ndef test_slow():\n    time.sleep(30)\n\n\n"
                                             "def test_fast():\n    pass\n")
    env = dict(os.environ, MZSR_FAST_TEST_TIMEOUT="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                             "test_sleepy.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed, 1 passed" in result.stdout
    assert "ran over the per-test limit of 1 s (MZSR_FAST_TEST_TIMEOUT)" in result.stdout
