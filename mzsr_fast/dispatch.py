"""Which implementation of each fused op runs, and why the others cannot.

Backends: "cpu" (C++ with OpenMP), "cuda" (CUDA C++), "triton" (Triton; on
CPU tensors only under TRITON_INTERPRET=1) and "torch" (plain PyTorch, the
reference). backend=None picks the first available entry of PREFERENCE for
the tensor's device; the order comes from the benchmarks in benchmarks/.
"""
from __future__ import annotations

import importlib
import os
from functools import lru_cache

import torch

from . import _extension

__all__ = ["BACKENDS", "PREFERENCE", "backends", "set_default_backend", "get_default_backend",
           "unavailable_reason", "choose", "triton_launcher", "NATIVE_OPS", "CPU_ONLY", "cpu_only_ops"]

BACKENDS = ("cpu", "cuda", "triton", "torch")

# Fastest first, per op and device type (benchmarks/results/ has the numbers).
PREFERENCE = {
    "blur_downsample": {"cpu": ("cpu", "torch"), "cuda": ("cuda", "triton", "torch")},
    "sgd_step": {"cpu": ("cpu", "torch"), "cuda": ("cuda", "triton", "torch")},
}
# Ops with a CPU kernel only and no backend choice: their callers decide when to
# use them (conv3x3_winograd: on a GPU, cuDNN picks its own fast convolutions).
CPU_ONLY = ("conv3x3_winograd",)

# The extension's custom ops each fused op needs (the schemas of csrc/ops/<op>.cpp):
# an extension built from older sources that lacks one leaves the backend unavailable.
NATIVE_OPS = {
    "blur_downsample": ("blur_downsample", "blur_downsample_backward", "gaussian_blur_downsample"),
    "sgd_step": ("sgd_step",),
    "conv3x3_winograd": ("conv3x3_winograd", "conv3x3_winograd_weight_grad"),
}

# The Triton module of each op, inside the installed package.
TRITON_MODULES = {"blur_downsample": "mzsr_fast.kernels.blur_downsample",
                  "sgd_step": "mzsr_fast.kernels.sgd_step"}


def triton_launcher(op: str, name: str):
    """The launcher `name` of op's Triton module (TRITON_MODULES[op]), imported
    at its first call: the Triton custom ops are defined where Triton is
    missing, and only calling them (which choose() never does there) fails."""
    def launch(*args, **kwargs):
        return getattr(importlib.import_module(TRITON_MODULES[op]), name)(*args, **kwargs)
    return launch


_default: str | None = None


def set_default_backend(name: str | None) -> None:
    """Process-wide backend used when a call passes backend=None (None: automatic)."""
    global _default
    if name is not None and name not in BACKENDS:
        raise ValueError(f"name: expected one of {BACKENDS} or None, got {name!r}")
    _default = name


def get_default_backend() -> str | None:
    return _default


def _triton_reason(op: str, device_type: str) -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError as error:
        return f"triton is not installed ({error})"
    if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton runs on CPU tensors only under TRITON_INTERPRET=1 (set before import)"
    if device_type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device"
    if device_type not in ("cpu", "cuda"):
        return f"Triton does not run on {device_type} tensors"
    try:
        importlib.import_module(TRITON_MODULES[op])
    except ImportError as error:
        return f"the Triton kernels of {op} could not be imported ({error})"
    return None


@lru_cache(maxsize=None)
def unavailable_reason(backend: str, op: str, device_type: str) -> str | None:
    """None when backend can run op on tensors of device_type, else why not."""
    if backend == "torch":
        return None
    if backend == "triton":
        return _triton_reason(op, device_type)
    if backend in ("cpu", "cuda"):
        if device_type != backend:
            return f"the {backend} backend runs on {backend} tensors, these are on {device_type}"
        if _extension.LOAD_ERROR is not None:
            return _extension.LOAD_ERROR
        missing = [name for name in NATIVE_OPS[op] if not _extension.has_kernel(name, backend.upper())]
        if missing:
            how = "rebuild with CUDA (torch with CUDA and nvcc, or MZSR_FAST_CUDA=1)" if backend == "cuda" \
                else "rebuild the extension"
            return f"mzsr_fast._C has no {backend.upper()} kernel for {', '.join(missing)}: {how}"
        return None
    return f"unknown backend {backend!r}; expected one of {BACKENDS}"


def backends() -> dict[str, dict[str, str]]:
    """For each op and backend: "available" or the reason it is not, on the
    device the backend targets (triton: CUDA when present, else CPU)."""
    target = {"cpu": "cpu", "cuda": "cuda", "torch": "cpu",
              "triton": "cuda" if torch.cuda.is_available() else "cpu"}
    return {op: {backend: unavailable_reason(backend, op, target[backend]) or "available"
                 for backend in BACKENDS}
            for op in PREFERENCE}


def cpu_only_ops() -> dict[str, str]:
    """For each op of CPU_ONLY: "available" or why its CPU kernel is not."""
    return {op: unavailable_reason("cpu", op, "cpu") or "available" for op in CPU_ONLY}


def choose(op: str, device: torch.device, requested: str | None = None) -> str:
    """The backend that runs op on device: the requested one (or the process
    default), else the fastest available. Raises ValueError naming the reason."""
    requested = requested if requested is not None else _default
    device_type = device.type
    if requested is not None:
        if requested not in BACKENDS:
            raise ValueError(f"backend: expected one of {BACKENDS} or None, got {requested!r}")
        reason = unavailable_reason(requested, op, device_type)
        if reason is not None:
            raise ValueError(f"backend: {requested!r} cannot run {op} on {device_type} tensors: {reason}")
        return requested
    for candidate in PREFERENCE[op].get(device_type, ("torch",)):
        if unavailable_reason(candidate, op, device_type) is None:
            return candidate
    return "torch"
