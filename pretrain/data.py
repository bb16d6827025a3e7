"""Pretraining audio: resolve the source, compute features once, length-bucketed batches of random crops."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from core.audio import AudioError, load_audio
from core.io import sha256_file, sha256_json
from corpora.manifest import Corpus, is_prepared, load_corpus
from upstream.features import FeatureConfig, LogMelFrontend

log = logging.getLogger(__name__)
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


@dataclass(frozen=True)
class AudioSource:
    """Files to pretrain on and what identifies them (recorded in the checkpoint, compared on reuse)."""

    paths: tuple[Path, ...]
    identity: dict
    corpus: Corpus | None = None


def resolve_source(source: "str | Path | Corpus") -> AudioSource:
    """A Corpus or prepared corpus dir (its pretrain split), a folder of audio files, or a text file listing them."""
    if isinstance(source, Corpus) or (Path(source).is_dir() and is_prepared(source)):
        corpus = source if isinstance(source, Corpus) else load_corpus(source)
        utts = corpus.utterances("pretrain")
        if not utts:
            raise ValueError(f"corpus {corpus.root} has no pretrain utterances ({corpus.root / 'pretrain.jsonl'})")
        manifest = corpus.root / "pretrain.jsonl"
        ident = {"kind": "corpus", "name": corpus.name, "root": str(corpus.root),
                 "manifest_sha256": sha256_file(manifest), "utterances": len(utts),
                 "hours": round(sum(u.duration for u in utts) / 3600, 4)}
        return AudioSource(tuple(corpus.audio_path(u) for u in utts), ident, corpus)
    p = Path(source)
    if p.is_dir():
        paths = sorted(q for q in p.rglob("*") if q.suffix.lower() in AUDIO_SUFFIXES)
        if not paths:
            raise ValueError(f"audio folder {p} holds no {'/'.join(AUDIO_SUFFIXES)} files")
    elif p.is_file():
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
        paths = [Path(ln) if Path(ln).is_absolute() else p.parent / ln for ln in lines]
        if not paths:
            raise ValueError(f"audio list {p} is empty")
    else:
        raise FileNotFoundError(f"pretraining audio not found: {p} (expected a corpus dir, audio folder or list file)")
    ident = {"kind": "files", "root": str(p.resolve()), "files_sha256": sha256_json([str(q) for q in paths]),
             "utterances": len(paths)}
    return AudioSource(tuple(paths), ident)


@torch.no_grad()
def load_features(paths: "tuple[Path, ...] | list[Path]", feature: FeatureConfig, min_frames: int,
                  progress: bool = True) -> tuple[list[Tensor], dict[str, int]]:
    """Normalised model-input features (T, D) per usable file, and counts of skipped files.

    Empty files and files with fewer than `min_frames` model frames are skipped and counted; unreadable
    files or NaN/inf samples raise AudioError naming the file (from core.audio.load_audio).
    """
    fe = LogMelFrontend(feature)
    feats: list[Tensor] = []
    skipped = {"empty": 0, "too_short": 0}
    for path in tqdm(paths, desc="features", unit="file", leave=False, disable=not progress):
        wav = load_audio(path, feature.sample_rate)
        if wav.numel() == 0:
            skipped["empty"] += 1
            continue
        if feature.num_frames(wav.numel()) < min_frames:
            skipped["too_short"] += 1
            continue
        x, _ = fe(wav[None], torch.tensor([wav.numel()]))
        feats.append(x[0].contiguous())
    if skipped["empty"] or skipped["too_short"]:
        log.warning("skipped %d empty and %d too-short (< %d frames) audio files of %d",
                    skipped["empty"], skipped["too_short"], min_frames, len(paths))
    if not feats:
        raise AudioError(f"no usable audio: all {len(paths)} files are empty or shorter than {min_frames} frames")
    return feats, skipped


class BucketBatcher:
    """Epochs of batches of similar-length utterances (less padding), in a seeded random order.

    Each epoch shuffles all utterances, sorts them by length within pools of 50 batches, cuts batches and
    shuffles the batch order: a deterministic function of (seed, epoch), so resuming needs only the
    epoch and the position in it.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, pool_batches: int = 50) -> None:
        self.lengths, self.batch_size, self.seed, self.pool = lengths, batch_size, seed, pool_batches * batch_size

    def epoch(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        batches = []
        for i in range(0, len(order), self.pool):
            pool = sorted(order[i : i + self.pool], key=lambda j: self.lengths[j])
            batches += [pool[k : k + self.batch_size] for k in range(0, len(pool), self.batch_size)]
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


def crop_batch(feats: list[Tensor], idx: list[int], crop: int, g: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Random crops of at most `crop` frames (g=None: the first `crop` frames), padded -> (B, T, D), (B,)."""
    parts = []
    for j in idx:
        f = feats[j]
        if f.shape[0] > crop:
            start = 0 if g is None else int(torch.randint(f.shape[0] - crop + 1, (), generator=g))
            f = f[start : start + crop]
        parts.append(f)
    lengths = torch.tensor([p.shape[0] for p in parts])
    return torch.nn.utils.rnn.pad_sequence(parts, batch_first=True), lengths
