"""THE metrics of the probes: a name, a direction, a function of predictions and labels, and its range.

Every consumer in downstream/ (the engines, early stopping, the L2 path) asks the task's `Metric` which way is
better and how to score; none assumes accuracy. Additive metrics (accuracy, phone error rate) also give a `tally`,
(numerator, denominator) sums that a streamed evaluation adds over chunks and `reduce`s once.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np
import torch
from torch import Tensor

Direction = Literal["higher", "lower"]


@dataclass(frozen=True)
class Metric:
    """A score of a split. `fn(predictions, labels) -> float` is the whole definition; `tally` (additive metrics
    only) maps a batch's predictions and labels to (numerator, denominator) sums over its last axis, so that
    fn == reduce(sum of numerators, sum of denominators); `bounds` is the range of the score (plots clip to it)."""

    name: str
    direction: Direction
    fn: Callable[[Any, Any], float]
    bounds: tuple[float, float] = (0.0, 1.0)
    tally: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None
    # additive metrics: (numerator, denominator) of every example (an element of the labels' last axis, or one
    # hypothesis / reference pair), so that fn == sum(numerators) / sum(denominators): a paired test over test
    # examples resamples these (benchmark.report.paired)
    units: Callable[[Any, Any], tuple[Tensor, Tensor]] | None = None
    description: str = ""
    label: str = ""  # the name tables and axes show ("PER"); empty: `name`
    percent: bool = True  # scores are fractions, shown x 100 in % by the report

    @property
    def display(self) -> tuple[str, float]:
        """(axis label, factor to display): "frame accuracy (%)", 100 for a fraction shown in %."""
        text = self.label or self.name
        return (f"{text} (%)", 100.0) if self.percent else (text, 1.0)

    @property
    def arrow(self) -> str:
        """'↑' for a higher-is-better metric, '↓' for a lower-is-better one (table headers)."""
        return "↑" if self.higher_is_better else "↓"

    def __post_init__(self) -> None:
        if self.direction not in ("higher", "lower"):
            raise ValueError(f"metric {self.name}: direction must be 'higher' or 'lower', got {self.direction!r}")
        if not self.bounds[0] < self.bounds[1]:
            raise ValueError(f"metric {self.name}: bounds must be (low, high), got {self.bounds}")

    def __call__(self, predictions: Any, labels: Any) -> float:
        return self.fn(predictions, labels)

    def __str__(self) -> str:
        return self.name  # what a result row's `metric` column holds

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "higher"

    @property
    def worst(self) -> float:
        """The starting point of a search for the best score: below (above) every score."""
        return -math.inf if self.higher_is_better else math.inf

    def better(self, a: float, b: float) -> bool:
        """Whether score `a` is strictly better than `b`."""
        return a > b if self.higher_is_better else a < b

    def gained(self, new: float, best: float, delta: float) -> bool:
        """Whether `new` beats `best` by at least `delta` (the stopping rule's min_delta) in this metric's direction."""
        return new >= best + delta if self.higher_is_better else new <= best - delta

    def unit_arrays(self, predictions: Any, labels: Any) -> tuple[np.ndarray, np.ndarray] | None:
        """(numerators, denominators) per example as arrays (`units`), or None for a metric without units."""
        if self.units is None:
            return None
        num, den = self.units(predictions, labels)
        return num.numpy(), den.numpy()

    def clip(self, x: float) -> float:
        return min(max(x, self.bounds[0]), self.bounds[1])

    @staticmethod
    def reduce(numerator: Tensor, denominator: Tensor | int) -> Tensor:
        """numerator / denominator of a tally, in the dtype of `numerator` (an integer count gives float32, as
        torch's true division does; pass a float64 count for a float64 score)."""
        return numerator / denominator


# ---------------------------------------------------------------- accuracy


def accuracy_tally(predictions: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(correct, total) over the last axis: predictions (..., n) class ids, labels (n,) or (..., n)."""
    return (predictions == labels).sum(-1), torch.tensor(labels.shape[-1])


def accuracy_units(predictions: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(correct, 1) per example: predictions (..., n), labels (n,) or (..., n)."""
    right = (predictions == labels).long()
    return right, torch.ones(right.shape[-1], dtype=torch.long)


def accuracy(predictions: Any, labels: Any) -> float:
    p, y = torch.as_tensor(np.asarray(predictions)), torch.as_tensor(np.asarray(labels))
    if y.numel() == 0:
        raise ValueError("no labelled examples to evaluate on")
    right, total = accuracy_tally(p, y)
    return float(right) / int(total)


FRAME_ACC = Metric("frame_acc", "higher", accuracy, tally=accuracy_tally, units=accuracy_units,
                   description="frame accuracy over every valid frame of the split", label="frame accuracy")
UTT_ACC = Metric("utt_acc", "higher", accuracy, tally=accuracy_tally, units=accuracy_units,
                 description="utterance accuracy over the utterances of the split", label="utterance accuracy")
ACC = Metric("acc", "higher", accuracy, tally=accuracy_tally, units=accuracy_units, description="accuracy over the clips of the split",
             label="accuracy")


# ---------------------------------------------------------------- phone error rate


def edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Levenshtein distance (substitutions, insertions, deletions, each costing 1) between two sequences
    (rapidfuzz's C++ implementation; the tests check it against the textbook recursion)."""
    from rapidfuzz.distance import Levenshtein

    return int(Levenshtein.distance(list(a), list(b)))


def error_rate_tally(hypotheses: Sequence[Sequence[int]], references: Sequence[Sequence[int]]) -> tuple[int, int]:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    return sum(edit_distance(h, r) for h, r in zip(hypotheses, references)), sum(len(r) for r in references)


def error_rate_units(hypotheses: Sequence[Sequence[int]], references: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    """(edit distance, reference length) per hypothesis / reference pair."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    return (torch.tensor([edit_distance(h, r) for h, r in zip(hypotheses, references)], dtype=torch.long),
            torch.tensor([len(r) for r in references], dtype=torch.long))


def phone_error_rate(hypotheses: Sequence[Sequence[int]], references: Sequence[Sequence[int]]) -> float:
    """Summed edit distance over summed reference length (s3prl downstream/ctc/metric.py `wer`/`per`: errors and
    reference lengths summed over the split before dividing)."""
    errors, total = error_rate_tally(hypotheses, references)
    if total == 0:
        raise ValueError("phone error rate: the references hold no phones")
    return errors / total


PER = Metric("per", "lower", phone_error_rate, bounds=(0.0, math.inf), units=error_rate_units,
             description="phone error rate: edit distance / reference length, summed over the split", label="PER")


# ---------------------------------------------------------------- verification


def _roc(scores: Any, same: Any) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import roc_curve  # scikit-learn: loaded by the verification metrics only

    s, y = np.asarray(scores, dtype=np.float64), np.asarray(same).astype(bool)
    if y.all() or not y.any():
        raise ValueError("verification needs both target (same speaker) and non-target trials")
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return fpr, 1.0 - tpr


def equal_error_rate(scores: Any, same: Any) -> float:
    """The rate where false acceptances equal false rejections, from scikit-learn's `roc_curve` (every threshold):
    linear interpolation between the two ROC points where fnr - fpr changes sign. 0 for separable scores."""
    fpr, fnr = _roc(scores, same)
    d = fnr - fpr  # decreasing from 1 (accept nothing) to -1 (accept everything)
    k = int(np.argmax(d <= 0))
    if d[k] == 0:
        return float(fpr[k])
    j = k - 1
    t = d[j] / (d[j] - d[k])  # where the segment between ROC points j and k crosses fnr == fpr
    return float(fpr[j] + t * (fpr[k] - fpr[j]))


def min_dcf(scores: Any, same: Any, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """Minimum normalised detection cost over thresholds (NIST SRE; VoxCeleb's p_target 0.01, c_miss = c_fa = 1)."""
    fpr, fnr = _roc(scores, same)
    cost = c_miss * fnr * p_target + c_fa * fpr * (1 - p_target)
    return float(cost.min() / min(c_miss * p_target, c_fa * (1 - p_target)))


EER = Metric("eer", "lower", equal_error_rate, description="equal error rate of cosine-scored trials", label="EER")
MIN_DCF = Metric("min_dcf", "lower", min_dcf, description="minimum normalised detection cost of the trials (p_target "
                 "0.01, c_miss = c_fa = 1, VoxCeleb's setting)", label="minDCF", percent=False)

# every metric defined here, by name (a task defined elsewhere brings its own: downstream.tasks.ALL_TASKS)
METRICS: dict[str, Metric] = {m.name: m for m in (FRAME_ACC, UTT_ACC, ACC, PER, EER, MIN_DCF)}
