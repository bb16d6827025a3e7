"""Jobs on a few threads: torch releases the GIL inside its ops, so CPU-bound torch work overlaps on threads without
the copies and start-up of processes. The probe groups of a run (benchmark.run.runner) and the references of the
convergence certificate (benchmark.report.convergence) run this way."""
from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed


def workers_for(threads: int) -> int:
    """How many workers of `threads` torch threads each the machine's cores hold (at least one)."""
    return max(1, (os.cpu_count() or 1) // max(1, threads))


def run_parallel(fn: Callable[..., object], jobs: list[tuple], workers: int, name: str = "worker") -> None:
    """fn(*job) for every job on `workers` threads, in the order given; the first error is re-raised after cancelling
    the jobs not yet started. Each job records its own results as it finishes."""
    if workers <= 1:
        for job in jobs:
            fn(*job)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        try:
            for f in as_completed(futures):
                f.result()
        except BaseException:
            for f in futures:
                f.cancel()
            raise
