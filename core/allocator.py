"""The C allocator's memory-return rule: large freed blocks go back to the operating system.

glibc serves an allocation below its mmap threshold from its heaps and keeps freed heap memory for reuse; the
threshold starts at 128 KiB and rises, each time a larger mapped block is freed, up to 32 MiB. A full-batch
solver that allocates and frees tensors of tens of MB at every step (the L2 path on 19,200 utterance means:
39 MB per forward) then leaves hundreds of MB of freed memory resident, and the probes' memory seems to grow with
the corpus. Fixing the threshold at 4 MiB maps every larger block on its own and unmaps it when freed; smaller
blocks, where the allocator's reuse pays, are served as before (docs/scale.md).
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)
THRESHOLD = 4 << 20


def return_large_blocks(threshold: int = THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes; False where the C library is not glibc (nothing changed)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, threshold) == 1
