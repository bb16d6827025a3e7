"""THE task registry: each probe task is one declarative spec (labels, level, head, metric).

Nothing else in `downstream/` branches on a task's name or on where its labels come from: the spec carries
the label function, the head factory and the metric. Adding a task is one entry in `TASKS` (plus its test).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
from torch import nn

from core.frames import FrameRule
from corpora.labels import frame_labels
from corpora.manifest import Corpus, Utterance

Level = Literal["frame", "utterance"]


@dataclass(frozen=True)
class LabelSource:
    """Where a task's labels come from.

    `per`: "frame" gives one label per upstream frame (placed by the upstream's frame rule, core.frames),
    "utterance" one label per utterance (broadcast to every valid frame by frame-level tasks).
    `closed_set`: every class must keep a training utterance at every label fraction (speaker ID).
    """

    name: str  # tasks that share a source share its labels (computed once per upstream)
    per: Level
    classes: Callable[[Corpus], list[str]]
    # (corpus, utterances, split name, frame rule) -> one (n_frames,) int64 array per utterance (per="frame")
    # or one (n_utts,) int64 array (per="utterance")
    make: Callable[[Corpus, list[Utterance], str, FrameRule], "list[np.ndarray] | np.ndarray"]
    closed_set: bool = False


def _phone_labels(corpus: Corpus, utts: list[Utterance], split: str, rule: FrameRule) -> list[np.ndarray]:
    index = {p: i for i, p in enumerate(corpus.phones)}
    return [frame_labels(u, index, rule) for u in utts]


def _speaker_labels(corpus: Corpus, utts: list[Utterance], split: str, rule: FrameRule) -> np.ndarray:
    index = {s: i for i, s in enumerate(corpus.speakers)}
    unknown = sorted({u.speaker for u in utts if u.speaker not in index})
    if unknown:
        raise ValueError(f"corpus {corpus.root}: {split} split has speakers not in corpus.json's probe speakers "
                         f"(closed-set speaker ID needs them in train): {unknown[:5]}")
    return np.array([index[u.speaker] for u in utts], dtype=np.int64)


PHONES = LabelSource("phone", "frame", lambda c: list(c.phones), _phone_labels)
SPEAKERS = LabelSource("speaker", "utterance", lambda c: list(c.speakers), _speaker_labels, closed_set=True)


def linear_head(in_dim: int, n_classes: int) -> nn.Module:
    """Linear(D, C) starting at zero, as logistic-regression solvers do: the problem is convex, and directions the
    training examples do not span keep a zero weight instead of a random one that would score dev and test."""
    head = nn.Linear(in_dim, n_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def one_hidden_head(width: int = 768) -> Callable[[int, int], nn.Module]:
    """Linear(D, width) -> ReLU -> Linear(width, C): the phone probe of the Mockingjay / TERA papers."""
    def make(in_dim: int, n_classes: int) -> nn.Module:
        return nn.Sequential(nn.Linear(in_dim, width), nn.ReLU(), nn.Linear(width, n_classes))
    return make


@dataclass(frozen=True)
class TaskSpec:
    """A probe: which labels, predicted per frame or per utterance, by which head, scored how.

    The metric is accuracy over the task's examples (frames for frame-level tasks, utterances for
    utterance-level ones); `metric` names it in the result rows. `utt_metric` also reports, for a
    frame-level task with utterance labels, the utterance accuracy of frame logits averaged per utterance.
    """

    name: str
    labels: LabelSource
    level: Level  # "utterance": hidden states are mean-pooled over valid frames before the head
    head: Callable[[int, int], nn.Module]  # (input dim, classes) -> module mapping (n, D) to (n, C) logits
    metric: str
    linear: bool  # the head is one Linear layer: a convex probe, so a converged reference exists (certificate)
    utt_metric: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if self.utt_metric and (self.level != "frame" or self.labels.per != "utterance"):
            raise ValueError(f"task {self.name}: utt_metric needs frame-level training on utterance labels")
        if self.level == "utterance" and self.labels.per != "utterance":
            raise ValueError(f"task {self.name}: an utterance-level task needs utterance labels")


# The four s3prl legacy probes used by TERA and AALBERT (s3prl legacy downstream tasks; TERA, TASLP 2021).
TASKS: dict[str, TaskSpec] = {
    "phone_linear": TaskSpec("phone_linear", PHONES, "frame", linear_head, "frame_acc", linear=True,
                             description="Linear(D, phones) per frame"),
    "phone_1hidden": TaskSpec("phone_1hidden", PHONES, "frame", one_hidden_head(768), "frame_acc", linear=False,
                              description="Linear(D, 768) -> ReLU -> Linear(768, phones) per frame"),
    "speaker_utterance": TaskSpec("speaker_utterance", SPEAKERS, "utterance", linear_head, "utt_acc", linear=True,
                                  description="mean over valid frames -> Linear(D, speakers)"),
    "speaker_frame": TaskSpec("speaker_frame", SPEAKERS, "frame", linear_head, "frame_acc", linear=True,
                              utt_metric=True, description="Linear(D, speakers) per frame"),
}


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
    return TASKS[name]
