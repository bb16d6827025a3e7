"""The corpus data model: utterances in JSON Lines manifests, one file per split, plus corpus.json.

A prepared corpus directory holds `{split}.jsonl` for split in SPLITS (pretrain may be empty for real
corpora used only for probing), and `corpus.json` (name, preparation config, phone and speaker
vocabularies built on the train split, format version), written LAST as the done-marker.
Alignments are (phone, start, end) in samples of the utterance's own audio (end exclusive). `label` (optional) is
an utterance-level class, e.g. the keyword of a Speech Commands clip; a record without one has no `label` key, so
manifests of corpora without labels are the bytes they always were.
Every consumer (pretraining, probes) reads corpora through `load_corpus` only.
"""
from __future__ import annotations

import functools
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np

from core.io import atomic_write_json, atomic_write_text, read_json, read_text

Split = Literal["pretrain", "train", "dev", "test"]
SPLITS: tuple[Split, ...] = ("pretrain", "train", "dev", "test")
PROBE_SPLITS: tuple[Split, ...] = ("train", "dev", "test")
MANIFEST_VERSION = 1


@dataclass(frozen=True, slots=True)
class Segment:
    phone: str
    start: int  # first sample (inclusive)
    end: int  # last sample + 1


class Alignment(Sequence[Segment]):
    """An utterance's segments, read as a sequence of Segment and held compactly: the phones as one tuple of interned
    strings, the bounds as one (2, n) int64 array (starts, ends). A 100-hour corpus has millions of segments; as
    Segment objects they cost ~160 B each in memory, held this way ~25 B (tests/test_manifest.py)."""

    __slots__ = ("phones", "bounds")

    def __init__(self, segments: Iterable[Segment | Sequence[Any]]) -> None:
        rows = [(s.phone, s.start, s.end) if isinstance(s, Segment) else tuple(s) for s in segments]
        self.phones: tuple[str, ...] = tuple(sys.intern(str(p)) for p, _, _ in rows)
        self.bounds = np.array([[int(a) for _, a, _ in rows], [int(b) for _, _, b in rows]], dtype=np.int64)
        self.bounds.setflags(write=False)

    @property
    def starts(self) -> np.ndarray:
        return self.bounds[0]

    @property
    def ends(self) -> np.ndarray:
        return self.bounds[1]

    def __len__(self) -> int:
        return len(self.phones)

    @overload
    def __getitem__(self, i: int) -> Segment: ...

    @overload
    def __getitem__(self, i: slice) -> "Alignment": ...

    def __getitem__(self, i: int | slice) -> "Segment | Alignment":
        if isinstance(i, slice):
            return Alignment(list(self)[i])
        return Segment(self.phones[i], int(self.bounds[0, i]), int(self.bounds[1, i]))

    def __iter__(self) -> Iterator[Segment]:
        starts, ends = self.bounds.tolist()
        return (Segment(p, a, b) for p, a, b in zip(self.phones, starts, ends))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Alignment):
            return self.phones == other.phones and np.array_equal(self.bounds, other.bounds)
        if isinstance(other, (tuple, list)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.phones, self.bounds.tobytes()))

    def __repr__(self) -> str:
        return f"Alignment({list(self)!r})"


@dataclass(frozen=True, slots=True)
class Utterance:
    id: str
    path: str  # absolute, or relative to the corpus directory
    sample_rate: int
    num_samples: int
    speaker: str
    split: Split
    alignment: Alignment | None = None  # any sequence of Segment or (phone, start, end) given is held as Alignment
    label: str | None = None  # utterance-level class (keyword spotting: corpora.speech_commands.CLASSES)

    def __post_init__(self) -> None:
        if self.alignment is not None and not isinstance(self.alignment, Alignment):
            object.__setattr__(self, "alignment", Alignment(self.alignment))

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "path": self.path, "sample_rate": self.sample_rate,
                             "num_samples": self.num_samples, "speaker": self.speaker, "split": self.split}
        if self.alignment is not None:
            d["alignment"] = [[s.phone, s.start, s.end] for s in self.alignment]
        if self.label is not None:
            d["label"] = self.label
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str = "") -> "Utterance":
        try:
            ali, label = d.get("alignment"), d.get("label")
            return cls(id=str(d["id"]), path=str(d["path"]), sample_rate=int(d["sample_rate"]),
                       num_samples=int(d["num_samples"]), speaker=str(d["speaker"]), split=d["split"],
                       alignment=None if ali is None else Alignment(ali),
                       label=None if label is None else str(label))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: bad utterance record ({type(e).__name__}: {e})") from e


def write_manifest(path: str | Path, utts: list[Utterance]) -> None:
    atomic_write_text(path, "".join(json.dumps(u.to_json(), sort_keys=True) + "\n" for u in utts))


def read_manifest(path: str | Path) -> list[Utterance]:
    path = Path(path)
    utts = []
    for lineno, line in enumerate(read_text(path, "corpus manifest").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: invalid JSON: {e}") from e
        if not isinstance(d, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(d).__name__}")
        utts.append(Utterance.from_json(d, f"{path}:{lineno}"))
    return utts


def parsed_manifest(path: str | Path) -> list[Utterance]:
    """read_manifest, parsed once per process and file version (a new list each call: the records are frozen, so
    callers share them). A 100-hour corpus's alignments are millions of records, and a run reads its manifests from
    planning, checking and the probes alike; the file's stat is part of the key, so a rewritten manifest is parsed
    again."""
    st = Path(path).stat()
    return list(_parsed(str(path), st.st_mtime_ns, st.st_size, st.st_ino))


@functools.lru_cache(maxsize=16)
def _parsed(path: str, mtime_ns: int, size: int, inode: int) -> tuple[Utterance, ...]:
    return tuple(read_manifest(path))


@dataclass(frozen=True)
class Corpus:
    """A prepared corpus on disk."""

    root: Path
    name: str
    phones: tuple[str, ...]  # label vocabulary (index = class id), built on the train split
    speakers: tuple[str, ...]  # probe speakers (index = class id), built on the train split
    info: dict[str, Any]  # everything else corpus.json records (preparation config, version, stats)

    def utterances(self, split: Split) -> list[Utterance]:
        """The split's utterances (parsed_manifest: once per process and file version)."""
        p = self.root / f"{split}.jsonl"
        return parsed_manifest(p) if p.is_file() else []

    def audio_path(self, utt: Utterance) -> Path:
        p = Path(utt.path)
        return p if p.is_absolute() else self.root / p


def write_corpus_info(root: str | Path, name: str, phones: list[str], speakers: list[str], info: dict[str, Any]) -> None:
    """Write corpus.json -- the done-marker: call it after every manifest is written and validated."""
    atomic_write_json(Path(root) / "corpus.json", {"name": name, "version": MANIFEST_VERSION, "phones": phones,
                                                   "speakers": speakers, "info": info})


def is_prepared(root: str | Path) -> bool:
    return (Path(root) / "corpus.json").is_file()


def load_corpus(root: str | Path) -> Corpus:
    root = Path(root)
    if not is_prepared(root):
        raise FileNotFoundError(f"no prepared corpus in {root} (corpus.json missing): prepare it with "
                                f"`python -m corpora prepare ...`")
    d = read_json(root / "corpus.json", "corpus description")
    if d.get("version") != MANIFEST_VERSION:
        raise ValueError(f"{root / 'corpus.json'}: manifest version {d.get('version')}, expected {MANIFEST_VERSION}")
    return Corpus(root=root, name=d["name"], phones=tuple(d["phones"]), speakers=tuple(d["speakers"]),
                  info=d.get("info", {}))
