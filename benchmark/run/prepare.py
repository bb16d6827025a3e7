"""`run_benchmark.py prepare`: what the shards of a sweep share, made once before they start.

The corpus, the checkpoints (verified references or --ckpt; with --pretrain, pretrained when missing, as the main
job does), the corpus normalisation statistics of mel and the random-init controls, and every upstream's feature
cache. Shards started together would otherwise each build these at once: the feature cache is safe with that
(benchmark.cache.extract; it only costs waiting), pretraining and the statistics are not made for it, so `--shard`
refuses to start without them (`check_prepared`).
"""
from __future__ import annotations

import time
from pathlib import Path

from benchmark.cache.extract import ensure_split
from benchmark.inputs.corpus import normalisation_split, resolve_corpus
from benchmark.inputs.upstream import planned_checkpoint, resolve_upstream
from benchmark.plan.config import BenchmarkConfig
from benchmark.plan.runs import cache_layers, check_tasks, choose_fractions, expand_runs, planned_splits, run_id
from benchmark.plan.shapes import planned_upstream
from benchmark.plan.shards import shard_filter
from benchmark.record.results import read_rows, rows_files
from benchmark.run.runner import corpus_digest
from core.io import read_json
from downstream.tasks import get_task
from upstream.checkpoint import read_meta
from upstream.registry import family_of


def prepare(cfg: BenchmarkConfig, log=print) -> int:
    """Build everything `cfg`'s runs read, train no probe; return the number of upstreams whose cache is ready.
    An upstream whose planned runs are all recorded already (under the results folder) needs no cache. The CLI
    checks first that the caches fit on their disk (benchmark.plan.cachesize.check_space_for). Corpus by corpus
    (BenchmarkConfig.by_corpus)."""
    return sum(_prepare_corpus(part, log) for part in cfg.by_corpus())


def _prepare_corpus(cfg: BenchmarkConfig, log=print) -> int:
    t0 = time.perf_counter()
    corpus = resolve_corpus(cfg.corpus, cfg.data_dir, cfg.quick, progress=cfg.progress)
    assert corpus is not None
    check_tasks(cfg.tasks, corpus)  # before any extraction
    fractions = choose_fractions(cfg, corpus, log)
    done = set() if cfg.force else {r["run_id"] for f in rows_files(Path(cfg.results_dir)) for r in read_rows(f)}
    digest, ready = corpus_digest(corpus), 0
    for spec in cfg.upstreams:
        up = resolve_upstream(spec, corpus, cfg.ckpts, cfg.runs_dir, cfg.quick, log, device=cfg.device,
                              progress=cfg.progress, pretrain=cfg.pretrain)
        L = up.model.num_hidden_states
        pending = [r for r in shard_filter(cfg, spec, L, fractions, expand_runs(cfg, spec, L, fractions, []))
                   if run_id(digest, up.identity, r, r.mode.resolved_layer(L), cfg.probe_config(r.task, r.finetune),
                             cfg.start_config(r)) not in done]
        if not pending:
            log(f"{spec}: every planned run is recorded under {cfg.results_dir}; no feature cache needed")
            continue
        layers = cache_layers(pending, L)  # the hidden states the planned modes read
        tasks = [get_task(t) for t in dict.fromkeys(r.task for r in pending)]
        for split, utts in planned_splits(tasks, corpus).items():  # the probe splits and the tasks' own (trials)
            _, built = ensure_split(cfg.cache_dir, up.identity, up.model, corpus, split, utts,
                                    progress=cfg.progress, device=cfg.device, log=log, layers=layers)
            log(f"{spec}: {split} features ({len(layers)} of {L} hidden states) "
                f"{'extracted' if built else 'already cached'} in {cfg.cache_dir}")
        ready += 1
    log(f"prepared: corpus {corpus.root}, {len(cfg.upstreams)} upstreams, {ready} feature caches in "
        f"{time.perf_counter() - t0:.0f} s")
    return ready


def check_prepared(cfg: BenchmarkConfig) -> None:
    """ValueError naming --shard when the corpus, a --pretrain checkpoint or the corpus statistics of mel / a
    random control are missing: shards started together would each build them at once."""

    for part in cfg.by_corpus():
        _check_prepared_corpus(part)


def _check_prepared_corpus(cfg: BenchmarkConfig) -> None:
    assert cfg.shard is not None
    first = "run `run_benchmark.py prepare` with the same flags, without --shard, first"
    corpus = resolve_corpus(cfg.corpus, cfg.data_dir, cfg.quick, prepare=False)
    if corpus is None:
        raise ValueError(f"--shard {cfg.shard.label}: corpus {cfg.corpus} is not prepared under {cfg.data_dir}; shards "
                         f"started together would each build it: {first}")
    for spec in cfg.upstreams:
        fam, preset = family_of(spec)
        if fam.pretrainable:
            ckpt = planned_checkpoint(spec, cfg.ckpts, cfg.runs_dir, cfg.quick, cfg.pretrain)
            if cfg.pretrain and fam.ckpt_key(preset) not in cfg.ckpts and ckpt is not None and not (
                    (ckpt / "checkpoint.json").is_file() and read_meta(ckpt).get("complete")):
                raise ValueError(f"--shard {cfg.shard.label}: --pretrain checkpoint {ckpt} is not pretrained yet; "
                                 f"shards started together would each pretrain it: {first}")
            continue
        if not fam.takes_front_end:  # its weights are a given file or a seeded initialisation: nothing to build
            continue
        feature = planned_upstream(spec, cfg).feature
        assert feature is not None  # a weight-free log-mel upstream: mel or a random-init control
        if feature.norm == "corpus" and not feature.has_stats and not _has_stats(corpus.root, normalisation_split(corpus), feature.to_dict()):
            raise ValueError(f"--shard {cfg.shard.label}: corpus {corpus.root} has no normalisation statistics for "
                             f"{spec} yet; shards computing them at once could differ in the last bits, and so in "
                             f"run ids: {first}")


def _has_stats(corpus_root: Path, split: str, feature: dict) -> bool:
    """Statistics for this front-end (statistics fields aside) on `split` are in <corpus>/stats (pretrain.stats)."""
    plain = {k: v for k, v in feature.items() if k not in ("norm_mean", "norm_std")}
    for path in (corpus_root / "stats").glob(f"{split}-*.json"):
        try:
            key = read_json(path, "feature statistics").get("key", {})
        except (FileNotFoundError, ValueError):
            continue
        stored = {k: v for k, v in key.get("feature", {}).items() if k not in ("norm_mean", "norm_std")}
        if key.get("split") == split and stored == plain:
            return True
    return False
