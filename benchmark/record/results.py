"""results/runs.csv (one flat row per run, appended atomically) and results/leaderboard.csv (over seeds).

A sharded sweep (`--shard I/N`) writes each shard's rows to its own folder, results/shards/I-of-N/runs.csv, so
jobs sharing the storage never write one file; `merge_shards` (run by `run_benchmark.py report`) adds them to
results/runs.csv.
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

from core.io import atomic_write_text
from benchmark.record.outcomes import merge_outcomes
from benchmark.record.schema import COMMAND_FILE, LEGACY_VALUES, RUN_COLUMNS, legacy_missing

RUNS_FILE = "runs.csv"
LEADERBOARD_FILE = "leaderboard.csv"
SHARDS_DIR = "shards"
_SHARD_NAME = re.compile(r"\d+-of-\d+")
# columns that say how and when a run was recorded, not what it found: two rows of one run id may differ here
PROVENANCE_COLUMNS: tuple[str, ...] = ("wall_seconds", "device", "toolkit_version", "git_commit", "date")


def _format(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(round(v, 6))
    return str(v)


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a runs.csv as dicts with exactly RUN_COLUMNS (empty when missing); rows of an older version lacking
    some added columns get their legacy values; any other header raises naming the file."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            return []
        missing = legacy_missing(reader.fieldnames)
        if missing is None:
            raise ValueError(f"{path}: header differs from benchmark.record.schema.RUN_COLUMNS; move the file away "
                             f"(it was written by another version) and re-run")
        rows = list(reader)
    if missing:
        rows = [{c: r[c] if c in r else LEGACY_VALUES[c](r) for c in RUN_COLUMNS} for r in rows]
    return rows


def done_run_ids(path: Path) -> set[str]:
    """Run ids already recorded in `path`; for a shard's rows file, in every rows file of its results folder
    (results/runs.csv and every shard's), so a shard never redoes a run another shard or an earlier run did."""
    root = results_root(path.parent)
    files = rows_files(root) if root != path.parent else [path]
    return {r["run_id"] for f in files for r in read_rows(f)}


def shard_results_dir(results_dir: Path, shard_name: str) -> Path:
    """Where shard `shard_name` ('I-of-N') of a sweep into `results_dir` writes its rows."""
    return Path(results_dir) / SHARDS_DIR / shard_name


def results_root(d: Path) -> Path:
    """The results folder a shard folder (<root>/shards/I-of-N) belongs to; any other folder is its own root."""
    d = Path(d)
    return d.parent.parent if d.parent.name == SHARDS_DIR and _SHARD_NAME.fullmatch(d.name) else d


def shard_rows_files(results_dir: Path) -> list[Path]:
    """Every shard's rows file under results_dir/shards, by shard count then index."""
    files = [p for p in (Path(results_dir) / SHARDS_DIR).glob(f"*/{RUNS_FILE}") if _SHARD_NAME.fullmatch(p.parent.name)]
    return sorted(files, key=lambda p: tuple(int(x) for x in reversed(p.parent.name.split("-of-"))))


def rows_files(results_dir: Path) -> list[Path]:
    """results_dir/runs.csv (when present) and every shard's rows file, in that order."""
    main = Path(results_dir) / RUNS_FILE
    return ([main] if main.is_file() else []) + shard_rows_files(results_dir)


def _differences(a: dict[str, str], b: dict[str, str]) -> list[str]:
    return [f"{c} {a[c] or '(empty)'} vs {b[c] or '(empty)'}" for c in RUN_COLUMNS
            if c not in PROVENANCE_COLUMNS and a[c] != b[c]]


def merge_shards(results_dir: Path) -> tuple[int, int] | None:
    """Add every shard's rows to results_dir/runs.csv (atomically); (rows added, duplicates dropped), or None
    when there are no shard rows. A run id already recorded with the same results (provenance columns aside) is a
    duplicate and dropped; with different results it is a ValueError naming both files. Rows of one file keep
    their order (a --force re-run's later row wins in the leaderboard, as in one process)."""
    results_dir = Path(results_dir)
    shard_files = shard_rows_files(results_dir)
    if not shard_files:
        return None
    main = results_dir / RUNS_FILE
    merged = read_rows(main)
    seen: dict[str, tuple[Path, dict[str, str]]] = {r["run_id"]: (main, r) for r in merged}
    added = dropped = 0
    for f in shard_files:
        last = {r["run_id"]: r for r in read_rows(f)}  # a file's own re-runs: its last row speaks for it
        for r in read_rows(f):
            rid = r["run_id"]
            if rid in seen and seen[rid][0] != f:
                other_file, other = seen[rid]
                diff = _differences(other, last[rid])
                if diff:
                    raise ValueError(f"run {rid} is in {other_file} and in {f} with different results "
                                     f"({'; '.join(diff[:3])}); keep one of them (move the other file away) and "
                                     f"run `run_benchmark.py report` again")
                dropped += 1
                continue
            merged.append(r)
            seen[rid] = (f, r)
            added += 1
    if added:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(RUN_COLUMNS), lineterminator="\n")
        w.writeheader()
        w.writerows(merged)
        atomic_write_text(main, buf.getvalue())
    _merge_commands(results_dir, [f.parent for f in shard_files])
    merge_outcomes(results_dir, [f.parent for f in shard_files])
    return added, dropped


def _merge_commands(results_dir: Path, shard_dirs: list[Path]) -> None:
    """Shards' command.txt lines (the commands that made their rows) appended to results_dir's, once each."""
    path = results_dir / COMMAND_FILE
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    have = set(old.splitlines())
    new = [ln for d in shard_dirs if (d / COMMAND_FILE).is_file()
           for ln in (d / COMMAND_FILE).read_text(encoding="utf-8").splitlines() if ln.strip() and ln not in have]
    if new:
        atomic_write_text(path, old + "".join(f"{ln}\n" for ln in dict.fromkeys(new)))


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Add one row; the file is rewritten through a temp file + rename, so it is never half-written."""
    missing = [c for c in RUN_COLUMNS if c not in row]
    extra = [c for c in row if c not in RUN_COLUMNS]
    if missing or extra:
        raise ValueError(f"result row: missing columns {missing}, unexpected {extra}")
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if old and old.split("\n", 1)[0].rstrip("\r") != ",".join(RUN_COLUMNS):
        # an older version's file (read_rows validates it): rewritten whole with the current header
        w.writerow(RUN_COLUMNS)
        w.writerows([r[c] for c in RUN_COLUMNS] for r in read_rows(path))
        old = ""
    elif not old:
        w.writerow(RUN_COLUMNS)
    elif not old.endswith("\n"):
        old += "\n"
    w.writerow([_format(row[c]) for c in RUN_COLUMNS])
    atomic_write_text(path, old + buf.getvalue())


def write_leaderboard(results_dir: Path) -> Path | None:
    """Aggregate runs.csv over seeds into leaderboard.csv (pandas; mean, std, 95% CI); None when no rows."""
    from benchmark.record.aggregate import aggregate_runs, read_runs  # pandas, scipy: only to write the leaderboard

    runs = results_dir / RUNS_FILE
    if not read_rows(runs):
        return None
    board = aggregate_runs(read_runs(runs))
    out = results_dir / LEADERBOARD_FILE
    atomic_write_text(out, board.to_csv(index=False, float_format="%.6g"))
    return out
