"""Tasks for tests/test_isolated.py: importable by name, because they run in fresh processes."""
import os
import signal
from pathlib import Path


def square(x: int) -> int:
    return x * x


def crash_first_time(marker: str) -> str:
    """Dies by SIGSEGV unless `marker` exists (it creates it first): crashes once, then succeeds."""
    m = Path(marker)
    if not m.exists():
        m.write_text("crashed once")
        os.kill(os.getpid(), signal.SIGSEGV)
    return "ok"


def always_crash(_: object) -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def raise_value_error(x: object) -> None:
    raise ValueError(f"bad task {x!r}")


def exit_early(code: int) -> None:
    os._exit(code)  # leaves without a result and without a signal, like a child that failed to start
