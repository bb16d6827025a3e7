"""Where result rows came from: the command lines beside them (command.txt) and what the rows record about
themselves (corpus, devices, code, dates). REPORT.md and the HTML site both cite these, so both read them here."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

REPORT_COMMAND = "python run_benchmark.py report"  # rebuilds REPORT.md and the site from the rows
# a line benchmark.run.runner.record_command appends: `COMMAND   # 2026-12-04T21:54:33+00:00: 434 runs in ...`
_RECORDED = re.compile(r"^(?P<command>.*?)\s+#\s+(?P<when>\d{4}-\d\d-\d\dT[0-9:.]+(?:Z|[+-]\d\d:\d\d)?)\s*:")
FACT_COLUMNS = {"corpus": "corpus", "upstream": "upstreams", "task": "tasks", "seed": "seeds", "device": "devices",
                "git_commit": "code", "toolkit_version": "toolkit versions"}


def command_lines(path: Path) -> list[str]:
    """The command lines of a command.txt (blank and `#` comment lines left out); none when it is missing."""
    if not path.is_file():
        return []
    lines = (ln.strip() for ln in path.read_text(encoding="utf-8").splitlines())
    return [ln for ln in lines if ln and not ln.startswith("#")]


def facts(runs: pd.DataFrame) -> dict[str, list[str]]:
    """{label: sorted distinct values} of the columns that say what the rows were run on and with."""
    return {label: sorted({str(v) for v in runs[col].dropna()}) for col, label in FACT_COLUMNS.items()}


def date_span(runs: pd.DataFrame) -> str:
    dates = pd.to_datetime(runs["date"], errors="coerce", utc=True).dropna()
    return f"{dates.min():%Y-%m-%d %H:%M} to {dates.max():%Y-%m-%d %H:%M} UTC" if len(dates) else "-"


def short_list(values: list[str], limit: int = 8) -> str:
    """'a, b, c' with at most `limit` values named and the rest counted; '-' for none."""
    if not values:
        return "-"
    return ", ".join(values[:limit]) + (f" (+{len(values) - limit} more)" if len(values) > limit else "")


def provenance_sentence(runs: pd.DataFrame) -> str:
    f = facts(runs)
    return (f"{len(runs)} probe runs on corpus {short_list(f['corpus'])}; upstreams {short_list(f['upstreams'])}; "
            f"tasks {short_list(f['tasks'])}; seeds {short_list(f['seeds'])}; devices {short_list(f['devices'])}; "
            f"code {short_list(f['code'])}; runs dated {date_span(runs)}.")


def command_of_rows(runs: pd.DataFrame, commands: list[str]) -> pd.Series:
    """For each row, the index in `commands` of the command that wrote it, or -1 when that cannot be told.

    The harness appends a command's line, stamped with the time it finished, after writing its rows, so a row
    belongs to the first command stamped at or after the row's own date. Where the lines carry no stamps, one
    command is the command of every row, and of several none can be named."""
    stamps = []
    for line in commands:
        m = _RECORDED.match(line)
        stamps.append(pd.to_datetime(m["when"], utc=True, errors="coerce") if m else pd.NaT)
    out = pd.Series(-1, index=runs.index, dtype=int)
    known = [(t, i) for i, t in enumerate(stamps) if not pd.isna(t)]
    if not known:
        return out + 1 if len(commands) == 1 else out
    known.sort()
    ends = pd.DatetimeIndex([t for t, _ in known])
    dates = pd.to_datetime(runs["date"], errors="coerce", utc=True)
    pos = ends.searchsorted(pd.DatetimeIndex(dates), side="left")  # first stamp >= the row's date
    ok = dates.notna().to_numpy() & (pos < len(known))
    idx = [known[p][1] if good else -1 for p, good in zip(pos, ok)]
    return pd.Series(idx, index=runs.index, dtype=int)


def strip_stamp(line: str) -> tuple[str, str]:
    """(command, what its stamp says) of a command.txt line; the stamp is '' where there is none."""
    cmd, sep, note = line.partition("   # ")
    return (cmd.strip(), note.strip()) if sep else (line.strip(), "")
