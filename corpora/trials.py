"""Speaker-verification trials: utterances of held-out speakers (trials.jsonl) and pairs of them (trials.txt).

The trial speakers are never probe or pretraining speakers. Each evaluation split (dev, test) has its own trial
speakers; its trials are every same-speaker pair of its utterances (targets) and as many different-speaker pairs
(non-targets) drawn with a seed, so the list is balanced and a function of the utterances and the seed alone.
trials.txt has one trial a line, `<split> <1|0> <utterance a> <utterance b>` (1: same speaker), as VoxCeleb's
`veri_test.txt` lists `<1|0> <a> <b>`.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from pathlib import Path

from core.io import atomic_write_text, read_text
from corpora.manifest import Corpus, Utterance, parsed_manifest, write_manifest

TRIALS_MANIFEST = "trials.jsonl"
TRIALS_LIST = "trials.txt"
TRIAL_SPLITS = ("dev", "test")


@dataclass(frozen=True)
class Trial:
    split: str
    same: bool
    a: str  # utterance ids
    b: str


def make_trials(utts: list[Utterance], seed: int) -> list[Trial]:
    """Balanced trials of every split of `utts`: all same-speaker pairs, and as many different-speaker pairs drawn
    without replacement by a generator seeded with (seed, split)."""
    out: list[Trial] = []
    for split in TRIAL_SPLITS:
        part = sorted((u for u in utts if u.split == split), key=lambda u: u.id)
        pairs = list(itertools.combinations(part, 2))
        same = [(a.id, b.id) for a, b in pairs if a.speaker == b.speaker]
        other = [(a.id, b.id) for a, b in pairs if a.speaker != b.speaker]
        if part and (not same or not other):
            raise ValueError(f"{split} trial utterances need two speakers with two utterances each to make target "
                             f"and non-target trials")
        drawn = sorted(random.Random(f"{seed}/trials/{split}").sample(other, min(len(same), len(other))))
        out += [Trial(split, True, a, b) for a, b in same] + [Trial(split, False, a, b) for a, b in drawn]
    return out


def write_trials(root: str | Path, utts: list[Utterance], trials: list[Trial]) -> None:
    root = Path(root)
    write_manifest(root / TRIALS_MANIFEST, utts)
    atomic_write_text(root / TRIALS_LIST, "".join(f"{t.split} {int(t.same)} {t.a} {t.b}\n" for t in trials))


def has_trials(corpus: Corpus) -> bool:
    return (corpus.root / TRIALS_MANIFEST).is_file() and (corpus.root / TRIALS_LIST).is_file()


def read_trials(corpus: Corpus) -> tuple[dict[str, list[Utterance]], dict[str, list[Trial]]]:
    """The trial utterances and trials of each split; a ValueError naming the file when they are missing or bad."""
    man, lst = corpus.root / TRIALS_MANIFEST, corpus.root / TRIALS_LIST
    for p in (man, lst):
        if not p.is_file():
            raise ValueError(f"{p}: missing: corpus {corpus.name!r} has no held-out trial speakers (speaker "
                             f"verification needs {TRIALS_MANIFEST} and {TRIALS_LIST} beside its manifests)")
    utts = parsed_manifest(man)
    by_split = {s: [u for u in utts if u.split == s] for s in TRIAL_SPLITS}
    ids = {s: {u.id for u in by_split[s]} for s in TRIAL_SPLITS}
    trials: dict[str, list[Trial]] = {s: [] for s in TRIAL_SPLITS}
    for lineno, line in enumerate(read_text(lst, "trial list").splitlines(), 1):
        if not line.strip():
            continue
        f = line.split()
        if len(f) != 4 or f[0] not in TRIAL_SPLITS or f[1] not in ("0", "1"):
            raise ValueError(f"{lst}:{lineno}: expected '<dev|test> <1|0> <utt a> <utt b>', got {line!r}")
        if f[2] not in ids[f[0]] or f[3] not in ids[f[0]]:
            raise ValueError(f"{lst}:{lineno}: utterance not among the {f[0]} utterances of {man}")
        trials[f[0]].append(Trial(f[0], f[1] == "1", f[2], f[3]))
    for s in TRIAL_SPLITS:
        if not trials[s] or all(t.same for t in trials[s]) or not any(t.same for t in trials[s]):
            raise ValueError(f"{lst}: the {s} split needs target and non-target trials")
    probe = set(corpus.speakers) | {u.speaker for s in ("train", "dev", "test") for u in corpus.utterances(s)}
    shared = sorted({u.speaker for u in utts} & probe)
    if shared:
        raise ValueError(f"{man}: trial speakers must be held out, but {shared[:3]} are probe speakers")
    return by_split, trials
