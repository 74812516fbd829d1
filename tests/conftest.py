"""Shared test setup.

TRITON_INTERPRET must be set before any @triton.jit function is defined, so it
is set here, before the test modules import mzsr_fast, when no GPU is present.
"""
import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The test data kept in the repository: golden outputs of the reference
# implementation (golden/), Set5 ground truth and the reference's Set5 LR inputs
# (data/Set5, data/mzsr_g20). $MZSR_FAST_SHARED points at another copy.
SHARED = Path(os.environ.get("MZSR_FAST_SHARED", Path(__file__).resolve().parent / "data"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The reference data the numerics tests compare against (tests/data, or $MZSR_FAST_SHARED)."""
    if not (SHARED / "golden").is_dir():
        pytest.skip(f"test data not found at {SHARED} (unset MZSR_FAST_SHARED to use tests/data)")
    return SHARED


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny problems: fastest, and it keeps OpenMP
    barriers from stalling when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
