"""Backend parametrisation of the op tests (tests/ops/): one pytest param per
backend of an op, marked skip with the reason from
mzsr_fast.dispatch.unavailable_reason when the backend cannot run here.

    from op_backends import backend_params, device_of

    @pytest.fixture(params=backend_params("blur_downsample"))
    def backend(request):
        return request.param

(tests/ is on sys.path: pytest puts the folder of tests/conftest.py there.)
"""
from __future__ import annotations

import pytest
import torch

from mzsr_fast import dispatch


def device_of(backend: str) -> str:
    """The device type of the tensors a backend is tested on: Triton on CUDA
    when there is a GPU, else on CPU under the interpreter (tests/conftest.py)."""
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def backend_params(op: str, backends=dispatch.BACKENDS) -> list:
    """pytest.param(name) for each backend of op, skipped with the reason where it is unavailable."""
    params = []
    for name in backends:
        reason = dispatch.unavailable_reason(name, op, device_of(name))
        marks = () if reason is None else pytest.mark.skip(reason=f"backend {name!r} unavailable: {reason}")
        params.append(pytest.param(name, marks=marks))
    return params
