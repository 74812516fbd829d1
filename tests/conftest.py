"""Shared test setup.

TRITON_INTERPRET must be set before any @triton.jit function is defined, so it
is set here, before the test modules import mzsr_fast, when no GPU is present.

MZSR_FAST_TEST_TIMEOUT=S (seconds; unset or 0: no limit) fails any test whose
setup or call runs longer than S with a TimeoutError, via SIGALRM in the main
thread, so one hung test cannot eat a time-limited session
(scripts/gpu_session.sh sets it). The exception is raised when control is back
in Python: a test stuck inside one C call is failed when that call returns.
"""
import os
import signal
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


TEST_TIMEOUT = float(os.environ.get("MZSR_FAST_TEST_TIMEOUT") or 0)


def _time_limited(item, phase: str):
    if TEST_TIMEOUT <= 0 or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise TimeoutError(f"{item.nodeid}: {phase} ran over the per-test limit of {TEST_TIMEOUT:g} s "
                           f"(MZSR_FAST_TEST_TIMEOUT)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, TEST_TIMEOUT)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    yield from _time_limited(item, "setup")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    yield from _time_limited(item, "the test")


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
