"""The golden files in tests/data/golden (outputs of the reference
implementation): loading them, and comparing an image with one.

Tests import it as `from golden import ...` (tests/ is on sys.path: pytest
puts the folder of tests/conftest.py there).
"""
from __future__ import annotations

import numpy as np
import torch

ATOL = 1e-10  # the golden outputs are float64: agreement to rounding


def golden_cases(shared_dir, pattern: str, count: int | None = None):
    """(file name, arrays) of each golden .npz file matching pattern, in name
    order; asserts that there are count of them (some, when count is None)."""
    files = sorted((shared_dir / "golden").glob(pattern))
    assert len(files) == count if count is not None else files
    for path in files:
        with np.load(path) as data:
            yield path.name, data


def chw(array: np.ndarray) -> torch.Tensor:
    """A golden [H, W, C] image as a [C, H, W] tensor."""
    return torch.from_numpy(array).permute(2, 0, 1)


def assert_image_matches(out: torch.Tensor, expected: np.ndarray, name: str = "") -> None:
    """out [C, H, W] equals the golden [H, W, C] image to ATOL (name: shown on failure)."""
    np.testing.assert_allclose(out.detach().permute(1, 2, 0).numpy(), expected, rtol=0, atol=ATOL, err_msg=name)
