"""Reading the feature cache: the one place that finds, validates and opens its entries (benchmark.cache.extract
writes them).

An entry is read only for the upstream it was built from (name, preset and, when the caller knows it, checkpoint
hash) and for the corpus split it was built from, recognised by the split's manifest digest and not by the corpus
name alone: corpora of one name share directory prefixes (the quick and the full built-in corpora are both `synth`;
a rescaled corpus keeps its name), and an entry of another manifest holds other utterances. The runner
(benchmark.cache.extract.ensure_split), the disk-space check (benchmark.plan.cachesize), the certificate and the perf
scripts (benchmark.report.convergence) all look entries up through `find_entries` / `find_entry`, so they agree on
which entry belongs to what and on whether it is complete and intact; a failed lookup says what was asked, where, and
what is there instead.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.frames import FrameRule
from core.io import read_json, sha256_json
from corpora.manifest import Corpus, Utterance
from downstream.sources import SplitArrays
from upstream.features import FeatureConfig

CACHE_FORMAT_VERSION = 1
DONE = "DONE"
META = "meta.json"
_NAMED = ("upstream", "preset", "ckpt_hash", "corpus", "split", "manifest")
_SHOWN = 5  # other directories a failed lookup lists, to keep its error one readable line


def manifest_digest(utts: list[Utterance]) -> str:
    return sha256_json([[u.id, u.path, u.sample_rate, u.num_samples] for u in utts])


def key_layers(key: Mapping[str, Any]) -> tuple[int, ...]:
    """The hidden-state indices an entry with key fields `key` holds (its meta.json's "key")."""
    return tuple(key["layers"]) if "layers" in key else tuple(range(int(key["num_hidden_states"])))


def frame_rule_of(key: Mapping[str, Any]) -> FrameRule:
    """The frame rule of the hidden states cached under `key` (the 'key' of a meta.json): recorded as such, or, for a
    log-mel front-end, implied by its feature config (keys of those caches are unchanged since before frame rules)."""
    if "frame_rule" in key:
        return FrameRule.from_dict(key["frame_rule"])
    return FeatureConfig.from_dict(key["feature"]).frame_rule


def sampled_checksum(path: Path, blocks: int = 16, block: int = 1 << 16) -> str:
    """SHA-256 of the size and `blocks` evenly spaced 64 KiB blocks: catches truncation and most damage
    in milliseconds where a full hash of a multi-GB file would cost seconds on every open."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        for k in range(blocks):
            f.seek(max(0, (size - block) * k // max(1, blocks - 1)))
            h.update(f.read(block))
    return h.hexdigest()


def entry_problem(d: Path, fields: Mapping[str, Any]) -> str | None:
    """Why the cache directory `d` cannot be used, or None when it is complete and matches `fields`."""
    if not (d / DONE).is_file():
        return "no done-marker (interrupted extraction)"
    try:
        meta = read_json(d / META, "feature cache metadata")
        done = read_json(d / DONE, "feature cache done-marker")
    except (FileNotFoundError, ValueError) as e:
        return str(e)
    if meta.get("key") != fields:
        return "key fields differ (stale cache for another model, config or manifest)"
    hidden = d / "hidden.npy"
    if not hidden.is_file() or hidden.stat().st_size != done.get("hidden_bytes"):
        return "hidden.npy missing or of the wrong size (truncated)"
    if sampled_checksum(hidden) != done.get("hidden_checksum"):
        return "hidden.npy checksum differs (corrupted)"
    try:
        offsets = np.load(d / "offsets.npy")
    except (OSError, ValueError) as e:
        return f"offsets.npy unreadable: {e}"
    if offsets.tolist() != meta.get("offsets_list"):
        return "offsets.npy differs from meta.json"
    return None


@dataclass(frozen=True)
class CacheEntry:
    """A complete, intact entry: its directory and its key fields (meta.json's "key")."""

    path: Path
    key: Mapping[str, Any]

    @property
    def layers(self) -> tuple[int, ...]:
        return key_layers(self.key)

    @property
    def identity(self) -> dict[str, str]:
        """{upstream, preset, ckpt_hash} of the model that produced it, as result rows record it."""
        return {"upstream": self.key["upstream"], "preset": self.key["preset"], "ckpt_hash": str(self.key["ckpt_hash"])}

    @property
    def frame_rule(self) -> FrameRule:
        return frame_rule_of(self.key)

    def written(self) -> float:
        """When its metadata was written (st_mtime): the newest entry is the last one a run cached."""
        return (self.path / META).stat().st_mtime

    def open(self) -> SplitArrays:
        hidden = np.load(self.path / "hidden.npy", mmap_mode="r")  # memory-mapped: pages are read on demand
        return SplitArrays(hidden=hidden, offsets=np.load(self.path / "offsets.npy"), layers=self.layers,
                           num_hidden_states=int(self.key["num_hidden_states"]))


@dataclass(frozen=True)
class EntryQuery:
    """Which entries a reader may open: those of one upstream on one corpus split, built from `manifest`.

    ckpt_hash None accepts any checkpoint of the preset (a perf script measuring whatever the last run cached; the
    disk check of an upstream whose hash is known only once it is built). `more` holds further key fields that must
    be equal (hidden states, width); with `exact` the entry's key fields, less the hidden states it holds, must be
    these and no others: the runner reads only entries of the very key it would write."""

    upstream: str
    preset: str
    corpus: str
    split: str
    manifest: str
    ckpt_hash: str | None = None
    more: Mapping[str, Any] = field(default_factory=dict)
    exact: bool = False

    @classmethod
    def for_split(cls, corpus: Corpus, split: str, upstream: str, preset: str, ckpt_hash: str | None = None,
                  utts: list[Utterance] | None = None, **more: Any) -> EntryQuery:
        """The entries of `corpus`'s `split` as its manifest lists it now, or as `utts` lists it (a cache split of a
        task's own, such as speaker verification's trial utterances: downstream.tasks.TaskSpec.cache_splits)."""
        return cls(upstream, preset, corpus.name, split,
                   manifest_digest(corpus.utterances(split) if utts is None else utts),
                   None if ckpt_hash is None else str(ckpt_hash), dict(more))

    @classmethod
    def for_key(cls, fields: Mapping[str, Any]) -> EntryQuery:
        """The entries of exactly the key fields `fields` (benchmark.cache.extract.cache_key), of any set of hidden
        states."""
        rest = {k: v for k, v in fields.items() if k not in (*_NAMED, "format", "layers")}
        return cls(fields["upstream"], fields["preset"], fields["corpus"], fields["split"], fields["manifest"],
                   str(fields["ckpt_hash"]), rest, exact=True)

    def _fields(self) -> dict[str, Any]:
        return {"format": CACHE_FORMAT_VERSION, "upstream": self.upstream, "preset": self.preset,
                **({} if self.ckpt_hash is None else {"ckpt_hash": self.ckpt_hash}), "corpus": self.corpus,
                "split": self.split, "manifest": self.manifest, **self.more}

    def mismatch(self, key: Mapping[str, Any]) -> str | None:
        """What makes an entry with key fields `key` another one than asked for ('built from manifest ...'), or None."""
        for k, want in self._fields().items():
            got = key.get(k)
            if (str(got) if k == "ckpt_hash" else got) == want:
                continue
            if k not in key:
                return f"no {k} in its key"
            if k == "manifest":
                return f"built from manifest {str(got)[:16]}"
            if k == "ckpt_hash":
                return f"checkpoint {got}"
            return f"{k} {got!r}" if isinstance(got, (str, int, type(None))) else f"another {k}"
        if self.exact and (extra := sorted(set(key) - set(self._fields()) - {"layers"})):
            return f"key fields {', '.join(extra)} beyond those asked for"
        return None

    def describe(self) -> str:
        """'mockingjay:small (checkpoint 1a2b...) on the dev split of corpus synth built from manifest 3c4d...'."""
        ckpt = "" if self.ckpt_hash is None else f" (checkpoint {self.ckpt_hash})"
        return (f"{self.upstream}:{self.preset}{ckpt} on the {self.split} split of corpus {self.corpus} built from "
                f"manifest {self.manifest[:16]}")


def scan(cache_root: Path, query: EntryQuery) -> tuple[list[CacheEntry], list[tuple[Path, str]]]:
    """(the complete, intact entries `query` asks for, most hidden states first; every other directory of the same
    upstream, corpus name and split, with why it is not one of them)."""
    good: list[CacheEntry] = []
    other: list[tuple[Path, str]] = []
    for d in sorted(Path(cache_root).glob(f"{query.upstream}-{query.corpus}-{query.split}-*")):
        try:
            key = read_json(d / META, "feature cache metadata").get("key")
        except (FileNotFoundError, ValueError, AttributeError):
            other.append((d, "no readable meta.json"))
            continue
        if not isinstance(key, dict):
            other.append((d, "meta.json has no key fields"))
            continue
        why = query.mismatch(key) or entry_problem(d, key)
        if why is None:
            good.append(CacheEntry(d, key))
        else:
            other.append((d, why))
    good.sort(key=lambda e: (-len(e.layers), e.path.name))
    return good, other


def find_entries(cache_root: Path, query: EntryQuery, need: Sequence[int] = ()) -> list[CacheEntry]:
    """The complete, intact entries `query` asks for that hold every hidden state of `need`, most hidden states
    first (the first serves a request best: benchmark.cache.extract)."""
    return [e for e in scan(cache_root, query)[0] if set(need) <= set(e.layers)]


def find_entry(cache_root: Path, query: EntryQuery, need: Sequence[int] = (), *, newest: bool = False,
               hint: str = "run the benchmark first (it builds the cache)") -> CacheEntry:
    """The entry of `find_entries` holding the most hidden states (with `newest`, the one written last);
    FileNotFoundError naming what was asked, `cache_root`, what is there instead, and `hint` when there is none."""
    good, other = scan(cache_root, query)
    serving = [e for e in good if set(need) <= set(e.layers)]
    if serving:
        return max(serving, key=CacheEntry.written) if newest else serving[0]
    other += [(e.path, f"holds hidden states {_ids(e.layers)} only") for e in good]
    there = [f"{d.name} ({why})" for d, why in sorted(other)[:_SHOWN]]
    if len(other) > _SHOWN:
        there.append(f"{len(other) - _SHOWN} more")
    held = f" holding hidden states {_ids(need)}" if need else ""
    instead = f"; there instead: {', '.join(there)}" if there else ""
    raise FileNotFoundError(f"no cache entry for {query.describe()}{held} under {cache_root}{instead}; {hint}")


def _ids(layers: Sequence[int]) -> str:
    return ",".join(map(str, layers))
