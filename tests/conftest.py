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

SHARED = Path(os.environ.get("MZSR_FAST_SHARED", Path(__file__).resolve().parents[2] / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's shared data (../shared next to the checkout, or $MZSR_FAST_SHARED)."""
    if not (SHARED / "golden").is_dir():
        pytest.skip(f"shared data not found at {SHARED} (set MZSR_FAST_SHARED)")
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
