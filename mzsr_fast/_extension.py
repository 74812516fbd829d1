"""Loads the compiled extension mzsr_fast._C and remembers why it failed.

The package imports without it; the C++/CUDA backends are then reported
unavailable with the reason recorded here.
"""
from __future__ import annotations

import importlib

import torch

try:  # importing registers the mzsr_fast:: ops with the dispatcher
    importlib.import_module(f"{__package__}._C")
    LOAD_ERROR: str | None = None
except ImportError as error:  # not built, or built against another torch
    LOAD_ERROR = f"the extension mzsr_fast._C could not be loaded ({error}); reinstall with " \
                 f"`pip install --no-build-isolation -e .`"


def native_op(name: str) -> torch._ops.OpOverload | None:
    """The op mzsr_fast::name as the extension defines it (its default
    overload), or None when the extension is not loaded or has no such op
    (built from older sources)."""
    if LOAD_ERROR is not None:
        return None
    try:
        return getattr(torch.ops.mzsr_fast, name).default
    except (AttributeError, RuntimeError):
        return None


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether mzsr_fast::op has a kernel for dispatch_key ("CPU" or "CUDA")."""
    if LOAD_ERROR is not None:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"mzsr_fast::{op}", dispatch_key)
    except RuntimeError:
        return False
