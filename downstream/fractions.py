"""Nested, speaker-stratified subsets of the labelled train split for the label-fraction experiments.

One seeded ordering of the train utterances is built per seed; the subset for fraction f is its first k
utterances, so every smaller fraction is contained in every larger one. The ordering puts one random
utterance of every speaker first, then the rest interleaved in proportion to each speaker's share.

Rule for fractions that would leave too little data: k = round(f * N), raised to the FLOOR when smaller:
one utterance per speaker for the speaker tasks (closed-set speaker ID needs every class), one utterance
for the phone tasks. A raised fraction is reported (`SubsetInfo.raised`) and the row's train_utts tells the
real size. Dev and test are never subsampled.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The Mockingjay paper's label fractions of train-clean-360 (Mockingjay, arXiv 1910.12638, Table 1), as fractions.
PAPER_FRACTIONS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.125, 1.0)


@dataclass(frozen=True)
class SubsetInfo:
    fraction: float
    indices: tuple[int, ...]  # positions in the train utterance list, in ordering order
    requested: int  # round(fraction * N) before the floor
    raised: bool  # True when the floor made the subset larger than requested


def stratified_order(speakers: list[str], seed: int) -> np.ndarray:
    """Seeded permutation of range(len(speakers)): one utterance per speaker first, then proportional."""
    rng = np.random.default_rng([seed, 0x5EED])
    n = len(speakers)
    keys = np.empty(n, dtype=np.float64)
    by_spk: dict[str, list[int]] = {}
    for i, s in enumerate(speakers):
        by_spk.setdefault(s, []).append(i)
    for s in sorted(by_spk):
        idx = np.array(by_spk[s])[rng.permutation(len(by_spk[s]))]
        # rank 0 gets a key < 0 so all speakers are covered before anyone's second utterance;
        # rank j >= 1 gets (j + 0.5) / n_s, so every prefix holds each speaker in proportion to its share
        keys[idx[0]] = -1.0
        keys[idx[1:]] = (np.arange(1, len(idx)) + 0.5) / len(idx)
    tie = rng.random(n)  # random tie-break among equal keys (e.g. the first round)
    return np.lexsort((tie, keys))


def fraction_subset(speakers: list[str], fraction: float, seed: int, per_speaker_floor: bool) -> SubsetInfo:
    """The nested subset for `fraction` (0 < f <= 1) of a train split whose utterance speakers are `speakers`."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    n = len(speakers)
    if n == 0:
        raise ValueError("the train split is empty: no utterances to subsample")
    order = stratified_order(speakers, seed)
    requested = int(round(fraction * n))
    floor = len(set(speakers)) if per_speaker_floor else 1
    k = min(n, max(requested, floor))
    return SubsetInfo(fraction, tuple(int(i) for i in order[:k]), requested, k > requested)


MIN_DEFAULT_UTTS = 10  # a default fraction must leave at least this many labelled utterances


def default_fractions(n_train: int, n_speakers: int) -> tuple[list[float], list[float]]:
    """(kept, dropped) paper fractions for a train split of `n_train` utterances and `n_speakers` speakers.

    A default fraction is kept when round(f * N) >= MIN_DEFAULT_UTTS: smaller ones would train a probe on a
    handful of utterances and are dropped from the DEFAULT list (the caller prints which and why). A kept
    fraction smaller than one utterance per speaker is raised to that floor for the speaker tasks only
    (`fraction_subset`). Asked for explicitly, any fraction runs, raised to the floors.
    """
    if n_train <= 0 or n_speakers <= 0:
        raise ValueError(f"default_fractions: empty train split ({n_train} utterances, {n_speakers} speakers)")
    kept = [f for f in PAPER_FRACTIONS if round(f * n_train) >= MIN_DEFAULT_UTTS]
    dropped = [f for f in PAPER_FRACTIONS if f not in kept]
    return kept, dropped
