"""The C allocator's memory-return rule: large freed blocks go back to the operating system.

glibc serves an allocation below its mmap threshold from its heaps and keeps freed heap memory for reuse; the
threshold starts at 128 KiB and rises, each time a larger mapped block is freed, up to 32 MiB. A full-batch
solver that allocates and frees tensors of tens of MB at every step (the L2 path on 19,200 utterance means:
39 MB per forward) then leaves hundreds of MB of freed memory resident, and the probes' memory seems to grow with
the corpus. Fixing the threshold at 4 MiB maps every larger block on its own and unmaps it when freed; smaller
blocks, where the allocator's reuse pays, are served as before (docs/scale.md).

The price is paid in page faults: a minibatch probe's activations (a few to 30 MB a step) are mapped, faulted in and
unmapped at every step. One MLP group took 43.8 s at 4 MiB, 37.2 s at 32 MiB and 34.8 s under glibc's own rule; but
at 32 MiB `perf/probe_memory.py --scales 12,192` held 3.7 GB in its 16x sweep, still growing when stopped, against
1.35 GB at 1x; 4 MiB keeps it within 1.25x (docs/scale.md). Bounded memory wins.
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
