"""`--dry-run`: the plan and its size, without preparing, pretraining or training anything."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from benchmark.inputs.corpus import resolve_corpus
from benchmark.inputs.upstream import awaits_pretraining, planned_checkpoint
from benchmark.plan.cachesize import cache_needs, describe_layers, fmt_bytes, free_bytes
from benchmark.plan.config import BenchmarkConfig
from benchmark.plan.runs import choose_fractions, expand_runs
from benchmark.plan.shapes import planned_upstream
from benchmark.plan.shards import shard_filter, shard_loads, whole_plan
from downstream.fractions import PAPER_FRACTIONS
from upstream.registry import family_of


def print_plan(cfg: BenchmarkConfig) -> int:
    """Print what a run would do, corpus by corpus (BenchmarkConfig.by_corpus); return the number of planned runs."""
    parts = cfg.by_corpus()
    total = sum(_print_corpus_plan(part) for part in parts)
    if len(parts) > 1:
        print(f"in all: {total} runs on {len(parts)} corpora")
    return total


def _print_corpus_plan(cfg: BenchmarkConfig) -> int:
    corpus = resolve_corpus(cfg.corpus, cfg.data_dir, cfg.quick, prepare=False)
    if corpus is None:
        print(f"corpus {cfg.corpus} ({', '.join(cfg.tasks)}): not prepared yet -- would be prepared under "
              f"{cfg.data_dir}")
        fractions = list(cfg.fractions or PAPER_FRACTIONS)
        if cfg.fractions is None:
            if cfg.fraction_ends:
                fractions = [fractions[0], fractions[-1]]
            print(f"  (default fractions are decided once the corpus exists; planning with "
                  f"{'the smallest and largest' if cfg.fraction_ends else 'all'} paper fractions)")
    else:
        n = len(corpus.utterances("train"))
        print(f"corpus {corpus.name} at {corpus.root} ({', '.join(cfg.tasks)}): {n} train utterances, "
              f"{len(corpus.speakers)} speakers")
        fractions = choose_fractions(cfg, corpus)
    notes: list[str] = []
    plans = []  # (spec, planned checkpoint, hidden states, runs) of every upstream
    for spec in cfg.upstreams:
        L = planned_upstream(spec, cfg).shape.num_hidden_states
        plans.append((spec, planned_checkpoint(spec, cfg.ckpts, cfg.runs_dir, cfg.quick, cfg.pretrain), L,
                      shard_filter(cfg, spec, L, fractions, expand_runs(cfg, spec, L, fractions, notes))))
    # the fine-tuning budget only where the plan holds fine-tuning runs (--no-finetune, or no upstream to fine-tune)
    finetunes = any(r.finetune for *_, runs in plans for r in runs)
    own = "".join(f" ({t}: fractions {', '.join(f'{f:g}' for f in cfg.fractions_of(t, fractions))}, seeds "
                  f"{cfg.seeds_of(t)})" for t in cfg.tasks if t in cfg.task_fractions or t in cfg.task_seeds)
    print(f"fractions: {', '.join(f'{f:g}' for f in fractions)}; seeds: {cfg.seeds}{own}; "
          f"probes: {cfg.probe.budget}"
          f"{''.join(f' ({t}: {p.budget})' for t, p in cfg.task_probes.items() if p.budget != cfg.probe.budget)}, "
          f"fine-tuning: {cfg.finetune_probe.budget if finetunes else 'none'}; modes: {cfg.modes}"
          f"{''.join(f' ({t}: {m})' for t, m in cfg.task_modes.items() if t in cfg.tasks)}; "
          f"cache: {cfg.cache_dir if cfg.use_cache else 'none (--no-cache)'}; results: {cfg.results_dir}")
    total, with_runs = 0, []
    needs = {n.spec: n for n in cache_needs(cfg, corpus)} if corpus is not None else {}
    for spec, ckpt, L, runs in plans:
        status = ""
        if ckpt is not None:
            status = f", checkpoint {ckpt}" + (" (to pretrain)" if awaits_pretraining(family_of(spec)[0], ckpt) else "")
        print(f"{spec}: {L} hidden states{status}: {len(runs)} runs")
        for (mode, task), n in sorted(Counter((r.mode.label, r.task) for r in runs).items()):
            print(f"    {mode:14s} {task:20s} {n}")
        if spec in needs and runs:
            need = needs[spec]
            size = (f"{fmt_bytes(need.total_bytes)} ({need.frames:,} frames x "
                    f"{describe_layers(need.layers, need.shape.num_hidden_states)} x {need.shape.hidden_size} x 2 B, "
                    f"float16)")
            if not cfg.use_cache:
                print(f"    features in memory (--no-cache): {size}, extracted again on every invocation")
            else:
                print(f"    feature cache: {size}" + (
                    ", already cached" if need.missing_bytes == 0 else
                    f", {fmt_bytes(need.cached_bytes)} of it already cached" if need.cached_bytes else "") + (
                    f"; extracts {fmt_bytes(need.missing_bytes)} "
                    f"({describe_layers(need.extract_layers, need.shape.num_hidden_states)}, those of the older entries "
                    f"too)" if need.missing_bytes and need.extract_layers != need.layers else ""))
        total += len(runs)
        with_runs += [spec] if runs else []
    for note in dict.fromkeys(notes):
        print(f"note: {note}")
    print(f"total: {total} runs (configurations already recorded in {cfg.results_dir}/runs.csv are skipped unless "
          f"--force)")
    print(_cache_summary(cfg, [needs[s] for s in dict.fromkeys(with_runs) if s in needs], corpus is not None))
    if cfg.shard is not None:
        print(_shard_summary(cfg, fractions))
    return total


def _cache_summary(cfg: BenchmarkConfig, needs: list, known: bool) -> str:
    if not cfg.use_cache:
        return f"feature cache: none (--no-cache): nothing is written under {cfg.cache_dir}"
    if not known:
        return "feature cache: its size is known once the corpus is prepared (docs/scale.md)"
    missing = sum(n.missing_bytes for n in needs)
    where, free = free_bytes(Path(cfg.cache_dir))
    fits = "fits" if missing <= free else "does NOT fit: a run stops before extracting (docs/scale.md)"
    return (f"feature cache: {fmt_bytes(missing)} to extract into {cfg.cache_dir}, "
            f"{fmt_bytes(sum(n.cached_bytes for n in needs))} already there; {where} has {fmt_bytes(free)} free: {fits}")


def _shard_summary(cfg: BenchmarkConfig, fractions: list[float]) -> str:
    assert cfg.shard is not None
    loads = shard_loads(whole_plan(cfg, fractions), cfg.shard.count, cfg.probe_workers)
    whole = sum(loads) or 1.0
    return (f"shard {cfg.shard.label}: {100 * loads[cfg.shard.index] / whole:.1f} % of the plan's expected cost "
            f"(shards {100 * min(loads) / whole:.1f}-{100 * max(loads) / whole:.1f} %); rows -> "
            f"{cfg.results_dir}/runs.csv")
