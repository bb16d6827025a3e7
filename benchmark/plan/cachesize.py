"""The feature cache's size for a plan (frames x hidden states read x dim x 2 bytes, float16) and the check, before
anything is extracted, that it fits on the cache's disk. The hidden states are those the planned modes read
(benchmark.plan.runs.cache_layers: one for last or layer=K, all for weighted_sum), as benchmark.cache.extract stores
them."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from benchmark.cache.reader import EntryQuery, find_entries
from benchmark.inputs.corpus import resolve_corpus
from benchmark.plan.config import BenchmarkConfig
from benchmark.plan.runs import PlannedRun, cache_layers, choose_fractions, expand_runs, planned_splits
from benchmark.plan.shapes import PlannedUpstream, planned_upstream
from benchmark.plan.shards import assign, run_key, shard_filter, whole_plan
from corpora.manifest import PROBE_SPLITS, Corpus, Utterance
from downstream.sources import frame_counts
from downstream.tasks import get_task
from upstream.interface import UpstreamShape
from upstream.registry import parse_spec

BYTES_PER_VALUE = 2  # float16


def cache_bytes(frames: int, hidden_states: int, hidden_size: int) -> int:
    """Bytes of hidden.npy for `frames` frames (the .npy header and offsets are negligible)."""
    return frames * hidden_states * hidden_size * BYTES_PER_VALUE


@dataclass(frozen=True)
class CacheNeed:
    spec: str
    shape: UpstreamShape
    layers: tuple[int, ...]  # the hidden states the planned runs read (benchmark.plan.runs.cache_layers)
    frames: int  # over the cache splits the planned tasks read (the probe splits, and trial utterances)
    total_bytes: int  # `layers` of every such split
    cached_bytes: int  # splits an existing entry serves (it holds every hidden state of `layers`)
    # what extraction writes for the other splits: `extract_layers` (benchmark.cache.extract.ensure_split)
    missing_bytes: int
    missing_frames: int
    extract_layers: tuple[int, ...]  # `layers` and those of the model's older entries (one new entry serves all)


def describe_layers(layers: tuple[int, ...], hidden_states: int) -> str:
    """'4 hidden states' (all of them) or '1 of 4 hidden states [3]'."""
    if len(layers) == hidden_states:
        return f"{hidden_states} hidden states"
    return f"{len(layers)} of {hidden_states} hidden states [{','.join(map(str, layers))}]"


def _held(cache_dir: Path, spec: str, up: PlannedUpstream, corpus: Corpus, split: str,
          utts: list[Utterance]) -> list[tuple[int, ...]]:
    """The hidden states held by each complete, intact cache entry of this upstream, preset, checkpoint (when the
    plan knows its hash) and shape on this cache split's utterances: the entries extraction would read."""
    if up.fresh:
        return []
    name, preset = parse_spec(spec)
    query = EntryQuery.for_split(corpus, split, name, preset, up.ckpt_hash or None, utts=utts,
                                 num_hidden_states=up.shape.num_hidden_states, hidden_size=up.shape.hidden_size)
    return [e.layers for e in find_entries(cache_dir, query)]


def planned_layers(cfg: BenchmarkConfig, spec: str, hidden_states: int, fractions: list[float]) -> tuple[int, ...]:
    """The hidden states `spec`'s planned runs (with cfg.shard, the shard's) read from the cache."""
    return cache_layers(_planned(cfg, spec, hidden_states, fractions), hidden_states)


def _planned(cfg: BenchmarkConfig, spec: str, hidden_states: int, fractions: list[float]) -> list[PlannedRun]:
    return shard_filter(cfg, spec, hidden_states, fractions, expand_runs(cfg, spec, hidden_states, fractions, []))


def cache_needs(cfg: BenchmarkConfig, corpus: Corpus, specs: list[str] | None = None) -> list[CacheNeed]:
    """What each upstream's cache of the probe splits takes, and how much of it is already there."""
    fractions = choose_fractions(cfg, corpus, log=lambda *_: None)
    out = []
    for spec in dict.fromkeys(cfg.upstreams if specs is None else specs):
        up = planned_upstream(spec, cfg)
        shape = up.shape
        runs = _planned(cfg, spec, shape.num_hidden_states, fractions)
        layers = cache_layers(runs, shape.num_hidden_states)
        frames = cached = missing = missing_frames = 0
        extract: set[int] = set()
        tasks = [get_task(t) for t in dict.fromkeys(r.task for r in runs)]
        splits = planned_splits(tasks, corpus) if tasks else {s: corpus.utterances(s) for s in PROBE_SPLITS}
        for split, utts in splits.items():  # the probe splits and the tasks' own (speaker verification's trials)
            n = int(frame_counts(shape.frame_rule, utts).sum())
            frames += n
            held = _held(cfg.cache_dir, spec, up, corpus, split, utts) if layers else []
            if not layers or any(set(layers) <= set(h) for h in held):
                cached += cache_bytes(n, len(layers), shape.hidden_size)
            else:
                build = set(layers).union(*held)
                extract |= build
                missing += cache_bytes(n, len(build), shape.hidden_size)
                missing_frames += n
        out.append(CacheNeed(spec, shape, layers, frames, cache_bytes(frames, len(layers), shape.hidden_size), cached,
                             missing, missing_frames, tuple(sorted(extract))))
    return out


def free_bytes(path: Path) -> tuple[Path, int]:
    """(the nearest existing folder at or above `path`, its disk's free bytes)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p, shutil.disk_usage(p).free


def fmt_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def check_cache_space(cfg: BenchmarkConfig, needs: list[tuple[str, CacheNeed]]) -> None:
    """ValueError (one line naming --cache-dir, the figure and the options) when the caches still to extract,
    (corpus name, need) pairs of every corpus of the invocation, do not fit together in the free space of the cache's
    disk."""
    needs = [(c, n) for c, n in needs if n.missing_bytes > 0]
    missing = sum(n.missing_bytes for _, n in needs)
    where, free = free_bytes(Path(cfg.cache_dir))
    if missing <= free:
        return
    several = len({c for c, _ in needs}) > 1
    parts = ", ".join(f"{n.spec}{f' on {c}' if several else ''} {fmt_bytes(n.missing_bytes)} ({n.missing_frames:,} "
                      f"frames x {describe_layers(n.extract_layers, n.shape.num_hidden_states)} x "
                      f"{n.shape.hidden_size} x 2 B)" for c, n in needs)
    one_layer = ("cache one hidden state instead of all (--mode last or layer=K, no weighted_sum), "
                 if any(len(n.extract_layers) > 1 for _, n in needs) else "")
    raise ValueError(f"--cache-dir {cfg.cache_dir}: the feature cache needs {fmt_bytes(missing)} more ({parts}) but "
                     f"{where} has {fmt_bytes(free)} free; give --cache-dir a disk with room, probe fewer or smaller "
                     f"upstreams at a time (--upstream), {one_layer}or run without a cache (--no-cache: every run "
                     f"extracts into memory again); see docs/scale.md")


def check_space_for(cfg: BenchmarkConfig) -> None:
    """`check_cache_space` for what this invocation will extract: every planned upstream, or with cfg.shard those
    with runs in the shard, on every corpus of the plan (BenchmarkConfig.by_corpus) together: they share the cache's
    disk. A corpus still to be built (a built-in one, built on demand) is not counted: its caches take a few GB
    (docs/scale.md)."""
    check_cache_space(cfg, [(part.corpus, n) for part in cfg.by_corpus() for n in _needs_on_corpus(part)])


def _needs_on_corpus(cfg: BenchmarkConfig) -> list[CacheNeed]:
    corpus = resolve_corpus(cfg.corpus, cfg.data_dir, cfg.quick, prepare=False)
    if corpus is None:
        return []
    specs = None
    if cfg.shard is not None:
        plan = whole_plan(cfg, choose_fractions(cfg, corpus, log=lambda *_: None))
        shard_of = assign(plan, cfg.shard.count, cfg.probe_workers)
        specs = [r.upstream for r, _, _ in plan if shard_of[run_key(r)] == cfg.shard.index]
    return cache_needs(cfg, corpus, specs)
