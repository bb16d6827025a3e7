"""Reading results/runs.csv and aggregating its rows over seeds (mean, std, 95% CI): THE one aggregation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from benchmark.schema import LEADERBOARD_KEYS, LEGACY_VALUES, RUN_COLUMNS, legacy_missing

# Columns that describe the upstream (identical for every seed of a key) and are carried through.
_CARRIED = ("params", "pretrain_frames", "pretrain_seconds", "pretrain_recipe")
_NUMERIC = ("layer", "fraction", "train_utts", "train_frames", "seed", "dev_metric", "test_metric",
            "test_utt_metric", "params", "pretrain_frames", "pretrain_seconds", "best_step", "steps", "wall_seconds")
AGG_COLUMNS: tuple[str, ...] = (*LEADERBOARD_KEYS, "metric", "n_seeds", "train_utts", "test_mean", "test_std",
                                "test_ci95", "dev_mean", "dev_std", "test_utt_mean", "steps_mean", "best_step_mean", "n_converged",
                                *_CARRIED)


def upgrade_legacy(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of an older runs.csv (RUN_COLUMNS in order, without some of ADDED_COLUMNS) with those columns filled
    (benchmark.schema.LEGACY_VALUES, as benchmark.results.read_rows fills them); any other layout is returned
    unchanged (and rejected by validate_runs)."""
    missing = legacy_missing(df.columns)
    if not missing:
        return df
    rows = df.to_dict("records")
    return df.assign(**{c: [LEGACY_VALUES[c](r) for r in rows] for c in missing})[list(RUN_COLUMNS)]


def validate_runs(df: pd.DataFrame, where: str = "runs table") -> pd.DataFrame:
    """Check the columns are exactly RUN_COLUMNS and coerce the numeric ones; ValueError naming `where`."""
    df = upgrade_legacy(df)
    cols = list(df.columns)
    if cols != list(RUN_COLUMNS):
        missing = [c for c in RUN_COLUMNS if c not in cols]
        extra = [c for c in cols if c not in RUN_COLUMNS]
        raise ValueError(f"{where}: columns differ from benchmark.schema.RUN_COLUMNS "
                         f"(missing {missing}, unexpected {extra}"
                         f"{', order differs' if not missing and not extra else ''})")
    out = df.copy()
    for c in _NUMERIC:
        out[c] = pd.to_numeric(out[c], errors="coerce")
    for c in ("dev_metric", "test_metric", "fraction", "seed"):
        bad = out[c].isna()
        if bad.any():
            raise ValueError(f"{where}: column {c!r} is empty or not numeric in {int(bad.sum())} row(s), "
                             f"first at data row {int(np.flatnonzero(bad.to_numpy())[0]) + 1}")
    out["layer"] = out["layer"].fillna(-1).astype(int)
    out["converged"] = out["converged"].map(lambda v: str(v).strip().lower() in ("true", "1"))
    out["layer_weights"] = out["layer_weights"].map(lambda v: "" if pd.isna(v) else str(v))
    return out


def read_runs(path: str | Path) -> pd.DataFrame:
    """Load and validate a runs.csv; a missing, empty or malformed file raises an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"result rows not found: {path} (run the benchmark first: `python run_benchmark.py`)")
    try:
        df = pd.read_csv(path, dtype={"ckpt_hash": str, "run_id": str, "git_commit": str}, keep_default_na=True)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot parse as CSV: {e}") from e
    df = validate_runs(df, str(path))
    if df.empty:
        raise ValueError(f"{path}: holds a header but no result rows")
    return df


def ci95_halfwidth(values: np.ndarray) -> float:
    """Half-width of the two-sided 95% Student-t confidence interval of the mean (NaN for one value)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


def aggregate_runs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per LEADERBOARD_KEYS (+ metric): seeds aggregated to mean, sample std and 95% CI half-width.

    A repeated (key, seed) pair (a run recorded twice) keeps its last row so seeds are never double-counted.
    """
    if df.empty:
        return pd.DataFrame(columns=list(AGG_COLUMNS))
    keys = [*LEADERBOARD_KEYS, "metric"]
    df = df.drop_duplicates(subset=[*keys, "seed"], keep="last")
    rows = []
    for key, g in df.groupby(keys, sort=True, dropna=False):
        test = g["test_metric"].to_numpy(dtype=float)
        dev = g["dev_metric"].to_numpy(dtype=float)
        utt = pd.to_numeric(g["test_utt_metric"], errors="coerce").to_numpy(dtype=float)
        row = dict(zip(keys, key))
        row.update(n_seeds=len(g), train_utts=float(g["train_utts"].mean()),
                   test_mean=float(test.mean()), test_std=float(test.std(ddof=1)) if len(test) > 1 else float("nan"),
                   test_ci95=ci95_halfwidth(test), dev_mean=float(dev.mean()),
                   dev_std=float(dev.std(ddof=1)) if len(dev) > 1 else float("nan"),
                   test_utt_mean=float(np.nanmean(utt)) if np.isfinite(utt).any() else float("nan"),
                   steps_mean=float(g["steps"].mean()), best_step_mean=float(g["best_step"].mean()),
                   n_converged=int(g["converged"].sum()))
        for c in _CARRIED:
            row[c] = g[c].iloc[-1]
        rows.append(row)
    return pd.DataFrame(rows, columns=list(AGG_COLUMNS))
