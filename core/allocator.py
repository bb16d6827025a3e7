"""The C allocator's rules: freed blocks stay in the heap while probe groups train, an upstream pretrains or
fine-tunes, or batches are extracted, and large blocks go back to the operating system as soon as they are freed the
rest of the time.

glibc serves a large allocation (from 128 KiB, a threshold that rises up to 32 MiB) by mapping pages of its own and
unmaps them when the block is freed. A minibatch probe allocates and frees its activations at every step (one MLP
group of 12 probes: several (12, 2,048, 768) tensors of 38 MB), so every step mapped them, took a page fault per
4 KiB page to zero them and unmapped them again: a quarter of the main job's CPU time was spent in the kernel.
`keep_freed_blocks` serves every block from the heap instead (no mapping per step: the freed activations are reused
at the next step), and `release` hands everything freed back to the OS (`malloc_trim`) at the end of each pass over
a group's streamed data, each point of an L2 path and each group, so what a process holds is what is live
plus one pass's slack, not the slack of everything it ran before (perf/probe_groups.py --mapped measures both rules
on one group; perf/probe_memory.py measures how memory grows with the corpus: docs/scale.md).

A pass over rows held in memory frees only its activations, which the next pass allocates again: it keeps them
(malloc_trim drops the pages of every free block, and each page was faulted in again at the next pass's first step).

Extraction is the same shape: every batch allocates and frees the upstream's activations, and a base-sized model's
are large (wav2vec 2.0 BASE's convolutions over 64 s of audio a batch). Mapped, a quarter of its CPU time was the
kernel's; kept, the same bits come 1.3x faster, the freed activations of the one or two batches in flight held
(perf/extract_allocator.py).

Outside those (planning, labels, whitening, certificates) a process keeps `map_large_blocks`: every block of 4 MiB
or more mapped on its own and unmapped when freed. Those phases allocate large transients between long-lived
objects, and kept in the heap they stayed resident: with the heap rule everywhere, the 16x corpus's probe sweep
peaked at 1.94 GB while it prepared its inputs, against 1.37 GB with blocks mapped (docs/scale.md).

Where the C library is not glibc nothing is changed: the functions return False.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # mallopt parameter numbers (malloc.h)
MMAP_MAX = 65536  # glibc's default M_MMAP_MAX: mapped blocks allowed again
TRIM = 256 << 20  # free memory at the top of a heap kept for reuse between steps, at most
MAPPED = 4 << 20  # `map_large_blocks`' threshold: the rule that maps every larger block (the comparison's baseline)


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):  # not glibc
        return None
    return libc


def _mallopt(*settings: tuple[int, int]) -> bool:
    libc = _libc()
    return libc is not None and all(libc.mallopt(param, value) == 1 for param, value in settings)


def keep_freed_blocks(trim: int = TRIM) -> bool:
    """Serve every allocation from the heap (no block is mapped on its own) and keep up to `trim` bytes freed at a
    heap's top for the next allocation; False where the C library is not glibc (nothing changed)."""
    return _mallopt((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, trim))


def map_large_blocks(threshold: int = MAPPED) -> bool:
    """The rule outside training: every block of `threshold` bytes or more mapped on its own and unmapped when freed
    (memory back at once, a page fault per page at every allocation)."""
    return _mallopt((M_MMAP_MAX, MMAP_MAX), (M_MMAP_THRESHOLD, threshold), (M_TRIM_THRESHOLD, 2 * threshold))


def release() -> bool:
    """Return the freed memory of every heap to the OS (glibc's malloc_trim); False where there is none to ask."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


_depth = 0  # reuse_freed_blocks contexts open: the outermost sets the rule and restores it
_depth_lock = threading.Lock()


@contextmanager
def reuse_freed_blocks() -> Iterator[None]:
    """`keep_freed_blocks` inside (probe groups train, an upstream pretrains or fine-tunes, batches are extracted), then
    everything freed back to the OS and `map_large_blocks` again. Reentrant: only the outermost context changes the
    rule."""
    global _depth
    with _depth_lock:
        _depth += 1
        if _depth == 1:
            keep_freed_blocks()
    try:
        yield
    finally:
        with _depth_lock:
            _depth -= 1
            if _depth == 0:
                release()
                map_large_blocks()
