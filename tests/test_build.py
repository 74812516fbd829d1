"""The build: setup.py (what ships) and CMakeLists.txt (what CI compiles) use
the same compile flags, from csrc/compile_flags.txt, without fast-math."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _flags() -> dict[str, list[str]]:
    flags = {}
    for line in (ROOT / "csrc" / "compile_flags.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            language, _, values = line.partition(":")
            flags[language.strip()] = values.split()
    return flags


def test_one_list_of_flags_for_both_builds():
    flags = _flags()
    assert set(flags) == {"cxx", "nvcc"}
    assert "-ffp-contract=off" in flags["cxx"]  # sgd_step rounds twice (csrc/ops/sgd_step_math.h)
    setup = (ROOT / "setup.py").read_text()
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert 'os.path.join(HERE, "csrc", "compile_flags.txt")' in setup
    assert 'csrc/compile_flags.txt" MZSR_FAST_FLAG_LINES' in cmake
    # No other optimisation or math flags written into either build.
    for text in (setup, cmake):
        assert not re.search(r"-O[0-3s]\b|fast.math|-ffp-contract|--fmad|-ftz", text.replace("compile_flags.txt", "")), text


def test_no_fast_math_anywhere():
    """--use_fast_math would make the fp32 Gaussian weights use sin.approx /
    cos.approx (no range reduction), approximate exp and division, and flush
    denormals."""
    for language, values in _flags().items():
        for flag in values:
            assert "fast" not in flag and not flag.startswith(("-ftz", "--ftz", "-fmad", "--fmad")), (language, flag)
