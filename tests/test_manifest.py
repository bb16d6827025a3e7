"""corpora.manifest: alignments held compactly, and each manifest parsed once per process and file version."""
from __future__ import annotations

import sys

import numpy as np

from corpora.manifest import Alignment, Segment, Utterance, read_manifest, write_manifest
from tests.fixtures import make_tiny_corpus


def test_alignment_reads_as_segments_and_round_trips(tmp_path):
    segs = (Segment("sil", 0, 160), Segment("a", 160, 800), Segment("b", 800, 1600))
    u = Utterance("u1", "u1.wav", 16000, 1600, "s1", "train", alignment=segs)
    assert isinstance(u.alignment, Alignment)  # any sequence given is held compactly
    assert tuple(u.alignment) == segs and u.alignment == segs and u.alignment[1] == segs[1] and len(u.alignment) == 3
    assert u.alignment[1:] == segs[1:] and list(u.alignment.starts) == [0, 160, 800]
    assert u.to_json()["alignment"] == [["sil", 0, 160], ["a", 160, 800], ["b", 800, 1600]]
    assert all(type(x) is int for _, *ab in u.to_json()["alignment"] for x in ab)  # JSON-serialisable, not numpy
    write_manifest(tmp_path / "m.jsonl", [u])
    back = read_manifest(tmp_path / "m.jsonl")[0]
    assert back == u and hash(back) == hash(u)
    assert back != Utterance("u1", "u1.wav", 16000, 1600, "s1", "train", alignment=segs[:2])


def test_alignment_costs_far_less_than_segment_objects():
    rng = np.random.default_rng(0)
    bounds = np.sort(rng.integers(0, 10**6, 2 * 400)).reshape(-1, 2)
    segs = [Segment(sys.intern("ae"), int(a), int(b)) for a, b in bounds]
    ali = Alignment(segs)
    compact = sys.getsizeof(ali.phones) + sys.getsizeof(ali.bounds)  # the array owns its data: counted in its size
    objects = sys.getsizeof(segs) + sum(sys.getsizeof(s) + sys.getsizeof(s.start) + sys.getsizeof(s.end) for s in segs)
    assert compact * 4 < objects  # ~24 B a segment against ~120


def test_manifest_is_parsed_once_per_file_version(tmp_path):
    corpus = make_tiny_corpus(tmp_path / "c")
    first, again = corpus.utterances("train"), corpus.utterances("train")
    assert first == again and first is not again and all(a is b for a, b in zip(first, again))
    first.pop()  # a caller's list is its own
    assert len(corpus.utterances("train")) == len(again)
    write_manifest(corpus.root / "train.jsonl", again[:3])  # a rewritten manifest is read again
    assert [u.id for u in corpus.utterances("train")] == [u.id for u in again[:3]]
