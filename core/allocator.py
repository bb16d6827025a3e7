"""The C allocator's memory-return rule: large freed blocks go back to the operating system.

glibc serves an allocation below its mmap threshold from its heaps and keeps freed heap memory for reuse; the
threshold starts at 128 KiB and rises, each time a larger mapped block is freed, up to 32 MiB. A full-batch
solver that allocates and frees tensors of tens of MB at every step (the L2 path on 19,200 utterance means:
39 MB per forward) then leaves hundreds of MB of freed memory resident, and the probes' memory seems to grow with
the corpus. Fixing the threshold at 32 MiB maps every larger block on its own and unmaps it when freed; and,
set by hand, it also fixes the heap's trim threshold (128 KiB), so freed memory at a heap's top goes back too.
Smaller blocks, where the allocator's reuse pays, are served from the heaps: a minibatch probe's activations (a few
to 30 MB a step) would otherwise be mapped, page-faulted in and unmapped at every step (4 MiB cost one MLP probe
group 26 % of its time: 43.8 s against 37.2 s at 32 MiB, 34.8 s with glibc's own rule; docs/scale.md).
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)
THRESHOLD = 32 << 20


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
