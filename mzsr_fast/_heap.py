"""Memory freed by CPU tensors kept for the next ones (glibc's malloc).

CPU tensors come from malloc. glibc hands a freed block larger than its mmap
threshold straight back to the system (munmap), and the free top of its
heap beyond its trim threshold; both thresholds follow the freed sizes, up to
32 MiB and 64 MiB. The next tensor of that size then starts on fresh pages:
one page fault per 4 KiB, each page zero-filled by the kernel. An adaptation
step and an inference pass allocate and free activations of 4 MiB to 300 MiB
(64 channels of the pixels seen) layer after layer and step after step, so
without a pool they pay that for nearly every one of them (TensorFlow keeps
its own pool; benchmarks/results/adapt-step-2026-12-06.md has the cost).

    with reuse_freed_memory():
        ...   # freed memory stays with malloc and the next tensors reuse it
    give_back()  # optional: what malloc kept goes back to the system

Inside the block malloc keeps what is freed (thresholds of 1 GiB). Leaving
the outermost block sets them to 32 MiB (mmap) and 64 MiB (trim), where
glibc's own adjustment ends in a process that frees tensors of 32 MiB or
more, and they stay so; the memory kept is reused by the next block (a next
adaptation of an image of the same size starts on it: 3-6% faster than on
fresh pages). Kept memory counts as used for the system (MemAvailable, which
the memory check reads) and for whatever the caller allocates next, such as
the 8-bit output of a 48-megapixel image, so after large work give_back
returns it (malloc_trim). Only the CPU's memory is concerned (a CUDA
device's has torch's caching allocator); does nothing with a C library other
than glibc.
"""
from __future__ import annotations

import contextlib
import ctypes
import platform
import threading
from functools import cache


__all__ = ["reuse_freed_memory", "give_back"]

# mallopt's parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP = 1 << 30  # bytes: no block of up to this size goes back while inside
_AFTER_MMAP, _AFTER_TRIM = 32 << 20, 64 << 20  # glibc's dynamic thresholds at their ceiling

_lock = threading.Lock()
_depth = 0


@cache
def _libc():
    """glibc's handle, None elsewhere."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def _set_thresholds(libc, mmap: int, trim: int) -> None:
    libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(mmap))
    libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(trim))


@contextlib.contextmanager
def reuse_freed_memory():
    """Keep memory freed inside the block for the tensors allocated after it
    (see the module's docstring); a no-op unless the C library is glibc.
    Blocks may nest and run in several threads at once."""
    global _depth
    libc = _libc()
    if libc is None:
        yield
        return
    with _lock:
        if _depth == 0:
            _set_thresholds(libc, _KEEP, _KEEP)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _set_thresholds(libc, _AFTER_MMAP, _AFTER_TRIM)


def give_back() -> None:
    """Return the free memory malloc holds to the system: the free pages of
    every thread's arena, all but 64 MiB at the top of the main heap. A
    no-op unless the C library is glibc."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(ctypes.c_size_t(_AFTER_TRIM))
