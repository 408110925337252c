"""Keep glibc from handing big tensor buffers back to the OS after every batch.

By default glibc serves allocations of more than a few MB with fresh pages (mmap, or heap
memory it trimmed on the last free), so every batch tensor of 10+ MB pays a page fault per 4 KB
on first touch. On a 2-core CPU that halved the speed of the batched input pipeline at batch
256 (41k vs 79k images/s). PyTorch's CPU tuning guide suggests jemalloc/tcmalloc for the same
reason; raising glibc's thresholds gets the same effect with nothing to install. Only the CLI
calls this: a library should not change its host process's allocator.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
KEEP_BYTES = 256 << 20     # freed memory glibc may keep for reuse instead of returning to the OS
MMAP_ABOVE = 64 << 20      # allocations larger than this still get their own mapping


def tune_malloc() -> bool:
    """Raise glibc's trim and mmap thresholds; False where there is no glibc (macOS, musl, Windows)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_ABOVE)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
