"""Is a gap between two result cells beyond noise? Two sources of noise, both measured.

A cell (an upstream, mode, task and fraction) is the mean over seeds of a test metric on ONE test set. Its seeds'
spread measures the training noise only: at 100 % of the labels the full-batch speaker probe gives the same row on
every seed (a zero-width interval), and a gap of a few test utterances then looks certain. The test set's own
sampling noise is measured on the test utterances themselves, paired: both cells were scored on the same utterances
(`benchmark.record.outcomes` keeps each run's metric per test utterance).

The paired test is an approximate randomization (permutation) test over test utterances (Noreen 1989,
"Computer-Intensive Methods for Testing Hypotheses"; as recommended for NLP by Riezler & Maxwell 2005 and Dror et al.
2018, "The Hitchhiker's Guide to Testing Statistical Significance in Natural Language Processing", ACL): each
utterance's outcome (numerator, denominator of the metric, averaged over the cell's seeds) is swapped between the
two cells with probability 1/2, the metric recomputed on both sides (a ratio of sums: frames of one utterance stay
together, so frame tasks are resampled by utterance), and the p-value is the share of `ROUNDS` swaps whose gap is at
least the observed one (two-sided, (k + 1) / (ROUNDS + 1)). On 0/1 outcomes it is the exact sign test of the
discordant utterances (McNemar's test): 5 utterances right on one side and wrong on the other, and none the other
way round, give p = 2 / 2^5 = 0.0625, within noise at 95 %.

A gap is beyond noise when the paired test rejects at ALPHA AND the seeds allow it: both cells have at least two
seeds, and the gap is outside the combined 95 % Student-t interval of their seed means, or both intervals have
zero width (every seed gave the same row: training added no noise, and the paired test alone decides). Without
outcomes (rows from before they were recorded, fine-tuning rows, EER), the seed rule decides alone, and a
zero-width interval never does (benchmark.report.checks).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.record.aggregate import standing_rows
from benchmark.record.outcomes import read_outcomes
from benchmark.record.schema import LEADERBOARD_KEYS

ROUNDS = 10_000
ALPHA = 0.05
Units = tuple[np.ndarray, np.ndarray]  # (numerators, denominators) per test utterance


def seed_mean(seeds: tuple[Units, ...]) -> Units:
    """The cell's outcome per utterance: numerators and denominators averaged over its seeds."""
    shapes = {u[0].shape for u in seeds} | {u[1].shape for u in seeds}
    if len(shapes) != 1:
        raise ValueError(f"the seeds of one cell were scored on different test sets (shapes {sorted(shapes)})")
    return (np.mean([u[0] for u in seeds], axis=0, dtype=np.float64),
            np.mean([u[1] for u in seeds], axis=0, dtype=np.float64))


def randomization_p(a: Units, b: Units, rounds: int = ROUNDS, seed: int = 0) -> float:
    """Two-sided p-value of the gap between the ratio-of-sums metrics of `a` and `b`, paired by utterance. A report
    asks for the same pair more than once (the science checks, then the site's marks): the p-value of a pair of
    outcomes is computed once per process."""
    na, da = (np.asarray(x, dtype=np.float64) for x in a)
    nb, db = (np.asarray(x, dtype=np.float64) for x in b)
    if na.shape != nb.shape or da.shape != db.shape or na.shape != da.shape:
        raise ValueError(f"paired outcomes need the same test utterances on both sides, got {na.shape} and {nb.shape}")
    if da.sum() <= 0 or db.sum() <= 0:
        raise ValueError("paired outcomes with no test units to score")
    return _randomization_p(na.tobytes(), da.tobytes(), nb.tobytes(), db.tobytes(), rounds, seed)


@lru_cache(maxsize=1024)
def _randomization_p(na_: bytes, da_: bytes, nb_: bytes, db_: bytes, rounds: int, seed: int) -> float:
    """`randomization_p` on float64 outcomes given as their bytes (a cache key)."""
    na, da, nb, db = (np.frombuffer(x, dtype=np.float64) for x in (na_, da_, nb_, db_))
    observed = abs(na.sum() / da.sum() - nb.sum() / db.sum())
    total_n, total_d = na.sum() + nb.sum(), da.sum() + db.sum()
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, rounds, 1000):
        swap = (rng.random((min(1000, rounds - start), len(na))) < 0.5).astype(np.float64)
        side_n = na.sum() + swap @ (nb - na)  # side a after the swaps: b's outcome where swapped
        side_d = da.sum() + swap @ (db - da)
        gap = np.abs(side_n / side_d - (total_n - side_n) / (total_d - side_d))
        hits += int((gap >= observed * (1 - 1e-9)).sum())
    return (hits + 1) / (rounds + 1)


def cell_outcomes(agg: pd.DataFrame, runs: pd.DataFrame, results_dir: Path) -> pd.Series:
    """For each aggregated cell of `agg` (benchmark.record.aggregate.aggregate_runs of `runs`), its seeds' outcomes
    (a tuple of Units, in the rows' order), or None when a seed's run recorded none."""
    keys = [*LEADERBOARD_KEYS, "metric"]
    runs = standing_rows(runs)  # the rows aggregate_runs keeps
    ident = lambda frame: frame[keys].astype(str).agg("\x1f".join, axis=1)  # noqa: E731  (NaN keys compare as text)
    by_cell: dict[str, tuple[Units, ...] | None] = {}
    for cell, ids in runs.groupby(ident(runs), sort=False)["run_id"]:
        outs = [read_outcomes(results_dir, str(rid)) for rid in ids]
        by_cell[cell] = None if any(o is None for o in outs) else tuple(o for o in outs if o is not None)
    return pd.Series([by_cell.get(c) for c in ident(agg)], index=agg.index, dtype=object)


def seeds_allow(seeds_a: int, seeds_b: int, ci: float) -> bool:
    """Whether two cells' seeds can bound their training noise: both have at least two seeds, so `ci` (the combined
    half-width of their seed means' 95 % intervals) is finite."""
    return seeds_a >= 2 and seeds_b >= 2 and bool(np.isfinite(ci))


def beyond_noise(units_a: tuple[Units, ...] | None, units_b: tuple[Units, ...] | None, gap: float, ci: float,
                 seeds_a: int, seeds_b: int) -> bool:
    """Whether the gap between two cells is beyond noise: `gap` and `ci` (the combined half-width of the seed means'
    95 % intervals) in the same units. The paired test runs only where the seeds allow a verdict."""
    seeds_ok = seeds_allow(seeds_a, seeds_b, ci)
    if units_a is None or units_b is None:
        return bool(seeds_ok and abs(ci) > 0 and abs(gap) > abs(ci))
    if not (seeds_ok and (abs(ci) == 0 or abs(gap) > abs(ci))):
        return False
    return randomization_p(seed_mean(units_a), seed_mean(units_b)) < ALPHA
