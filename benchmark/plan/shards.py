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


def expected_seconds(run: PlannedRun, num_hidden_states: int, hidden_size: int) -> float:
    """Expected wall seconds of one run on 2 CPU cores of the built-in corpus (frozen probes two groups at a time, as
    in the main job): only the ratios matter. A frozen probe costs its task's `RunCost` (downstream.tasks: measured
    per run on the main and the full job's rows) at its fraction, times the weighted sum's factor where the mode mixes
    hidden states (scaled to the number it reads, measured at 4), times the upstream's width relative to 256;
    fine-tuning runs the upstream forward and backward at every step, so its depth and width dominate."""
    f = run.fraction
    width = hidden_size / 256
    if run.finetune:
        return 30.0 + 100.0 * f * (num_hidden_states / 4) * width
    cost = get_task(run.task).cost
    read = len(run.mode.layers_read(num_hidden_states))
    mix = 1.0 + (cost.weighted_sum - 1.0) * (read - 1) / 3
    return (cost.fixed + cost.per_fraction * f) * mix * width


def setup_seconds(num_hidden_states: int, hidden_size: int) -> float:
    """Expected seconds for a shard to take an upstream on, in `expected_seconds`' units: map its splits from the
    cache and fit the whitening (one streaming pass: about a second for a 4 x 256 Transformer on the built-in corpus
    in the main job's log), plus the reads of its rows that its groups' first passes fault in."""
    return 2.0 + 3.0 * num_hidden_states * hidden_size / (4 * 256)


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
