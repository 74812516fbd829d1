"""Whether CUDA float32 convolutions and matmuls may use TF32 (10-bit mantissa
products) inside a block of code.

torch's default lets cuDNN convolutions use TF32 on Ampere and later GPUs, so
float32 results on a GPU then differ from the CPU's by about 1e-3 relative.
adapt(precision="fp32") runs in IEEE float32 (no TF32) and precision="tf32"
allows it explicitly. Uses the per-backend fp32_precision settings of newer
torch, else the older allow_tf32 flags (never a mix: torch warns about that).
Only flags change: on the CPU this is a no-op (there, precision="tf32" picks
the Winograd convolutions in the adaptation steps instead: mzsr_fast.adapt_step).
"""
from __future__ import annotations

import contextlib

import torch

__all__ = ["fp32_precision"]


def _new_api() -> bool:
    conv = getattr(torch.backends.cudnn, "conv", None)
    return conv is not None and hasattr(conv, "fp32_precision") and \
        hasattr(torch.backends.cuda.matmul, "fp32_precision")


@contextlib.contextmanager
def fp32_precision(mode: str):
    """mode "ieee": no TF32 in CUDA float32 convolutions and matmuls; "tf32": TF32
    allowed in both. The previous settings are restored on exit."""
    if mode not in ("ieee", "tf32"):
        raise ValueError(f"mode: expected 'ieee' or 'tf32', got {mode!r}")
    if _new_api():
        conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
        saved = conv.fp32_precision, matmul.fp32_precision
        conv.fp32_precision = matmul.fp32_precision = mode
        try:
            yield
        finally:
            conv.fp32_precision, matmul.fp32_precision = saved
    else:
        cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
        saved = cudnn.allow_tf32, matmul.allow_tf32
        cudnn.allow_tf32 = matmul.allow_tf32 = mode == "tf32"
        try:
            yield
        finally:
            cudnn.allow_tf32, matmul.allow_tf32 = saved
