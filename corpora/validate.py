"""Validation of corpus records before anything is written: every problem is reported with its file and line.

Readers collect problems in an `Issues` list instead of failing on the first one, so one run shows all
of them; `Issues.raise_if_any` then stops the preparation before any output is touched.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from core.audio import AudioError, audio_info
from corpora.manifest import SPLITS, Segment, Utterance
from corpora.verify import length_problem

MAX_SHOWN = 25


class CorpusError(ValueError):
    """Bad corpus input; the message lists every problem found, each with its file (and line)."""


class Issues:
    """Problems found so far, each as 'where: what'."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")

    def __len__(self) -> int:
        return len(self.items)

    def raise_if_any(self, what: str) -> None:
        """CorpusError: one line for one problem; else a summary line, then the problems (first MAX_SHOWN)."""
        if len(self.items) == 1:
            raise CorpusError(f"{what}: {self.items[0]} (nothing was written)")
        if self.items:
            shown = self.items[:MAX_SHOWN]
            more = f"\n  ... and {len(self.items) - MAX_SHOWN} more" if len(self.items) > MAX_SHOWN else ""
            raise CorpusError(f"{what}: {len(self.items)} problem(s); nothing was written:\n  "
                              + "\n  ".join(shown) + more)


def probe_audio(path: Path, where: str, issues: Issues, expected_sr: int | None = None) -> tuple[int, int] | None:
    """(sample_rate, n_samples) from an audio file's header, or None after recording why it cannot be used.

    Only the header is read here; corpora.verify decodes every file afterwards (unless --no-verify-audio).
    """
    if not path.is_file():
        issues.add(where, f"audio file not found: {path}")
        return None
    try:
        sr, n, _ = audio_info(path)
    except AudioError as e:
        issues.add(where, f"unreadable or corrupt audio: {e}")
        return None
    if expected_sr is not None and sr != expected_sr:
        issues.add(where, f"sample-rate mismatch: {path} is {sr} Hz, expected {expected_sr} Hz")
        return None
    short = length_problem(path, sr, n)
    if short is not None:
        issues.add(where, short)
        return None
    return sr, n


def check_alignment(segs: tuple[Segment, ...], num_samples: int, where: str, issues: Issues) -> None:
    """Segments must be non-negative, non-empty, sorted, non-overlapping and inside the audio."""
    prev_end = 0
    for k, s in enumerate(segs):
        if s.start < 0:
            issues.add(where, f"segment {k} ({s.phone!r}) has a negative start {s.start}")
        if s.end <= s.start:
            issues.add(where, f"segment {k} ({s.phone!r}) is empty or negative: start {s.start} end {s.end}")
        if k and s.start < prev_end:
            issues.add(where, f"segment {k} ({s.phone!r}) starting at {s.start} overlaps the previous one ending at {prev_end}")
        if s.end > num_samples:
            issues.add(where, f"segment {k} ({s.phone!r}) ends at sample {s.end}, past the end of the audio "
                              f"({num_samples} samples)")
        prev_end = max(prev_end, s.end)


def phone_sort_key(p: str) -> tuple[int, int, str]:
    """Numeric labels (LibriSpeech's 0..40) in numeric order, symbols alphabetically."""
    return (0, int(p), "") if p.isdigit() else (1, 0, p)


def validate_records(utts: list[Utterance], where: list[str], issues: Issues,
                     closed_set_speakers: bool) -> tuple[list[str], list[str]]:
    """Check ids, splits, alignments and label coverage; return (phone vocab, speaker vocab) built on train."""
    seen: dict[str, str] = {}
    by_split: dict[str, list[int]] = defaultdict(list)
    for i, (u, w) in enumerate(zip(utts, where)):
        if u.id in seen:
            issues.add(w, f"duplicate utterance id {u.id!r} (first at {seen[u.id]})")
        else:
            seen[u.id] = w
        if u.split not in SPLITS:
            issues.add(w, f"unknown split {u.split!r}; valid: {list(SPLITS)}")
        if u.num_samples <= 0:
            issues.add(w, f"zero-length audio ({u.num_samples} samples)")
        if u.alignment is not None:
            check_alignment(u.alignment, u.num_samples, w, issues)
        by_split[u.split].append(i)
    train = [utts[i] for i in by_split["train"]]
    if not train:
        issues.add("corpus", "the train split is empty: probes need training utterances")
    phones = sorted({s.phone for u in train if u.alignment for s in u.alignment}, key=phone_sort_key)
    speakers = sorted({u.speaker for u in train})
    phone_set, spk_set = set(phones), set(speakers)
    for split in ("dev", "test"):
        for i in by_split[split]:
            u = utts[i]
            if u.alignment:
                unseen = sorted({s.phone for s in u.alignment} - phone_set)
                if unseen:
                    issues.add(where[i], f"phone label(s) {unseen} never occur in the train split")
            if closed_set_speakers and u.speaker not in spk_set:
                issues.add(where[i], f"speaker {u.speaker!r} does not occur in the train split (closed-set speakers)")
    if closed_set_speakers:
        pre = {utts[i].speaker for i in by_split["pretrain"]} & spk_set
        if pre:
            issues.add("corpus", f"{len(pre)} pretrain speaker(s) are also probe speakers, e.g. {sorted(pre)[:3]}")
    return phones, speakers
