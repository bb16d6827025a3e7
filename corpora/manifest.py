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

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from core.io import atomic_write_json, atomic_write_text, read_json, read_text

Split = Literal["pretrain", "train", "dev", "test"]
SPLITS: tuple[Split, ...] = ("pretrain", "train", "dev", "test")
PROBE_SPLITS: tuple[Split, ...] = ("train", "dev", "test")
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Segment:
    phone: str
    start: int  # first sample (inclusive)
    end: int  # last sample + 1


@dataclass(frozen=True)
class Utterance:
    id: str
    path: str  # absolute, or relative to the corpus directory
    sample_rate: int
    num_samples: int
    speaker: str
    split: Split
    alignment: tuple[Segment, ...] | None = None
    label: str | None = None  # utterance-level class (keyword spotting: corpora.speech_commands.CLASSES)

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
                       alignment=None if ali is None else tuple(Segment(str(p), int(s), int(e)) for p, s, e in ali),
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


@dataclass(frozen=True)
class Corpus:
    """A prepared corpus on disk."""

    root: Path
    name: str
    phones: tuple[str, ...]  # label vocabulary (index = class id), built on the train split
    speakers: tuple[str, ...]  # probe speakers (index = class id), built on the train split
    info: dict[str, Any]  # everything else corpus.json records (preparation config, version, stats)

    def utterances(self, split: Split) -> list[Utterance]:
        p = self.root / f"{split}.jsonl"
        return read_manifest(p) if p.is_file() else []

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
