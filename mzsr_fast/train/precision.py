"""bf16 mixed precision for training (--amp): the autocast context and
whether this CPU computes bf16 natively."""
from __future__ import annotations

import torch

__all__ = ["autocast", "cpu_has_native_bf16"]


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on the CPU or CUDA when enabled (bf16 has fp32's range: no
    loss scaling), else a no-op. Parameters, their updates and the losses stay
    fp32; the convolutions run in bf16."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=enabled and device.type in ("cpu", "cuda"))


def cpu_has_native_bf16() -> bool | None:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX flags in
    /proc/cpuinfo); None where that cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        return None
    return None if flags is None else bool({"avx512_bf16", "amx_bf16"} & set(flags))
