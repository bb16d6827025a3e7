"""Closed-set probe splits: every speaker's utterances divided over train/dev/test with a seed."""
from __future__ import annotations

import random
from collections import defaultdict


def closed_set_splits(utt_speakers: list[tuple[str, str]], seed: int, dev_fraction: float = 0.1,
                      test_fraction: float = 0.1) -> dict[str, str]:
    """{utt id: split} from (utt id, speaker) pairs; speakers with >= 3 utterances get at least one in dev and test.

    Speakers with fewer than 3 utterances stay in train only (they can still be classified, just not evaluated).
    """
    if not (0 <= dev_fraction < 1 and 0 <= test_fraction < 1 and dev_fraction + test_fraction < 1):
        raise ValueError(f"dev_fraction {dev_fraction} and test_fraction {test_fraction} must be in [0, 1) with sum < 1")
    by_spk: dict[str, list[str]] = defaultdict(list)
    for uid, spk in utt_speakers:
        by_spk[spk].append(uid)
    out: dict[str, str] = {}
    for spk in sorted(by_spk):
        ids = sorted(by_spk[spk])
        random.Random(f"{seed}/{spk}").shuffle(ids)  # per-speaker stream: adding a speaker changes no other
        n = len(ids)
        n_dev = max(1, round(n * dev_fraction)) if n >= 3 and dev_fraction > 0 else 0
        n_test = max(1, round(n * test_fraction)) if n >= 3 and test_fraction > 0 else 0
        for k, uid in enumerate(ids):
            out[uid] = "dev" if k < n_dev else "test" if k < n_dev + n_test else "train"
    return out
