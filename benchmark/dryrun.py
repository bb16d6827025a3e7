"""`--dry-run`: the plan and its size, without preparing, pretraining or training anything."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from benchmark.plan import BenchmarkConfig, expand_runs
from benchmark.resolve import checkpoint_dir, num_hidden_states_of, resolve_corpus
from downstream.fractions import PAPER_FRACTIONS
from upstream.registry import is_pretrained, parse_spec


def print_plan(cfg: BenchmarkConfig) -> int:
    """Print what a run would do; return the number of planned runs."""
    corpus = resolve_corpus(cfg.corpus, cfg.data_dir, cfg.quick, prepare=False)
    if corpus is None:
        print(f"corpus {cfg.corpus}: not prepared yet -- would be prepared under {cfg.data_dir}")
        fractions = list(cfg.fractions or PAPER_FRACTIONS)
        if cfg.fractions is None:
            print("  (default fractions are decided once the corpus exists; planning with all paper fractions)")
    else:
        from benchmark.runner import choose_fractions

        n = len(corpus.utterances("train"))
        print(f"corpus {corpus.name} at {corpus.root}: {n} train utterances, {len(corpus.speakers)} speakers")
        fractions = choose_fractions(cfg, corpus)
    print(f"fractions: {', '.join(f'{f:g}' for f in fractions)}; seeds: {cfg.seeds}; "
          f"probes: {cfg.probe.budget}"
          f"{''.join(f' ({t}: {p.budget})' for t, p in cfg.task_probes.items() if p.budget != cfg.probe.budget)}, "
          f"fine-tuning: {cfg.finetune_probe.budget}; "
          f"cache: {cfg.cache_dir}; results: {cfg.results_dir}")
    total, notes = 0, []
    for spec in cfg.upstreams:
        name, _ = parse_spec(spec)
        ckpt = Path(cfg.ckpts[name]) if name in cfg.ckpts else (
            checkpoint_dir(cfg.runs_dir, spec, cfg.quick) if is_pretrained(name) else None)
        L = num_hidden_states_of(spec, ckpt)
        runs = expand_runs(cfg, spec, L, fractions, notes)
        status = ""
        if ckpt is not None:
            status = f", checkpoint {ckpt}" + ("" if (ckpt / "checkpoint.json").is_file() else " (to pretrain)")
        print(f"{spec}: {L} hidden states{status}: {len(runs)} runs")
        for (mode, task), n in sorted(Counter((r.mode.label, r.task) for r in runs).items()):
            print(f"    {mode:14s} {task:18s} {n}")
        total += len(runs)
    for note in dict.fromkeys(notes):
        print(f"note: {note}")
    print(f"total: {total} runs (configurations already in {cfg.results_dir}/runs.csv are skipped unless --force)")
    return total
