"""results/runs.csv (one flat row per run, appended atomically) and results/leaderboard.csv (over seeds)."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from core.io import atomic_write_text
from benchmark.schema import RUN_COLUMNS

RUNS_FILE = "runs.csv"
LEADERBOARD_FILE = "leaderboard.csv"


def _format(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(round(v, 6))
    return str(v)


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a runs.csv as dicts (empty when missing); a header that is not RUN_COLUMNS raises naming the file."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is not None and tuple(reader.fieldnames) != RUN_COLUMNS:
            raise ValueError(f"{path}: header differs from benchmark.schema.RUN_COLUMNS; move the file away "
                             f"(it was written by another version) and re-run")
        return list(reader)


def done_run_ids(path: Path) -> set[str]:
    return {r["run_id"] for r in read_rows(path)}


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Add one row; the file is rewritten through a temp file + rename, so it is never half-written."""
    missing = [c for c in RUN_COLUMNS if c not in row]
    extra = [c for c in row if c not in RUN_COLUMNS]
    if missing or extra:
        raise ValueError(f"result row: missing columns {missing}, unexpected {extra}")
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    if old:
        read_rows(path)  # validates the header before we append to it
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if not old:
        w.writerow(RUN_COLUMNS)
    elif not old.endswith("\n"):
        old += "\n"
    w.writerow([_format(row[c]) for c in RUN_COLUMNS])
    atomic_write_text(path, old + buf.getvalue())


def write_leaderboard(results_dir: Path) -> Path | None:
    """Aggregate runs.csv over seeds into leaderboard.csv (pandas; mean, std, 95% CI); None when no rows."""
    from benchmark.aggregate import aggregate_runs, read_runs

    runs = results_dir / RUNS_FILE
    if not read_rows(runs):
        return None
    board = aggregate_runs(read_runs(runs))
    out = results_dir / LEADERBOARD_FILE
    atomic_write_text(out, board.to_csv(index=False, float_format="%.6g"))
    return out
