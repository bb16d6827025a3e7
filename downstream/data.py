"""Probe labels per split (frame phones, utterance classes or label sequences) and length-bucketed batching."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from core.frames import FrameRule
from corpora.manifest import Corpus, Utterance
from downstream.tasks import LabelSource, TaskSpec


@dataclass(frozen=True)
class SplitLabels:
    """Labels of one split for one label source: per-utterance frame arrays, one class id per utterance, or one
    label sequence per utterance (the field named by the source's `LabelSource.field`; the others are None)."""

    frames: list[np.ndarray] | None = None  # per="frame": (n_frames,) int64 per utterance
    utt: np.ndarray | None = None  # per="utterance": (n_utts,) int64
    seqs: list[np.ndarray] | None = None  # per="sequence": (n_labels,) int64 per utterance
    trials: np.ndarray | None = None  # verification trials: (n_trials, 3) int64 rows (utterance a, utterance b, same)


def split_labels(corpus: Corpus, utts: list[Utterance], split: str, source: LabelSource,
                 rule: FrameRule) -> SplitLabels:
    """Labels of `utts` from `source`, framed as an upstream with frame rule `rule` frames them (a source may return
    several fields by name, e.g. speaker verification's trials)."""
    made = source.make(corpus, utts, split, rule)
    return SplitLabels(**made) if isinstance(made, dict) else SplitLabels(**{source.field: made})


def num_classes(corpus: Corpus, task: TaskSpec) -> int:
    return len(task.labels.classes(corpus))


def flat_rows(offsets: np.ndarray, idx: list[int] | np.ndarray) -> np.ndarray:
    """Row numbers, in a flat frame array laid out by `offsets`, of the frames of utterances `idx` in `idx` order."""
    starts = offsets[idx]
    lens = offsets[np.asarray(idx, dtype=np.int64) + 1] - starts
    shift = np.repeat(starts - (np.cumsum(lens) - lens), lens)  # per frame: utterance start - its batch start
    return np.arange(int(lens.sum()), dtype=np.int64) + shift


class Targets:
    """A split's targets laid out once, flat like the features (utterance i at offsets[i]:offsets[i+1]).

    Frame tasks: phone labels trimmed/edge-padded to each utterance's feature length (resampled audio may round
    one frame differently; more is a real mismatch and an error), or the speaker label repeated on every frame.
    A batch's targets are then one gather, whatever the batch size.
    """

    def __init__(self, task: TaskSpec, labels: SplitLabels, lengths: np.ndarray, split: str = "") -> None:
        self.task = task
        self.utt = labels.utt
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.frames: np.ndarray | None = None
        if task.frame_targets:
            if labels.frames is None:  # speaker label broadcast to every valid frame
                assert labels.utt is not None
                self.frames = np.repeat(labels.utt, lengths)
            else:
                parts = []
                for i, (y, n) in enumerate(zip(labels.frames, lengths.tolist())):
                    if abs(len(y) - n) > 2:
                        raise ValueError(f"{split} utterance #{i}: {len(y)} label frames but {n} feature frames")
                    parts.append(np.pad(y[:n], (0, max(0, n - len(y))), mode="edge"))
                self.frames = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    @property
    def rows(self) -> np.ndarray | None:
        """The target of every row the stacked engine reads: each valid frame, or each utterance (its mean)."""
        return self.frames if self.task.frame_targets else self.utt

    def batch(self, idx: list[int], select: np.ndarray | None = None) -> Tensor:
        """(B,) utterance targets, or the targets of the batch's flat frames (only `select` of them if given)."""
        if self.frames is None:
            assert self.utt is not None
            return torch.from_numpy(self.utt[idx])
        rows = flat_rows(self.offsets, idx)
        return torch.from_numpy(self.frames[rows if select is None else rows[select]])

    def utterances(self, idx: list[int]) -> Tensor:
        """(B,) the utterance-level label (speaker tasks), e.g. for utterance accuracy from frame logits."""
        assert self.utt is not None, "utterance targets exist for speaker labels only"
        return torch.from_numpy(self.utt[idx])


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


def frame_batches(lengths: np.ndarray, max_frames: int) -> list[list[int]]:
    """All utterances in length order, grouped so that a batch holds at most `max_frames` frames (or one
    utterance): evaluation memory and allocation sizes stay bounded whatever the split size."""
    batches: list[list[int]] = []
    cur: list[int] = []
    total = 0
    for i in np.argsort(lengths, kind="stable").tolist():
        n = int(lengths[i])
        if cur and total + n > max_frames:
            batches.append(cur)
            cur, total = [], 0
        cur.append(i)
        total += n
    if cur:
        batches.append(cur)
    return batches
