"""One reader for the feature cache (benchmark.cache.reader): two corpora of one name but different manifests (the
quick and the full built-in corpora are both `synth`) never share an entry, whether the runner, the disk-space
check, the certificate or a perf script looks it up; a failed lookup names what was asked, where, and what is there."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import benchmark.run.runner as runner
from benchmark.cache.extract import cache_key, ensure_split
from benchmark.cache.reader import DONE, EntryQuery, find_entries, find_entry, manifest_digest
from benchmark.plan.cachesize import cache_needs
from benchmark.plan.config import BenchmarkConfig
from benchmark.record.results import RUNS_FILE, read_rows
from benchmark.report.convergence import cached_entries, cached_frames, cached_identity, certify
from core.io import read_json
from corpora.manifest import PROBE_SPLITS
from downstream.config import ProbeConfig
from downstream.sources import frame_counts
from tests.fixtures import make_tiny_corpus
from upstream.features import FeatureConfig
from upstream.registry import build_upstream

# a random-init torchaudio model: its identity does not depend on the corpus (no corpus statistics), so the two
# corpora below differ in their manifests only, not in the upstream's checkpoint hash
SPEC = "wav2vec2_base_random:tiny"
QUIET = {"log": lambda *_: None}


def _cfg(corpus, tmp: Path, results: str) -> BenchmarkConfig:
    return BenchmarkConfig(corpus=str(corpus.root), upstreams=(SPEC,), tasks=("phone_linear",), modes="last",
                           fractions=(1.0,), seeds=1, probe=ProbeConfig().with_steps(20), finetune_ends=False,
                           results_dir=tmp / results, cache_dir=tmp / "cache", runs_dir=tmp / "runs", progress=False,
                           report=False, probe_workers=1)


def test_corpora_of_one_name_never_share_an_entry(tmp_path):
    a = make_tiny_corpus(tmp_path / "a", n_speakers=2, per_speaker={"train": 3, "dev": 1, "test": 1}, seed=0)
    b = make_tiny_corpus(tmp_path / "b", n_speakers=2, per_speaker={"train": 3, "dev": 1, "test": 1}, seed=1)
    assert a.name == b.name and [u.id for u in a.utterances("train")] == [u.id for u in b.utterances("train")]
    assert all(manifest_digest(a.utterances(s)) != manifest_digest(b.utterances(s)) for s in PROBE_SPLITS)
    cfg_a, cfg_b, cache = _cfg(a, tmp_path, "ra"), _cfg(b, tmp_path, "rb"), tmp_path / "cache"
    runner.run_benchmark(cfg_a, **QUIET)
    rows_a = read_rows(tmp_path / "ra" / RUNS_FILE)
    assert len(rows_a) == 1 and len(list(cache.glob(f"{rows_a[0]['upstream']}-*"))) == 3

    # corpus B before its own run: the disk check counts nothing cached, and no reader opens A's entries for it
    need_a, need_b = cache_needs(cfg_a, a)[0], cache_needs(cfg_b, b)[0]
    assert need_a.missing_bytes == 0 and need_b.missing_bytes == need_b.total_bytes > 0
    with pytest.raises(FileNotFoundError) as cert_err:
        certify(tmp_path / "ra", b, cache, progress=False, **QUIET)
    msg = str(cert_err.value)
    assert (f"built from manifest {manifest_digest(b.utterances('train'))[:16]} under {cache}" in msg
            and f"(built from manifest {manifest_digest(a.utterances('train'))[:16]})" in msg
            and "run the benchmark that produced these rows first" in msg), msg
    with pytest.raises(FileNotFoundError, match=f"{SPEC} on the train split of corpus tiny built from manifest"):
        cached_identity(cache, SPEC, b)

    # the runner builds B's own entries beside A's, and each corpus reads its own
    runner.run_benchmark(cfg_b, **QUIET)
    rows_b = read_rows(tmp_path / "rb" / RUNS_FILE)
    assert rows_b[0]["ckpt_hash"] == rows_a[0]["ckpt_hash"] and rows_b[0]["run_id"] != rows_a[0]["run_id"]
    metas = [read_json(m, "meta")["key"] for m in sorted(cache.glob("*/meta.json"))]
    assert sorted((k["split"], k["manifest"]) for k in metas) == sorted(
        (s, manifest_digest(c.utterances(s))) for c in (a, b) for s in PROBE_SPLITS)  # six entries, none shared
    up = build_upstream(SPEC)
    for corpus in (a, b):
        frames, rule = cached_frames(cache, rows_a[0], corpus)
        assert rule == up.frame_rule
        for s in PROBE_SPLITS:
            assert frames.lengths(s).tolist() == frame_counts(rule, corpus.utterances(s)).tolist()
    assert cached_identity(cache, SPEC, b) == {k: rows_b[0][k] for k in ("upstream", "preset", "ckpt_hash")}
    table = certify(tmp_path / "rb", b, cache, progress=False, **QUIET)
    assert table["run_id"].tolist() == [rows_b[0]["run_id"]]


@pytest.fixture()
def mel_entry(tmp_path):
    corpus = make_tiny_corpus(tmp_path / "c", n_speakers=2, per_speaker={"train": 1, "dev": 1, "test": 1})
    up = build_upstream("mel", feature=FeatureConfig(norm="none"))
    ident = {"upstream": "mel", "preset": "default", "ckpt_hash": "h"}
    utts = corpus.utterances("dev")
    ensure_split(tmp_path / "cache", ident, up, corpus, "dev", utts, progress=False, **QUIET)
    name, fields = cache_key(ident, up, corpus, "dev", utts)
    return corpus, tmp_path / "cache", tmp_path / "cache" / name, fields


def test_the_reader_serves_only_complete_intact_entries_and_says_why(mel_entry):
    corpus, cache, d, fields = mel_entry
    query = EntryQuery.for_split(corpus, "dev", "mel", "default", "h")
    assert find_entry(cache, query).path == d and find_entries(cache, EntryQuery.for_key(fields))[0].key == fields
    assert find_entries(cache, EntryQuery.for_split(corpus, "dev", "mel", "default")) != []  # any checkpoint
    with pytest.raises(FileNotFoundError) as e:  # another checkpoint: named, not served
        find_entry(cache, EntryQuery.for_split(corpus, "dev", "mel", "default", "other"))
    assert f"there instead: {d.name} (checkpoint h)" in str(e.value)
    with pytest.raises(FileNotFoundError, match="holding hidden states 1 under .*holds hidden states 0 only"):
        find_entry(cache, query, need=(1,))
    with open(d / "hidden.npy", "r+b") as f:  # damaged after it was written: no reader opens it
        f.seek(os.path.getsize(d / "hidden.npy") - 10)
        f.write(b"\xff" * 10)
    with pytest.raises(FileNotFoundError, match="checksum differs"):
        find_entry(cache, query)
    (d / DONE).unlink()
    with pytest.raises(FileNotFoundError, match=r"no done-marker .*; run the benchmark first"):
        find_entry(cache, query)


def test_a_perf_script_takes_the_newest_checkpoint_or_the_one_it_names(tmp_path):
    """`cached_identity` (the perf scripts' --upstream): the newest cache of the upstream, whichever checkpoint it is
    of, or with `@HASH` the cache of checkpoint HASH; a hash with no cache is an error that names what is there."""
    corpus = make_tiny_corpus(tmp_path / "c", n_speakers=2, per_speaker={"train": 1, "dev": 1, "test": 1})
    up = build_upstream("mel", feature=FeatureConfig(norm="none"))
    for h in ("older", "newer"):
        ident = {"upstream": "mel", "preset": "default", "ckpt_hash": h}
        ensure_split(tmp_path / "cache", ident, up, corpus, "train", corpus.utterances("train"), progress=False,
                     **QUIET)
    older = find_entry(tmp_path / "cache", EntryQuery.for_split(corpus, "train", "mel", "default", "older")).path
    os.utime(older / "meta.json", (1e9, 1e9))  # written long before the other, whatever the clock's resolution
    assert cached_identity(tmp_path / "cache", "mel", corpus)["ckpt_hash"] == "newer"
    assert cached_identity(tmp_path / "cache", "mel@older", corpus) == {"upstream": "mel", "preset": "default",
                                                                       "ckpt_hash": "older"}
    with pytest.raises(FileNotFoundError, match=r"mel:default \(checkpoint gone\).*there instead: .*checkpoint older"):
        cached_identity(tmp_path / "cache", "mel@gone", corpus)
