"""What a probe is: its training configuration, its result row's fields, and the single-probe module.

`Probe` is one probe as an nn.Module (a layer choice or weighted sum, mean pooling, whitening, head): the L2 path
(downstream.path) and fine-tuning (downstream.finetune) train it; the batched frozen groups (downstream.groups)
train many of them stacked (downstream.stacked) and export each in its key format.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from torch import Tensor, nn

from core.config import config_from_dict, config_to_dict
from downstream.heads import Whitening, segment_mean
from downstream.modes import Featurizer, LayerMode
from downstream.tasks import TaskSpec

# the version of the engine a task trains in (TaskSpec.engine) is part of every run id: rows of another version of
# it are never mixed in silently. "ctc" 4 and "verification" 5: their whitened frames are held and read in float16
# (the cache's precision), as the stacked engine's rows are; verification rows also keep minDCF
ENGINE_VERSIONS: dict[str, int] = {"stacked": 3, "ctc": 4, "verification": 5}
# the global RNGs: probes built (seeded) in parallel threads must not interleave there
INIT_LOCK = threading.Lock()


@dataclass(frozen=True)
class ProbeConfig:
    """How a probe trains. Defaults: the frozen-probe rule of the main job (measured: docs/benchmark.md).

    The papers train probes with AdamW at lr 2e-4, batch 32, for 300k+ steps and report test at the best dev
    step (s3prl legacy downstream configs). Here frame features are whitened, so SGD with a large step converges
    in a few epochs, and utterance means are few enough for a full-batch solver; the stopping rule, not a step
    count, decides when a probe is done.
    """

    lr: float = 1e-3
    upstream_lr: float = 5e-5  # finetune only: the pretrained upstream moves more gently than the head
    batch_size: int = 1024  # examples per step: frames (frame-level tasks) or utterances (utterance-level)
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    patience: int = 8  # dev evaluations without an improvement of min_delta before the run stops (converged)
    min_delta: float = 1e-3  # 0.1 point of accuracy: smaller gains do not reset the patience
    max_steps: int = 100_000  # the cap: a run stopped here is recorded as NOT converged
    eval_every: int = 0  # steps between dev evaluations; 0 = one epoch of the training subset
    min_eval_steps: int = 20  # ... but never more often than this (tiny subsets have 1-step epochs)
    lr_decay: float = 0.5  # lr multiplier after patience // 2 evaluations without improvement
    fixed_steps: bool = False  # train exactly max_steps, best dev point still chosen (the --steps approximation)
    # "sgd": minibatch SGD with Nesterov momentum `momentum`. On whitened features (downstream.sources) it
    # converges as fast as AdamW, and early-stopped gradient descent is regularised like an L2 (ridge) penalty:
    # with a dozen training utterances AdamW, which moves every weight by ~lr per step whatever its gradient,
    # overfits before the first dev evaluation (docs/benchmark.md). "adamw": minibatch AdamW (the MLP head,
    # fine-tuning). "lbfgs": the L2 regularisation path with full-batch L-BFGS (linear heads, few examples).
    optimizer: Literal["sgd", "adamw", "lbfgs"] = "adamw"
    momentum: float = 0.9  # sgd only
    # lbfgs only: the path's L2 strengths (mean cross-entropy + l2 / 2 * |head weights|^2), strongest first, one
    # per decade: the 300 dev utterances of the built-in corpus cannot tell half-decades apart (docs/benchmark.md)
    l2_grid: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
    # lbfgs only: one L2 point is solved when |grad| <= rtol * l2 * |W| (within rtol x |W| of its optimum,
    # downstream.solver); 0.1 moved 0-1 of 300 dev predictions against 0.01 at a third of the cost (docs/benchmark.md)
    rtol: float = 0.1

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_steps", "patience", "min_eval_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"ProbeConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0:
            raise ValueError(f"ProbeConfig.eval_every must be >= 0 (0 = every epoch), got {self.eval_every}")
        if self.lr <= 0 or self.upstream_lr <= 0:
            raise ValueError("ProbeConfig learning rates must be > 0")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"ProbeConfig.lr_decay must be in (0, 1], got {self.lr_decay}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"ProbeConfig.momentum must be in [0, 1), got {self.momentum}")
        if self.optimizer == "lbfgs" and (not self.l2_grid or any(v <= 0 for v in self.l2_grid)):
            raise ValueError(f"ProbeConfig.l2_grid must hold L2 strengths > 0 (the solver's tolerance is relative "
                             f"to the L2 strength), got {self.l2_grid}")
        if self.rtol <= 0:
            raise ValueError(f"ProbeConfig.rtol must be > 0, got {self.rtol}")

    @property
    def budget(self) -> str:
        """The row's `budget` column: 'converge' (early stopping) or 'steps=N' (a fixed, approximate budget)."""
        return f"steps={self.max_steps}" if self.fixed_steps else "converge"

    def with_steps(self, steps: int) -> "ProbeConfig":
        """A fixed budget of `steps` (no early stopping; dev still picks the reported point)."""
        return replace(self, max_steps=steps, fixed_steps=True,
                       eval_every=min(self.eval_every or steps, steps), min_eval_steps=min(self.min_eval_steps, steps))

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ProbeConfig":
        return config_from_dict(cls, d, "probe config")


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
