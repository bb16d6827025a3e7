"""Corpus-level feature normalisation statistics, computed once per (corpus split, feature config) and cached."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Iterator

import torch
from tqdm import tqdm

from core.audio import load_audio
from core.io import atomic_write_json, read_json, sha256_file, sha256_json
from corpora.manifest import Corpus, Split
from upstream.features import FeatureConfig, corpus_stats

STATS_VERSION = 2  # 2: statistics rounded (upstream.features.STATS_DECIMALS)


def _wavs(paths: list[Path], sr: int, progress: bool = True) -> Iterator[torch.Tensor]:
    for p in tqdm(paths, desc="feature stats", unit="file", leave=False, disable=not progress):
        w = load_audio(p, sr)
        if w.numel():  # empty files carry no frames; pretraining skips them too
            yield w


def stats_for_files(paths: list[Path], base: FeatureConfig, progress: bool = True) -> FeatureConfig:
    """`base` with mean/std over every frame of `paths` (streamed: the audio is never all in memory)."""
    mean, std = corpus_stats(replace(base, norm_mean=(), norm_std=()), _wavs(paths, base.sample_rate, progress))
    return base.with_stats(mean, std)


def normalized_feature_config(corpus: Corpus, base: FeatureConfig, split: Split = "pretrain",
                              progress: bool = True) -> FeatureConfig:
    """`base` with corpus-level mean/std over `split`'s audio (via upstream.features.corpus_stats).

    Cached as JSON in `<corpus>/stats/`, keyed by the feature config (statistics excluded), the split and
    the split manifest's hash, written atomically. Configs whose norm is not "corpus" are returned as is.
    """
    if base.norm != "corpus":
        return base
    plain = replace(base, norm_mean=(), norm_std=())
    manifest = corpus.root / f"{split}.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"corpus {corpus.root}: no {split} split ({manifest} missing) for feature statistics")
    key = {"feature": plain.to_dict(), "split": split, "manifest_sha256": sha256_file(manifest),
           "version": STATS_VERSION}
    cache = corpus.root / "stats" / f"{split}-{sha256_json(key)[:16]}.json"
    if cache.is_file():
        d = read_json(cache, "feature statistics cache")
        if d.get("key") == key:
            return replace(plain, norm_mean=tuple(d["mean"]), norm_std=tuple(d["std"]))
    utts = corpus.utterances(split)
    if not utts:
        raise ValueError(f"corpus {corpus.root}: the {split} split is empty, cannot compute feature statistics")
    feat = stats_for_files([corpus.audio_path(u) for u in utts], plain, progress)
    atomic_write_json(cache, {"key": key, "mean": list(feat.norm_mean), "std": list(feat.norm_std)})
    return feat
