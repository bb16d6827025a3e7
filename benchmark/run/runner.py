"""Executes a benchmark plan: per upstream, extract (or reuse) cached features once, then train every probe."""
from __future__ import annotations

import datetime as _dt
import resource
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.allocator import reuse_freed_blocks, release
from core.io import atomic_write_text, sha256_json
from core.parallel import run_parallel
from core.repro import provenance, torch_threads
from corpora.manifest import Corpus, PROBE_SPLITS, Utterance
from downstream.data import SplitLabels, num_classes, split_labels
from downstream.fractions import fraction_subset
from downstream.modes import LayerMode
from downstream.sources import ArraySource, LiveSource, PooledSource, SplitArrays
from downstream.tasks import TaskSpec, get_task
from downstream.finetune import finetune_probe
from downstream.config import L2Path, ProbeConfig
from downstream.probe import ProbeResult, ProbeSpec
from downstream.train import train_probe, train_probes
from benchmark.cache.extract import ensure_split, extract_arrays
from benchmark.cache.reader import manifest_digest
from benchmark.inputs.corpus import resolve_corpus
from benchmark.inputs.upstream import ResolvedUpstream, resolve_upstream
from benchmark.plan.config import BenchmarkConfig
from benchmark.plan.runs import (PlannedRun, cache_layers, check_tasks, choose_fractions, expand_runs, planned_splits,
                                 run_id)
from benchmark.plan.shards import expected_seconds, shard_filter
from benchmark.record.outcomes import write_outcomes
from benchmark.record.results import RUNS_FILE, append_row, done_run_ids, write_leaderboard
from benchmark.record.schema import COMMAND_FILE


@dataclass
class RunnerStats:
    runs_done: int = 0
    runs_skipped: int = 0
    extract_seconds: float = 0.0
    probe_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def corpus_digest(corpus: Corpus) -> str:
    return sha256_json({"name": corpus.name, **{s: manifest_digest(corpus.utterances(s)) for s in PROBE_SPLITS}})[:16]


def _arrays(cfg: BenchmarkConfig, up: ResolvedUpstream, corpus: Corpus, splits: dict[str, list[Utterance]],
            layers: tuple[int, ...], stats: RunnerStats, log) -> dict[str, SplitArrays]:
    """The hidden states `layers` of every cache split the pending tasks read (the probe splits, and a task's own such
    as speaker verification's trial utterances: TaskSpec.cache_splits): from the feature cache (extracted
    into it when missing), or with cfg.use_cache False (--no-cache) extracted into memory, float16 as the cache
    stores them."""
    t0 = time.perf_counter()
    arrays = {}
    L = up.model.num_hidden_states
    for split, split_utts in splits.items():
        if cfg.use_cache:
            arrays[split], built = ensure_split(cfg.cache_dir, up.identity, up.model, corpus, split, split_utts,
                                                progress=cfg.progress, device=cfg.device, log=log, layers=layers)
        else:
            arrays[split], built = extract_arrays(up.model, corpus, split_utts, layers, progress=cfg.progress,
                                                  device=cfg.device, desc=f"extract {up.spec}/{split}"), True
        if built:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            log(f"{up.spec}: extracted {split} ({arrays[split].hidden.shape[1]} frames x "
                f"{arrays[split].hidden.shape[0]} of {L} hidden states"
                f"{'' if cfg.use_cache else ', into memory (--no-cache)'}), peak RSS so far {rss:.0f} MiB")
    stats.extract_seconds += time.perf_counter() - t0
    return arrays


def task_sources(arrays: dict[str, SplitArrays], layouts: dict[str, dict[str, str]],
                 layers: tuple[int, ...]) -> dict[str, ArraySource]:
    """task -> the source of its probe splits (`layouts`: task -> probe split -> cache split). Tasks of one layout
    share one source; a layout with the same train split as an earlier one shares that one's whitening
    (ArraySource.with_splits), so the train frames are whitened once."""
    by_layout: dict[tuple[str, ...], ArraySource] = {}
    by_train: dict[str, ArraySource] = {}
    out = {}
    for task, layout in layouts.items():
        key = tuple(layout[s] for s in PROBE_SPLITS)
        if key not in by_layout:
            train = layout["train"]
            by_layout[key] = (by_train[train].with_splits({s: arrays[layout[s]] for s in PROBE_SPLITS if s != "train"})
                              if train in by_train else ArraySource({s: arrays[layout[s]] for s in PROBE_SPLITS}, layers))
            by_train.setdefault(train, by_layout[key])
        out[task] = by_layout[key]
    return out


def make_row(run: PlannedRun, rid: str, up: ResolvedUpstream, corpus: Corpus, layer: int, result, prov: dict,
             budget: str) -> dict[str, Any]:
    task = get_task(run.task)
    return {
        "run_id": rid, "corpus": corpus.name, **up.identity, "params": up.params,
        "pretrain_frames": up.pretrain_frames, "pretrain_seconds": round(up.pretrain_seconds, 1),
        "pretrain_recipe": up.pretrain_recipe,
        "task": run.task, "mode": run.mode.kind, "layer": layer, "fraction": run.fraction,
        "train_utts": result.train_utts, "train_frames": result.train_frames, "seed": run.seed,
        "metric": task.metric, "dev_metric": result.dev_metric, "test_metric": result.test_metric,
        "test_utt_metric": result.test_utt_metric, "best_step": result.best_step, "steps": result.steps,
        "budget": budget, "converged": result.converged,
        "wall_seconds": round(result.wall_seconds, 2),
        "layer_weights": ";".join(f"{w:.5f}" for w in result.layer_weights) if result.layer_weights else None,
        "device": prov["device"], "toolkit_version": prov["toolkit_version"], "git_commit": prov["git_commit"],
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def run_upstream(cfg: BenchmarkConfig, up: ResolvedUpstream, corpus: Corpus, runs: list[PlannedRun],
                 stats: RunnerStats, prov: dict, log=print) -> None:
    """Train every pending run of one upstream; each finished run appends its row immediately."""
    runs_csv = Path(cfg.results_dir) / RUNS_FILE
    done = set() if cfg.force else done_run_ids(runs_csv)
    digest = corpus_digest(corpus)
    L = up.model.num_hidden_states
    pending = []
    for r in runs:
        pcfg = cfg.probe_config(r.task, r.finetune)
        rid = run_id(digest, up.identity, r, r.mode.resolved_layer(L), pcfg, cfg.start_config(r))
        if rid in done:
            stats.runs_skipped += 1
        else:
            pending.append((r, rid, pcfg))
    if not pending:
        log(f"{up.spec}: all {len(runs)} runs already in {runs_csv}")
        return
    specs = {r.task: get_task(r.task) for r, _, _ in pending}
    splits = {t: spec.cache_splits(corpus) for t, spec in specs.items()}  # probe split -> (cache split, utterances)
    frozen = [p for p in pending if not p[0].finetune]
    finetune = [p for p in pending if p[0].finetune]
    # only the hidden states the pending runs read (fine-tuning starts from a frozen last-layer probe on them too)
    layers = cache_layers([r for r, _, _ in pending], L)
    arrays = _arrays(cfg, up, corpus, planned_splits(list(specs.values()), corpus), layers, stats, log)
    sources = task_sources(arrays, {t: {s: name for s, (name, _) in sp.items()} for t, sp in splits.items()}, layers)
    utts = {s: corpus.utterances(s) for s in PROBE_SPLITS}
    live = LiveSource(up.model, corpus, utts, cfg.device) if finetune else None
    pooled: dict[int, PooledSource] = {}  # id of a task's frame source -> its utterance means
    labels: dict[str, dict[str, SplitLabels]] = {}
    for t, spec in specs.items():  # before any worker thread starts
        if spec.labels.name not in labels:
            labels[spec.labels.name] = {s: split_labels(corpus, splits[t][s][1], s, spec.labels, up.model.frame_rule)
                                        for s in PROBE_SPLITS}
        if spec.pooled and id(sources[t]) not in pooled:
            pooled[id(sources[t])] = PooledSource(sources[t])  # mean pooling commutes with the layer mix: exact
            pooled[id(sources[t])].whitening()  # means and their statistics, once, before any worker thread starts
    whiten = {id(sources[t]): sources[t] for t, spec in specs.items() if not spec.pooled}
    if whiten:  # the engines of frame-reading tasks whiten the frames: fitted once, before any worker thread starts
        t0 = time.perf_counter()
        for src in whiten.values():
            src.whitening()
        log(f"{up.spec}: whitening fitted on the train frames in one streaming pass ({time.perf_counter() - t0:.0f} s)")

    def source_of(task: TaskSpec) -> ArraySource | PooledSource:
        """What the task's engine reads: its frames, or their utterance means (TaskSpec.pooled)."""
        frames = sources[task.name]
        return pooled[id(frames)] if task.pooled else frames

    def train_speakers(task: TaskSpec) -> list[str]:
        return [u.speaker for u in splits[task.name]["train"][1]]

    lock = threading.Lock()
    from tqdm import tqdm

    bar = tqdm(total=len(pending), desc=f"probes {up.spec}", unit="run", disable=not cfg.progress, dynamic_ncols=True)

    def record(r: PlannedRun, rid: str, pcfg, result) -> None:
        with lock:
            if result.test_units is not None:  # before the row: a recorded row has its outcomes
                write_outcomes(runs_csv.parent, rid, result.test_units)
            append_row(runs_csv, make_row(r, rid, up, corpus, r.mode.resolved_layer(L), result, prov, pcfg.budget))
            stats.runs_done += 1
            bar.set_postfix_str(f"{r.task} {r.mode.label}")
            bar.update(1)

    def one_group(group: list[tuple[PlannedRun, str, ProbeConfig]]) -> None:
        """Every fraction and seed of one task and mode, trained as one batched model (downstream.train)."""
        r0, _, pcfg = group[0]
        task = get_task(r0.task)
        spk = train_speakers(task)
        probes = [ProbeSpec(fraction_subset(spk, r.fraction, r.seed, task.labels.closed_set).indices, r.seed)
                  for r, _, _ in group]
        results = train_probes(task, r0.mode, source_of(task), labels[task.labels.name], probes,
                               num_classes(corpus, task), pcfg, device=cfg.device, memory=cfg.probe_memory)
        release()  # the group's freed activations back to the OS (core.allocator)
        for (r, rid, _), result in zip(group, results):
            if r.mode.kind == "last":
                with lock:
                    last_probes[(r.task, r.fraction, r.seed)] = result
            record(r, rid, pcfg, result)

    def one_finetune(r: PlannedRun, rid: str, pcfg) -> None:
        """Linear probe, then fine-tune: the head starts from the frozen last-layer probe (the one this invocation
        trained, or trained now when its row was already in runs.csv: the same probe either way)."""
        assert live is not None
        task = get_task(r.task)
        source = source_of(task)
        sub = fraction_subset(train_speakers(task), r.fraction, r.seed, task.labels.closed_set)
        n_cls, lab = num_classes(corpus, task), labels[task.labels.name]
        start = last_probes.get((r.task, r.fraction, r.seed))
        if start is None:
            start = train_probe(task, LayerMode("last"), source, lab, list(sub.indices), n_cls,
                                cfg.probe_config(r.task, False), r.seed, device=cfg.device, memory=cfg.probe_memory)
        whiten = source.whitening()[source.position(L - 1)]
        record(r, rid, pcfg, finetune_probe(task, start, whiten, live, up.model, lab, list(sub.indices), n_cls, pcfg,
                                            r.seed, device=cfg.device, progress=cfg.progress))

    last_probes: dict[tuple, ProbeResult] = {}  # (task, fraction, seed) -> frozen last-layer probe, for fine-tuning
    groups: dict[tuple, list] = {}
    for r, rid, pcfg in frozen:
        groups.setdefault((r.task, r.mode, pcfg), []).append((r, rid, pcfg))
    width = next(iter(arrays.values())).hidden.shape[2]
    cost = lambda job: expected_seconds(job[0], L, width)  # noqa: E731

    def solve_key(job: tuple[PlannedRun, str, ProbeConfig]) -> tuple | str:
        """The L2 path's probes on the same examples share one solve (downstream.path.fit_paths); another job is
        its own."""
        r, rid, pcfg = job
        if not isinstance(pcfg.trainer, L2Path):
            return rid
        task = get_task(r.task)
        sub = fraction_subset(train_speakers(task), r.fraction, r.seed, task.labels.closed_set)
        return (r.task, r.mode, pcfg, tuple(sorted(sub.indices)))
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    try:
        if groups:  # groups in `probe_workers` threads with `probe_threads` torch threads each
            # a step's freed activations are reused by the next (core.allocator)
            with torch_threads(min(cfg.probe_threads or threads, threads)), reuse_freed_blocks():
                order = balance(list(groups.values()), cost, cfg.probe_workers, solve_key)
                run_parallel(one_group, [(g,) for g in order], cfg.probe_workers, "probe")
        with reuse_freed_blocks():  # the upstream itself trains: one run at a time, every thread
            run_parallel(one_finetune, finetune, 1)
    finally:
        bar.close()
        stats.probe_seconds += time.perf_counter() - t0


def balance(groups: list[list], cost, workers: int, solve=None) -> list[list]:
    """The groups in the order `workers` threads take them, costliest first (expected seconds of a run: `cost`), so
    that the threads finish together. A group expected to take longer than an even share of the total (the 10-ms
    mel MLP, beside three quick groups) is split in two, its probes dealt costliest first to the lighter half,
    until no group is: a probe's row does not depend on the group it trains in (downstream.groups).

    `solve(job)`: a key shared by the jobs of a group that one solve serves (the L2 path's probes with the same
    examples and start: every seed at 100 % of the labels, downstream.path.fit_paths). Such jobs are costed once and
    never dealt to different halves, where the same path would be solved twice. None: every job is its own solve."""
    keys = {id(j): (solve or id)(j) for g in groups for j in g}

    def units(g: list) -> list[list]:
        by_key: dict = {}
        for j in g:
            by_key.setdefault(keys[id(j)], []).append(j)
        return list(by_key.values())

    def load(g: list) -> float:
        return sum(cost(u[0]) for u in units(g))

    share = sum(load(g) for g in groups) / max(1, workers)
    out, todo = [], list(groups)
    while todo:
        g = todo.pop()
        if workers > 1 and len(units(g)) > 1 and load(g) > share:
            halves: tuple[list, list] = ([], [])
            for u in sorted(units(g), key=lambda u: cost(u[0]), reverse=True):
                min(halves, key=load).extend(u)
            todo += list(halves)
        else:
            out.append(g)
    return sorted(out, key=lambda g: -load(g))


def run_benchmark(cfg: BenchmarkConfig, log=print) -> RunnerStats:
    """The whole benchmark: corpus, upstreams, cached features, probes, rows, leaderboard (and report)."""
    stats = RunnerStats()
    t0 = time.perf_counter()
    prov = provenance(cfg.device)
    for part in cfg.by_corpus():  # the corpus of the first task first; a task on another corpus after it
        run_corpus(part, stats, prov, log)
    for note in dict.fromkeys(stats.notes):
        log(f"note: {note}")
    if cfg.command and stats.runs_done:
        record_command(Path(cfg.results_dir), cfg.command, stats.runs_done, time.perf_counter() - t0, prov["device"])
    board = write_leaderboard(Path(cfg.results_dir))
    if board is not None:
        log(f"leaderboard: {board}")
    if cfg.report:
        build_report_if_available(Path(cfg.results_dir), log)
    log(f"done: {stats.runs_done} runs trained, {stats.runs_skipped} already done; extraction "
        f"{stats.extract_seconds:.0f} s, probes {stats.probe_seconds:.0f} s, total {time.perf_counter() - t0:.0f} s; "
        f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return stats


def run_corpus(cfg: BenchmarkConfig, stats: RunnerStats, prov: dict, log=print) -> None:
    """Every upstream's runs of the tasks that read cfg.corpus (one part of BenchmarkConfig.by_corpus)."""
    corpus = resolve_corpus(cfg.corpus, cfg.data_dir, cfg.quick, progress=cfg.progress)
    assert corpus is not None
    check_tasks(cfg.tasks, corpus)  # a corpus that cannot serve a task: a ValueError before any extraction
    fractions = choose_fractions(cfg, corpus, log)
    log(f"corpus {corpus.name} ({corpus.root}): {', '.join(cfg.tasks)}; fractions "
        f"{', '.join(f'{f:g}' for f in fractions)}; seeds {cfg.seeds}; results -> {cfg.results_dir}/{RUNS_FILE}")
    for spec in cfg.upstreams:
        up = resolve_upstream(spec, corpus, cfg.ckpts, cfg.runs_dir, cfg.quick, log, device=cfg.device,
                              progress=cfg.progress, pretrain=cfg.pretrain)
        runs = shard_filter(cfg, spec, up.model.num_hidden_states, fractions,
                            expand_runs(cfg, spec, up.model.num_hidden_states, fractions, stats.notes))
        run_upstream(cfg, up, corpus, runs, stats, prov, log)
        del up


def record_command(results_dir: Path, command: str, runs_done: int, seconds: float, device: str) -> None:
    """Append `command` (with what it did and when) to results/command.txt, which the report cites."""
    path = results_dir / COMMAND_FILE
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    when = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    line = f"{command}   # {when}: {runs_done} runs in {seconds / 60:.1f} min on {device}"
    atomic_write_text(path, old + line + "\n")


def build_report_if_available(results_dir: Path, log=print) -> Path | None:
    try:  # matplotlib and the report's modules are loaded only when a report is built
        from benchmark.report.build import build_report  # matplotlib: loaded only when a report is built
    except ImportError as e:
        log(f"report skipped: benchmark.report.build is not available ({e})")
        return None
    path = build_report(results_dir)
    log(f"report: {path}")
    return path
