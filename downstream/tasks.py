"""THE task registry: each probe task is a small declarative spec (label source, level, head, metric)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LabelSource = Literal["phone", "speaker"]
Level = Literal["frame", "utterance"]
HeadKind = Literal["linear", "1hidden"]
Metric = Literal["frame_acc", "utt_acc"]


@dataclass(frozen=True)
class TaskSpec:
    """A probe: which labels, predicted per frame or per utterance, by which head, scored how."""

    name: str
    labels: LabelSource
    level: Level  # "utterance": hidden states are mean-pooled over valid frames before the head
    head: HeadKind
    metric: Metric
    utt_metric: bool = False  # also report utterance accuracy from frame logits averaged over valid frames
    hidden: int = 768  # width of the 1hidden head (REFERENCE section 4: Linear(D,768) -> ReLU -> Linear)

    @property
    def needs_all_speakers(self) -> bool:
        """Speaker tasks are closed-set: every speaker must keep at least one training utterance."""
        return self.labels == "speaker"


# The four s3prl legacy probes used by TERA and AALBERT (REFERENCE section 4).
TASKS: dict[str, TaskSpec] = {
    "phone_linear": TaskSpec("phone_linear", "phone", "frame", "linear", "frame_acc"),
    "phone_1hidden": TaskSpec("phone_1hidden", "phone", "frame", "1hidden", "frame_acc"),
    "speaker_utterance": TaskSpec("speaker_utterance", "speaker", "utterance", "linear", "utt_acc"),
    "speaker_frame": TaskSpec("speaker_frame", "speaker", "frame", "linear", "frame_acc", utt_metric=True),
}


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
    return TASKS[name]
