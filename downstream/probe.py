"""What a probe is: its result row's fields and the single-probe module (its training configuration is
downstream.config).

`Probe` is one probe as an nn.Module (a layer choice or weighted sum, mean pooling, whitening, head): the L2 path
(downstream.path) and fine-tuning (downstream.finetune) train it; the batched frozen groups (downstream.groups)
train many of them stacked (downstream.stacked) and export each in its key format.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from torch import Tensor, nn

from downstream.heads import Whitening, segment_mean
from downstream.modes import Featurizer, LayerMode
from downstream.tasks import TaskSpec

# the version of the engine a task trains in (TaskSpec.engine) is part of every run id: rows of another version of
# it are never mixed in silently. "ctc" 4 and "verification" 5: their whitened frames are held and read in float16
# (the cache's precision), as the stacked engine's rows are; verification rows also keep minDCF
ENGINE_VERSIONS: dict[str, int] = {"stacked": 3, "ctc": 4, "verification": 5}
# the version of the order in which the stacked engine feeds training rows to its minibatch probes (downstream.feeds),
# part of the run id of every frozen minibatch probe of that engine (its L2-path probes read no minibatches): 2, the
# training split's blocks scattered over the whole split in pieces
FEED_VERSION = 2
# the version of the order in which an L2-path probe (downstream.path) sums its training examples, part of the run id of
# every L2-path probe: 2, sorted by index, so that a path is a function of its subset, not of the seed that drew it
# (the subset of every seed at 100 % is the whole split, drawn in another order: summed in that order, the same
# problem rounded differently and stopped a few examples apart on some seeds); 3, each point solved in float32 first,
# then in float64 to the tolerance (downstream.solver.PHASES), the loss summed per example in float64
PATH_VERSION = 3
# the global RNGs: probes built (seeded) in parallel threads must not interleave there
INIT_LOCK = threading.Lock()


@dataclass(frozen=True)
class ProbeResult:
    dev_metric: float
    test_metric: float
    test_utt_metric: float | None  # the task's second_metric on test (utterance accuracy of frame logits; minDCF)
    best_step: int
    steps: int
    converged: bool  # stopped by patience (True) or by the max_steps cap / a fixed budget (False)
    layer_weights: list[float] | None
    train_utts: int
    train_frames: int
    wall_seconds: float
    state: dict | None = None  # the probe's weights at the best dev point (fine-tuning starts from them)
    # the test metric's (numerator, denominator) per test utterance (int64 arrays; the metric is their sums' ratio):
    # what a paired comparison of two rows resamples (benchmark.report.paired). None where the metric is not
    # additive over utterances (EER of trials)
    test_units: tuple[np.ndarray, np.ndarray] | None = None


class Probe(nn.Module):
    """Fixed layer or weighted sum -> (mean-pool) -> (whiten) -> head.

    Frozen probes read examples that their source has already whitened (downstream.sources), so `whiten` is
    None; a fine-tuning probe reads the upstream live and applies the frozen probe's whitening itself.
    """

    def __init__(self, task: TaskSpec, mode: LayerMode, num_hidden_states: int, hidden_size: int, n_classes: int,
                 whiten: Whitening | None = None) -> None:
        super().__init__()
        self.task = task
        self.featurizer = Featurizer(mode, num_hidden_states)
        self.whiten = whiten
        self.head = task.head(hidden_size, n_classes)

    def forward(self, hidden: Tensor, lengths: Tensor | None = None) -> Tensor:
        """hidden (layers, n, D) -> logits (n, C); with `lengths`, frames are mean-pooled per utterance
        first for utterance-level tasks (live fine-tuning; cached utterance examples are already means)."""
        x = self.featurizer(hidden)
        if lengths is not None and self.task.pooled:
            x = segment_mean(x, lengths)
        if self.whiten is not None:
            x = self.whiten(x)
        return self.head(x)


@dataclass(frozen=True)
class ProbeSpec:
    """One probe of a batched group: its training utterances (positions in the train split) and its seed."""

    train_idx: tuple[int, ...]
    seed: int
