"""Gaps beyond noise: the paired randomization test over test utterances, combined with the seeds' spread, on known
outcomes; and every run of a real (tiny) harness run keeps its metric per test utterance, which the report reads."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import benchmark.run.runner as runner
from benchmark.plan.config import BenchmarkConfig
from benchmark.record.aggregate import aggregate_runs, read_runs
from benchmark.record.outcomes import read_outcomes, write_outcomes
from benchmark.report.checks import check_random_controls
from benchmark.report.paired import beyond_noise, cell_outcomes, randomization_p
from downstream.config import AdamW, Minibatch, ProbeConfig
from tests.fixtures import make_tiny_corpus


def _utts(right: int, n: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """0/1 outcomes of n test utterances, the first `right` correct."""
    num = np.zeros(n, dtype=np.int64)
    num[:right] = 1
    return num, np.ones(n, dtype=np.int64)


def test_five_discordant_utterances_are_within_noise_and_fifteen_are_not():
    # a is right on 5 utterances where b is wrong, and they agree on every other one: the sign test's p = 2 / 2^5
    assert randomization_p(_utts(65), _utts(60)) == pytest.approx(0.0625, abs=0.01)
    assert randomization_p(_utts(75), _utts(60)) < 0.001
    # the same 5-utterance net gap among many discordant utterances is noise too
    a = (np.r_[np.ones(30), np.zeros(25), np.ones(40), np.zeros(25)].astype(np.int64), np.ones(120, dtype=np.int64))
    b = (np.r_[np.zeros(30), np.ones(25), np.ones(40), np.zeros(25)].astype(np.int64), np.ones(120, dtype=np.int64))
    assert randomization_p(a, b) > 0.4
    with pytest.raises(ValueError, match="same test utterances"):
        randomization_p(_utts(5), _utts(5, n=100))


def test_frames_of_one_utterance_stay_together():
    """A frame-accuracy gap made by one long utterance (300 frames, all right on one side, all wrong on the other)
    is one discordant unit, not 300: within noise."""
    frames = np.r_[np.full(9, 50), 300].astype(np.int64)
    b = (np.r_[np.full(9, 30), 0].astype(np.int64), frames)
    a = (np.r_[np.full(9, 30), 300].astype(np.int64), frames)
    assert randomization_p(a, b) > 0.05


def test_identical_seeds_never_make_a_gap_certain():
    """Two cells whose every seed gave the same row (zero-width seed intervals), 5 utterances apart: within noise;
    15 apart: beyond it. One seed a side: the training noise is unmeasured, never beyond."""
    a5, a15, b = (_utts(65),) * 3, (_utts(75),) * 3, (_utts(60),) * 3
    assert beyond_noise(a5, b, 100 * 5 / 120, 0.0, 3, 3) is False
    assert beyond_noise(a15, b, 100 * 15 / 120, 0.0, 3, 3) is True
    assert beyond_noise(a15, b, 100 * 15 / 120, float("nan"), 1, 1) is False
    assert beyond_noise(a15, b, 100 * 15 / 120, 20.0, 3, 3) is False  # seeds wider than the gap
    assert beyond_noise(None, None, 100 * 15 / 120, 0.0, 3, 3) is False  # no outcomes: a zero interval says nothing


def test_the_harness_keeps_each_runs_outcomes_and_the_checks_read_them(tmp_path):
    corpus = make_tiny_corpus(tmp_path / "corpus", n_speakers=4, per_speaker={"train": 8, "dev": 3, "test": 3})
    cfg = BenchmarkConfig(corpus=str(tmp_path / "corpus"), upstreams=("mockingjay", "mockingjay_random"),
                          tasks=("phone_linear", "speaker_utterance"), modes="last", fractions=(1.0,), seeds=2,
                          probe=ProbeConfig(Minibatch(AdamW(lr=1e-1), batch_size=4096, min_eval_steps=5), patience=4),
                          results_dir=tmp_path / "results", cache_dir=tmp_path / "cache", runs_dir=tmp_path / "runs",
                          finetune_ends=False, progress=False, report=False)
    runner.run_benchmark(cfg, log=lambda *_: None)
    runs = read_runs(tmp_path / "results" / "runs.csv")
    n_test = len(corpus.utterances("test"))
    for r in runs.itertuples():
        num, den = read_outcomes(tmp_path / "results", r.run_id)
        assert len(num) == len(den) == n_test  # one per test utterance, frame task or not
        assert num.sum() / den.sum() == pytest.approx(r.test_metric, abs=1e-6)
    agg = aggregate_runs(runs)
    units = cell_outcomes(agg, runs, tmp_path / "results")
    assert units.notna().all() and all(len(u) == 2 for u in units)  # two seeds per cell
    check = check_random_controls(agg.assign(units=units))
    assert check.verdict != "not enough data" and "beyond noise" in check.detail
    # a run without outcomes leaves its cell to the seed rule
    (tmp_path / "results" / "outcomes" / f"{runs['run_id'].iloc[0]}.npy").unlink()
    assert cell_outcomes(agg, runs, tmp_path / "results").isna().sum() == 1


def test_a_malformed_outcomes_file_names_itself(tmp_path):
    write_outcomes(tmp_path, "r1", _utts(3, 10))
    assert read_outcomes(tmp_path, "r1")[0].sum() == 3
    bad = tmp_path / "outcomes" / "r2.npy"
    bad.write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="r2.npy"):
        read_outcomes(tmp_path, "r2")
    with pytest.raises(ValueError, match="one numerator and one denominator"):
        write_outcomes(tmp_path, "r3", (np.zeros(3), np.zeros(4)))


def test_a_pair_of_outcomes_is_tested_once_per_process():
    """The checks and the site ask for the same pairs: the second ask reads the first's p-value, the same number."""
    from benchmark.report import paired

    rng = np.random.default_rng(3)
    a = (rng.integers(0, 2, 200).astype(float), np.ones(200))
    b = (rng.integers(0, 2, 200).astype(float), np.ones(200))
    paired._randomization_p.cache_clear()
    first = paired.randomization_p(a, b)
    again = paired.randomization_p((a[0].copy(), a[1].copy()), (b[0].copy(), b[1].copy()))
    info = paired._randomization_p.cache_info()
    assert again == first and (info.hits, info.misses) == (1, 1)
    assert paired.randomization_p(b, a) == first and paired._randomization_p.cache_info().misses == 2  # not the same key
