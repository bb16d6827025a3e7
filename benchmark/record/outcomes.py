"""Per-run test outcomes: each run's test metric per test utterance, (numerator, denominator), so that two rows can
be compared on the same test utterances (benchmark.report.paired) and not only through their seeds' spread.

One small file per run id, `<results>/outcomes/<run_id>.npy` (int64, shape (2, n_utts): numerators, then
denominators; the row's test metric is the ratio of their sums), written before the run's row. A shard writes into
its own folder (`<results>/shards/I-of-N/outcomes/`) and `merge_shards` copies the files to the results folder.
Runs whose metric is not additive over utterances (EER of trials) and fine-tuning runs have none.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from core.io import atomic_write_bytes

OUTCOMES_DIR = "outcomes"


def outcomes_path(results_dir: Path, run_id: str) -> Path:
    return Path(results_dir) / OUTCOMES_DIR / f"{run_id}.npy"


def write_outcomes(results_dir: Path, run_id: str, units: tuple[np.ndarray, np.ndarray]) -> None:
    num, den = (np.asarray(u, dtype=np.int64) for u in units)
    if num.shape != den.shape or num.ndim != 1:
        raise ValueError(f"run {run_id}: outcomes need one numerator and one denominator per test utterance, got "
                         f"shapes {num.shape} and {den.shape}")
    buf = io.BytesIO()
    np.save(buf, np.stack([num, den]))
    path = outcomes_path(results_dir, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


def read_outcomes(results_dir: Path, run_id: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(numerators, denominators) per test utterance of `run_id`, or None when the run recorded none."""
    path = outcomes_path(results_dir, run_id)
    if not path.is_file():
        return None
    try:
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: not a run's outcomes file ({e}); delete it and re-run the run with --force") from e
    if a.ndim != 2 or a.shape[0] != 2:
        raise ValueError(f"{path}: expected shape (2, n_utts), got {a.shape}; delete it and re-run the run with --force")
    return a[0], a[1]


def merge_outcomes(results_dir: Path, shard_dirs: list[Path]) -> int:
    """Copy the shards' outcome files into the results folder (those it lacks); how many were copied."""
    copied = 0
    for d in shard_dirs:
        for f in sorted((Path(d) / OUTCOMES_DIR).glob("*.npy")):
            dest = Path(results_dir) / OUTCOMES_DIR / f.name
            if not dest.is_file():
                atomic_write_bytes(dest, f.read_bytes())
                copied += 1
    return copied
