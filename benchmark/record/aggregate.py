"""Reading results/runs.csv and aggregating its rows over seeds (mean, std, 95% CI): THE one aggregation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from benchmark.record.schema import LEADERBOARD_KEYS, LEGACY_VALUES, RUN_COLUMNS, legacy_missing

# Columns that describe the upstream (identical for every seed of a key) and are carried through.
_CARRIED = ("params", "pretrain_frames", "pretrain_seconds", "pretrain_recipe")
_NUMERIC = ("layer", "fraction", "train_utts", "train_frames", "seed", "dev_metric", "test_metric",
            "test_utt_metric", "params", "pretrain_frames", "pretrain_seconds", "best_step", "steps", "wall_seconds")
AGG_COLUMNS: tuple[str, ...] = (*LEADERBOARD_KEYS, "metric", "n_seeds", "train_utts", "train_frames", "test_mean",
                                "test_std", "test_ci95", "dev_mean", "dev_std", "test_utt_mean", "steps_mean",
                                "best_step_mean", "n_converged", *_CARRIED)


def upgrade_legacy(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of an older runs.csv (RUN_COLUMNS in order, without some of ADDED_COLUMNS) with those columns filled
    (benchmark.record.schema.LEGACY_VALUES, as benchmark.record.results.read_rows fills them); any other layout is
    returned unchanged (and rejected by validate_runs)."""
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
        raise ValueError(f"{where}: columns differ from benchmark.record.schema.RUN_COLUMNS "
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


def standing_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows that stand: a configuration and seed recorded twice (a `--force` re-run) keeps its last row, so
    tables, plots, counts and paired tests never count a seed twice or read a superseded row."""
    return df.drop_duplicates(subset=[*LEADERBOARD_KEYS, "metric", "seed"], keep="last")


def aggregate_runs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per LEADERBOARD_KEYS (+ metric): seeds aggregated to mean, sample std and 95% CI half-width.

    A repeated (key, seed) pair (a run recorded twice) keeps its last row (`standing_rows`).
    Each key's rows are numpy slices of whole columns (a sweep of 10,000 rows has thousands of keys, and a pandas
    sub-frame per key cost most of the report's time), reduced by the same numpy calls in the rows' order.
    """
    if df.empty:
        return pd.DataFrame(columns=list(AGG_COLUMNS))
    keys = [*LEADERBOARD_KEYS, "metric"]
    df = standing_rows(df)
    gid = df.groupby(keys, sort=True, dropna=False).ngroup().to_numpy()  # numbered in sorted key order
    order = np.argsort(gid, kind="stable")  # within a key, the rows keep their order
    groups = np.split(order, np.flatnonzero(np.diff(gid[order])) + 1)
    col = {c: df[c].to_numpy(dtype=float) for c in ("test_metric", "dev_metric", "train_utts", "train_frames", "steps",
                                                    "best_step")}
    utt_all = pd.to_numeric(df["test_utt_metric"], errors="coerce").to_numpy(dtype=float)
    converged = df["converged"].to_numpy()
    key_values = df[keys].to_numpy(dtype=object)
    carried = {c: df[c].to_numpy(dtype=object) for c in _CARRIED}
    rows = []
    for idx in groups:
        test, dev, utt = col["test_metric"][idx], col["dev_metric"][idx], utt_all[idx]
        row = dict(zip(keys, key_values[idx[0]]))
        row.update(n_seeds=len(idx), train_utts=_nanmean(col["train_utts"][idx]),
                   train_frames=_nanmean(col["train_frames"][idx]),
                   test_mean=float(test.mean()), test_std=float(test.std(ddof=1)) if len(test) > 1 else float("nan"),
                   test_ci95=ci95_halfwidth(test), dev_mean=float(dev.mean()),
                   dev_std=float(dev.std(ddof=1)) if len(dev) > 1 else float("nan"),
                   test_utt_mean=float(np.nanmean(utt)) if np.isfinite(utt).any() else float("nan"),
                   steps_mean=_nanmean(col["steps"][idx]), best_step_mean=_nanmean(col["best_step"][idx]),
                   n_converged=int(converged[idx].sum()))
        for c in _CARRIED:
            row[c] = carried[c][idx[-1]]
        rows.append(row)
    return pd.DataFrame(rows, columns=list(AGG_COLUMNS))


def _nanmean(v: np.ndarray) -> float:
    """The mean of the values that are there (pandas' Series.mean); NaN when none is."""
    ok = ~np.isnan(v)
    return float(v[ok].mean()) if ok.any() else float("nan")
