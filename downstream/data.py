"""Probe labels per split (frame phones or utterance speakers) and length-bucketed batching."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from corpora.labels import frame_labels
from corpora.manifest import Corpus, Utterance
from downstream.tasks import TaskSpec



@dataclass(frozen=True)
class SplitLabels:
    """Labels of one split for one label source: per-utterance frame arrays (phone) or class ids (speaker)."""

    frames: list[np.ndarray] | None  # phone: (n_frames,) int64 per utterance
    utt: np.ndarray | None  # speaker: (n_utts,) int64


def speaker_ids(corpus: Corpus, utts: list[Utterance], split: str) -> np.ndarray:
    index = {s: i for i, s in enumerate(corpus.speakers)}
    unknown = sorted({u.speaker for u in utts if u.speaker not in index})
    if unknown:
        raise ValueError(f"corpus {corpus.root}: {split} split has speakers not in corpus.json's probe speakers "
                         f"(closed-set speaker ID needs them in train): {unknown[:5]}")
    return np.array([index[u.speaker] for u in utts], dtype=np.int64)


def split_labels(corpus: Corpus, utts: list[Utterance], split: str, source: str, hop: int, downsample: int) -> SplitLabels:
    """Labels for `utts` as an upstream with frame hop `hop` and stacking `downsample` frames them."""
    if source == "speaker":
        return SplitLabels(None, speaker_ids(corpus, utts, split))
    index = {p: i for i, p in enumerate(corpus.phones)}
    return SplitLabels([frame_labels(u, index, hop, downsample) for u in utts], None)


def num_classes(corpus: Corpus, task: TaskSpec) -> int:
    return len(corpus.phones) if task.labels == "phone" else len(corpus.speakers)


def batch_targets(task: TaskSpec, labels: SplitLabels, idx: list[int], lengths: Tensor) -> Tensor:
    """Targets of a flat batch: (B,) per utterance, or (sum of lengths,) per valid frame (no padding exists)."""
    if task.level == "utterance":
        assert labels.utt is not None
        return torch.from_numpy(labels.utt[idx])
    if labels.frames is None:  # speaker label broadcast to every valid frame
        assert labels.utt is not None
        return torch.repeat_interleave(torch.from_numpy(labels.utt[idx]), lengths)
    parts = []
    for i, n in zip(idx, lengths.tolist()):
        y = labels.frames[i]
        if abs(len(y) - n) > 2:  # resampled audio may round one frame differently; more is a real mismatch
            raise ValueError(f"utterance #{i}: {len(y)} label frames but {n} feature frames")
        parts.append(np.pad(y[:n], (0, max(0, n - len(y))), mode="edge"))
    return torch.from_numpy(np.concatenate(parts)) if parts else torch.zeros(0, dtype=torch.long)


def length_batches(lengths: np.ndarray, idx: list[int] | np.ndarray, batch_size: int,
                   rng: np.random.Generator | None = None) -> list[list[int]]:
    """Batches of utterances of similar length (little padding); with `rng`, a shuffled epoch order."""
    idx = np.asarray(idx, dtype=np.int64)
    if rng is None:
        order = idx[np.argsort(lengths[idx], kind="stable")]
    else:
        order = idx[np.lexsort((rng.random(len(idx)), lengths[idx]))]
    batches = [order[i: i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches
