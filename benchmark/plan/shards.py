"""Sharded sweeps: `--shard I/N` runs a deterministic, cost-balanced share of the planned runs.

Every shard computes the same assignment from the plan alone (config, fractions, each upstream's planned hidden
states and width), never from results or the clock, so a shard re-run later (after a failure) gets the same share.
The assignment is longest-expected-cost-first onto the shard that would finish it earliest, where a shard that does
not yet hold an upstream also pays that upstream's set-up (loading and whitening its splits), and frozen probes
count 1/workers of their time (a shard trains `probe_workers` of them at once, fine-tuning one at a time): the few
heavy runs (fine-tuning, the 100 % fractions) spread first, and an upstream's runs cluster on few shards.
"""
from __future__ import annotations

import re
from dataclasses import replace

from benchmark.plan.config import BenchmarkConfig, Shard
from benchmark.plan.runs import PlannedRun, expand_runs
from benchmark.plan.shapes import planned_upstream
from benchmark.record.results import shard_results_dir
from downstream.tasks import get_task

RunKey = tuple[str, str, str, float, int]  # (upstream spec, task, mode label, fraction, seed)


def parse_shard(text: str) -> Shard:
    """'3/10' -> Shard(3, 10); ValueError naming --shard for anything else (0 <= I < N)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if m is None:
        raise ValueError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. --shard 0/10 "
                         f"(--shard $SLURM_ARRAY_TASK_ID/10 in an array 0-9)")
    index, count = int(m[1]), int(m[2])
    if count < 1:
        raise ValueError(f"--shard {text}: N must be >= 1")
    if index >= count:
        raise ValueError(f"--shard {text}: I must be in 0..{count - 1} (shards are numbered from 0, as "
                         f"$SLURM_ARRAY_TASK_ID in an array 0-{count - 1})")
    return Shard(index, count)


def run_key(run: PlannedRun) -> RunKey:
    return (run.upstream, run.task, run.mode.label, run.fraction, run.seed)


# engines that train on whole utterances, one probe at a time (downstream.ctc, downstream.verification): seconds of
# one run at 100 % of the labels on a 4 x 256 upstream's last layer, from mockingjay's rows on the built-in corpus
# (phone_ctc 26 s, speaker_verification 4 s a run, 5 % and 100 % averaged, on 2 cores loaded by other jobs:
# docs/benchmark.md); rough (a weighted sum that does not fit in the probe memory streams its hidden states from the
# cache: 7x the last layer's time for speaker_verification, 2.5x for phone_ctc)
UTTERANCE_ENGINE_SECONDS: dict[str, float] = {"ctc": 30.0, "verification": 8.0}


def expected_seconds(run: PlannedRun, num_hidden_states: int, hidden_size: int) -> float:
    """Expected wall seconds of one run on 2 CPU cores of the built-in corpus (frozen probes two at a time, as in
    the main job): only the ratios matter.

    Fitted to the per-run means of the 218-run main job that pretrained its models inside the job (SGD frame
    probes, L2-path utterance probes; results/runs.csv at commit 45d5dbc, wall_seconds; correlation 0.96 with its
    218 rows): phone_linear at 100 % 13-19 s (last) and 28-35 s (weighted sum), 1-3 s at 1-12.5 %;
    speaker_utterance 4-17 s at 100 %; mel (80-d) 6 s; fine-tuning 93-129 s. Work grows with the labelled frames
    (the fraction), the width and the hidden states read.
    """
    f = run.fraction
    width = hidden_size / 256
    if run.finetune:  # the upstream's forward and backward dominate: its depth and width
        return 30.0 + 100.0 * f * (num_hidden_states / 4) * width
    read = len(run.mode.layers_read(num_hidden_states))
    work = f * width * (1 + 0.35 * (read - 1))
    task = get_task(run.task)  # the spec says what a probe reads: utterance means, frames, or whole utterances
    if task.pooled:
        return 1.5 + 9.0 * work
    if task.frame_targets:
        # an MLP head (Linear(D, 768) first): 9-11x a linear probe's group (phone_1hidden against phone_linear, one
        # group of each per upstream on the last layer, in the main job's rows: results/runs.csv, wall_seconds)
        return 1.5 + 16.0 * work * (1.0 if task.linear else 10.0)
    return 1.5 + UTTERANCE_ENGINE_SECONDS.get(task.engine, 60.0) * work


def setup_seconds(num_hidden_states: int, hidden_size: int) -> float:
    """Expected seconds for a shard to take an upstream on: load its splits from the cache and whiten them
    (15-25 s for a 4 x 256 Transformer in that 218-run main job)."""
    return 5.0 + 20.0 * num_hidden_states * hidden_size / (4 * 256)


def shard_seconds(run: PlannedRun, num_hidden_states: int, hidden_size: int, workers: int) -> float:
    """What a run adds to its shard's wall time: frozen probes share the shard `workers` at a time."""
    cost = expected_seconds(run, num_hidden_states, hidden_size)
    return cost if run.finetune else cost / max(1, workers)


def assign(runs: list[tuple[PlannedRun, int, int]], count: int, workers: int = 2) -> dict[RunKey, int]:
    """Shard of every run, given (run, hidden states, width) for the WHOLE plan: longest expected cost first onto
    the shard where it would finish earliest (its load, plus the upstream's set-up if the shard does not hold it
    yet); ties go to the lowest shard. Depends only on its input (sorted canonically), not on its order."""
    items = sorted(((shard_seconds(r, L, D, workers), run_key(r), setup_seconds(L, D)) for r, L, D in runs),
                   key=lambda x: (-x[0], x[1]))
    load = [0.0] * count
    held: list[set[str]] = [set() for _ in range(count)]
    out: dict[RunKey, int] = {}
    for cost, key, setup in items:
        if key in out:  # the same run listed twice (e.g. one spec given twice): one shard runs it
            continue
        spec = key[0]
        s = min(range(count), key=lambda k: (load[k] + cost + (0.0 if spec in held[k] else setup), k))
        load[s] += cost + (0.0 if spec in held[s] else setup)
        held[s].add(spec)
        out[key] = s
    return out


def shard_loads(runs: list[tuple[PlannedRun, int, int]], count: int, workers: int = 2) -> list[float]:
    """Expected seconds of every shard under `assign` (set-ups included): for --dry-run and the docs."""
    shard_of = assign(runs, count, workers)
    load = [0.0] * count
    held: list[set[str]] = [set() for _ in range(count)]
    for r, L, D in runs:
        s = shard_of[run_key(r)]
        load[s] += shard_seconds(r, L, D, workers) + (0.0 if r.upstream in held[s] else setup_seconds(L, D))
        held[s].add(r.upstream)
    return load


def whole_plan(cfg: BenchmarkConfig, fractions: list[float]) -> list[tuple[PlannedRun, int, int]]:
    """(run, hidden states, width) of every run of the unsharded plan, each upstream's shape read from its planned
    checkpoint (or preset) without building it, as every shard does."""
    out = []
    for spec in dict.fromkeys(cfg.upstreams):
        shape = planned_upstream(spec, cfg).shape
        out += [(r, shape.num_hidden_states, shape.hidden_size)
                for r in expand_runs(cfg, spec, shape.num_hidden_states, fractions, [])]
    return out


def shard_filter(cfg: BenchmarkConfig, spec: str, num_hidden_states: int, fractions: list[float],
                 runs: list[PlannedRun]) -> list[PlannedRun]:
    """The runs of `runs` (one upstream's, as benchmark.plan.runs.expand_runs plans them) that belong to shard
    cfg.shard; all of them without a shard. Every caller that plans a shard's runs filters them here: the runner,
    --dry-run, `prepare` and the feature cache's size (benchmark.plan.cachesize)."""
    if cfg.shard is None:
        return runs
    plan = whole_plan(cfg, fractions)
    planned = {r.upstream: L for r, L, _ in plan}
    if spec in planned and planned[spec] != num_hidden_states:
        raise ValueError(f"--shard {cfg.shard.label}: upstream {spec} has {num_hidden_states} hidden states but the "
                         f"plan read {planned[spec]} from its checkpoint or preset (was its checkpoint replaced "
                         f"during the sweep?); every shard must plan with the same checkpoints")
    shard_of = assign(plan, cfg.shard.count, cfg.probe_workers)
    return [r for r in runs if shard_of[run_key(r)] == cfg.shard.index]


def execution_order(upstreams: tuple[str, ...], shard: Shard) -> tuple[str, ...]:
    """The upstreams rotated by the shard index: shards started together begin with different upstreams, so
    those that find a cache missing rarely wait on the same extraction. Run ids and the assignment ignore order."""
    k = shard.index % len(upstreams) if upstreams else 0
    return upstreams[k:] + upstreams[:k]


def shard_config(cfg: BenchmarkConfig, text: str, command: str) -> BenchmarkConfig:
    """cfg for `--shard text`: rows into results/shards/I-of-N (never a file another shard writes), no report (the
    merge builds it), upstreams in this shard's order. ValueError naming --shard for a bad value or command."""
    if command != "run":
        raise ValueError(f"--shard applies to run (and --dry-run); `run_benchmark.py {command}` covers every shard "
                         f"(drop --shard)")
    shard = parse_shard(text)
    return replace(cfg, shard=shard, results_dir=shard_results_dir(cfg.results_dir, shard.dir_name), report=False,
                   upstreams=execution_order(tuple(dict.fromkeys(cfg.upstreams)), shard))
