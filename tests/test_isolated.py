"""core.isolated: fresh process per task, retries after a crash, never hangs on a dead process."""
import pytest

from core.isolated import IsolatedTaskError, run_isolated
from tests import isolated_tasks as t


def test_results_come_back_for_every_task():
    out = dict(run_isolated(t.square, [1, 2, 3, 4, 5], [f"task {i}" for i in range(5)], workers=2))
    assert out == {0: 1, 1: 4, 2: 9, 3: 16, 4: 25}


def test_a_crashed_process_is_rerun_in_a_fresh_one(tmp_path):
    markers = [str(tmp_path / f"m{i}") for i in range(3)]
    with pytest.warns(RuntimeWarning, match="SIGSEGV.*try 2 of 3"):
        out = dict(run_isolated(t.crash_first_time, markers, ["a", "b", "c"], workers=2))
    assert out == {0: "ok", 1: "ok", 2: "ok"}


def test_a_task_that_always_crashes_gives_a_clear_error():
    with pytest.warns(RuntimeWarning), pytest.raises(IsolatedTaskError, match="speaker x.*2 times.*SIGSEGV"):
        list(run_isolated(t.always_crash, [0], ["speaker x"], workers=1, attempts=2))


def test_an_exception_is_raised_with_the_task_name_and_traceback():
    with pytest.raises(IsolatedTaskError, match=r"(?s)task q failed.*ValueError: bad task 7"):
        list(run_isolated(t.raise_value_error, [7], ["task q"], workers=1))


def test_a_process_that_exits_without_a_result_is_not_retried():
    with pytest.raises(IsolatedTaskError, match=r"task e: its process exited \(exit code 3\) before running"):
        list(run_isolated(t.exit_early, [3], ["task e"], workers=1))


def test_bad_arguments():
    with pytest.raises(ValueError, match="workers"):
        list(run_isolated(t.square, [1], ["a"], workers=0))
    with pytest.raises(ValueError, match="one name per task"):
        list(run_isolated(t.square, [1, 2], ["a"], workers=1))


def test_the_entry_script_is_light_to_import_again():
    """Every synthesis child imports run_benchmark.py again as its main module (multiprocessing's __mp_main__): the
    harness (torch, pandas, the probes) must load under its guard only, or each of the corpus's 250 children pays for
    it."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = ("import runpy, sys; runpy.run_path('run_benchmark.py', run_name='__mp_main__'); "
            "print(sorted(m for m in ('torch', 'pandas', 'benchmark.cli') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
