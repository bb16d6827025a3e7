"""Run each task in a fresh process that shares nothing with the caller, and survive one that crashes.

For C libraries with process-global state (libespeak-ng keeps state between utterances): every task gets its
own process, forked from a clean fork server that preloads the task's module and never runs a task itself,
so a task never inherits the caller's threads, OpenMP pools or an already initialised copy of the library
(forking the caller directly once crashed a synthesis child with SIGSEGV in CI, forked from a pytest process
that had itself loaded libespeak-ng and run torch threads; multiprocessing.Pool then waited forever for the
lost task until CI's time ran out). At most `workers` processes
run at once. A process killed by a signal is run again, up to `attempts` times in all: a task's output depends
only on its arguments (fresh process, own seed), so a retry cannot change it. An exception raised by a task
stops the run at once with the task's traceback. Nothing waits on a dead process.

Scripts that call this need the usual `if __name__ == "__main__":` guard: each child imports the caller's main
module, as with multiprocessing's spawn (Python 3.11's forkserver never preloads it: its server looks for a
"main_path" that the preparation data names "init_main_from_path"). So a script keeps its top-level imports light
and imports the rest under its guard: run_benchmark.py importing the harness at the top cost every synthesis child
0.15 s, 19 s of a 52 s corpus build.
"""
from __future__ import annotations

import multiprocessing as mp
import pickle
import signal
import tempfile
import traceback
import warnings
from collections import deque
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from core.io import atomic_write_bytes


class IsolatedTaskError(RuntimeError):
    """A task raised, or its process died `attempts` times."""


def _context(preload: Sequence[str]) -> mp.context.BaseContext:
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(list(preload))  # takes effect when the server starts (once per caller)
        return ctx
    return mp.get_context("spawn")


def _child(fn: Callable[[Any], Any], task: Any, out: str) -> None:
    try:
        payload = (True, fn(task))
    except BaseException:  # reported to the parent, which raises it with the task's name
        payload = (False, traceback.format_exc())
    atomic_write_bytes(out, pickle.dumps(payload))


def _why(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def run_isolated(fn: Callable[[Any], Any], tasks: Sequence[Any], names: Sequence[str], workers: int,
                 attempts: int = 3) -> Iterator[tuple[int, Any]]:
    """Yield (task index, fn(task)) in completion order, each computed in its own fresh process."""
    if workers < 1 or attempts < 1:
        raise ValueError(f"workers and attempts must be >= 1, got {workers} and {attempts}")
    if len(names) != len(tasks):
        raise ValueError("run_isolated needs one name per task")
    ctx = _context([fn.__module__])
    todo = deque((i, 1) for i in range(len(tasks)))
    running: dict[int, tuple[mp.process.BaseProcess, int, int, Path]] = {}  # sentinel -> (process, task, try, out)
    with tempfile.TemporaryDirectory(prefix="isolated-") as tmp:
        try:
            while todo or running:
                while todo and len(running) < workers:
                    i, attempt = todo.popleft()
                    out = Path(tmp) / f"{i}.{attempt}.pkl"
                    p = ctx.Process(target=_child, args=(fn, tasks[i], str(out)), name=f"isolated-{names[i]}")
                    p.start()
                    running[p.sentinel] = (p, i, attempt, out)
                for sentinel in wait(list(running)):
                    p, i, attempt, out = running.pop(sentinel)
                    p.join()
                    if out.is_file():
                        ok, value = pickle.loads(out.read_bytes())
                        out.unlink()
                        if not ok:
                            raise IsolatedTaskError(f"{names[i]} failed:\n{value}")
                        yield i, value
                    elif p.exitcode is not None and p.exitcode >= 0:  # it exited without running the task
                        raise IsolatedTaskError(
                            f"{names[i]}: its process exited ({_why(p.exitcode)}) before running the task; see its "
                            "error above (a script that starts this work needs `if __name__ == \"__main__\":`)")
                    elif attempt < attempts:
                        warnings.warn(f"{names[i]}: its process ended without a result ({_why(p.exitcode)}); "
                                      f"running it again in a fresh process (try {attempt + 1} of {attempts})",
                                      RuntimeWarning, stacklevel=2)
                        todo.append((i, attempt + 1))
                    else:
                        raise IsolatedTaskError(f"{names[i]}: its process ended without a result {attempts} times "
                                                f"(last: {_why(p.exitcode)})")
        finally:
            for p, *_ in running.values():  # on error or interrupt: stop the others, leave no orphans
                p.kill()
                p.join()
