"""Whole utterances for the engines that read them (CTC, speaker verification): their whitened frames, minibatches
of them, and the training of a group of such probes together.

An engine of whole utterances is two functions (`UtteranceEngine`): the loss of a training minibatch and the
predictions of a split for several probes at once, which the task's metrics score. `fit_utterance_probes` does the rest, the same for every such engine: the
probes of one task and mode (every label fraction and seed) train as one group in the loop of every minibatch probe
(downstream.loop). Each probe is its own `Probe` with its own optimiser, minibatches of its own training
utterances in its own order, dev scored after each pass (downstream.stopping keeps the best in the metric's
direction) and test at its best dev point, so its result does not depend on the group; the group shares one pass
over the data, the frames held in memory, and every dev and test read (each evaluation batch is read once for all
the probes that are due). The frames are the cached hidden states, whitened per hidden state as the frame probes'
are (downstream.sources) and kept in float16 as the frame probes' rows are (downstream.feeds).
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from core.repro import seed_everything
from corpora.manifest import PROBE_SPLITS
from downstream.data import SplitLabels
from downstream.groups import resident_budget
from downstream.heads import Whitening
from downstream.loop import Batch, TorchOptimizer, progress_bar, train_loop
from downstream.modes import LayerMode
from downstream.config import SGD, AdamW, ProbeConfig
from downstream.probe import INIT_LOCK, Probe, ProbeResult, ProbeSpec
from downstream.sources import ArraySource, PooledSource
from downstream.stopping import Stopping
from downstream.tasks import TaskSpec

EVAL_UTTS = 64  # utterances per evaluation forward


class UtteranceFrames:
    """The whitened frames of hidden states `layers` of one split, by utterance: (L, sum of lengths, D) float32 and
    lengths for a list of utterances, each value rounded to float16 (the cache's precision, as the stacked engine
    keeps its whitened rows: downstream.feeds). Held in memory as float16 when `hold`, else read from the source for
    every request (the same values either way)."""

    def __init__(self, source: ArraySource, split: str, layers: list[int], whiten: list[Whitening], hold: bool) -> None:
        self.source, self.split, self.layers, self.whiten = source, split, layers, whiten
        self.offsets = source.splits[split].offsets
        self.lengths = np.diff(self.offsets)
        self.held: Tensor | None = self._read(0, int(self.offsets[-1])) if hold else None

    @staticmethod
    def nbytes(source: ArraySource, split: str, layers: list[int]) -> int:
        """What holding the split costs: float16 frames of every hidden state read."""
        return len(layers) * int(source.splits[split].offsets[-1]) * source.hidden_size * 2

    def _read(self, a: int, b: int) -> Tensor:
        with torch.no_grad():
            return torch.stack([w(self.source.read(self.split, k, a, b).float()).half()
                                for k, w in zip(self.layers, self.whiten)])

    def batch(self, idx: list[int]) -> tuple[Tensor, Tensor]:
        parts = []
        for i in idx:
            a, b = int(self.offsets[i]), int(self.offsets[i + 1])
            parts.append(self.held[:, a:b] if self.held is not None else self._read(a, b))
        return torch.cat(parts, 1).float(), torch.from_numpy(self.lengths[idx].astype(np.int64))


class UtteranceFeed:
    """Minibatches of each probe's training utterances, pass after pass: in a pass every probe still training draws
    a fresh order of its own utterances (its own generator) and steps through it, the probes in lockstep (step s
    gives each probe its s-th minibatch, while it has one); a pass ends with a step of no probe. A step's data is one
    list of utterances per stepping probe, in the model's order."""

    def __init__(self, probes: list[ProbeSpec], batch_size: int) -> None:
        self.subsets = [list(p.train_idx) for p in probes]
        self.gens = [torch.Generator().manual_seed(p.seed * 1_000_003 + 2) for p in probes]
        self.batch_size = batch_size
        self.ids = torch.arange(len(probes))

    def __iter__(self) -> Iterator[Batch]:
        B = self.batch_size
        while True:
            orders = {i: [self.subsets[i][k] for k in torch.randperm(len(self.subsets[i]), generator=self.gens[i]).tolist()]
                      for i in self.ids.tolist()}
            for a in range(0, max(len(o) for o in orders.values()), B):
                ids = self.ids.tolist()  # the probes still training (a finished one leaves between steps)
                active = torch.tensor([a < len(orders[i]) for i in ids], dtype=torch.bool)
                yield Batch([orders[i][a: a + B] for i in ids if a < len(orders[i])], active)
            yield Batch(None, torch.zeros(len(self.ids), dtype=torch.bool), pass_end=True)

    def keep(self, positions: Tensor) -> None:
        self.ids = self.ids[positions]


def optimizer(probe: nn.Module, opt: SGD | AdamW) -> torch.optim.Optimizer:
    """torch's form of a probe's minibatch optimiser (downstream.config)."""
    if isinstance(opt, AdamW):
        return torch.optim.AdamW(probe.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    if isinstance(opt, SGD):
        return torch.optim.SGD(probe.parameters(), lr=opt.lr, momentum=opt.momentum, nesterov=opt.momentum > 0,
                               weight_decay=opt.weight_decay)
    raise ValueError(f"a frozen probe of whole utterances trains with SGD or AdamW, got {type(opt).__name__}")


@dataclass(frozen=True)
class UtteranceEngine:
    """What one engine of whole utterances adds to `fit_utterance_probes`."""

    # (probe, hidden (L, sum of lengths, D) on the device, lengths (B,), the batch's utterances, the train split's
    # labels) -> the minibatch's mean loss
    loss: Callable[[Probe, Tensor, Tensor, list[int], SplitLabels], Tensor]
    # (probes, a split's frames, its labels, device) -> each probe's (predictions, references) on the split, what the
    # task's metrics score (every batch of the split read once for all the probes)
    predict: Callable[[list[Probe], "UtteranceFrames", SplitLabels, torch.device], list[tuple[Any, Any]]]
    # (labels by split, utterances by split) -> ValueError naming what is missing, before any training
    check: Callable[[dict[str, SplitLabels], dict[str, int]], None]

    def score(self, probes: list[Probe], frames: "UtteranceFrames", labels: SplitLabels,
              device: torch.device) -> list[float]:
        """The task's metric of each probe on the split."""
        predicted = self.predict(probes, frames, labels, device)
        return [float(p.task.metric(pred, ref)) for p, (pred, ref) in zip(probes, predicted)]

    def test(self, probes: list[Probe], frames: "UtteranceFrames", labels: SplitLabels,
             device: torch.device) -> list[tuple[float, tuple[np.ndarray, np.ndarray] | None, float | None]]:
        """Each probe's (metric, metric per utterance (ProbeResult.test_units) where the metric has units, second
        score (TaskSpec.second_metric) where the task has one) on the split, from one prediction of it."""
        out = []
        for p, (pred, ref) in zip(probes, self.predict(probes, frames, labels, device)):
            metric, second = p.task.metric, p.task.second_metric
            out.append((float(metric(pred, ref)), metric.unit_arrays(pred, ref),
                        None if second is None else float(second(pred, ref))))
        return out


def split_batches(frames: UtteranceFrames, device: torch.device) -> Iterator[tuple[list[int], Tensor, Tensor]]:
    """(utterances, hidden on the device, lengths) of every evaluation batch of a split, in order."""
    n = len(frames.lengths)
    for a in range(0, n, EVAL_UTTS):
        idx = list(range(a, min(n, a + EVAL_UTTS)))
        hidden, lengths = frames.batch(idx)
        yield idx, hidden.to(device), lengths


class UtteranceGroup:
    """The loop's view of a group of probes of whole utterances: each probe's loss on its own minibatch, summed
    (each probe's gradient is its own), clipped per probe; each probe's best weights by probe id."""

    def __init__(self, probes: list[Probe], engine: UtteranceEngine, train: UtteranceFrames, dev: UtteranceFrames,
                 labels: dict[str, SplitLabels], device: torch.device) -> None:
        self.probes, self.engine, self.train, self.dev, self.labels, self.device = probes, engine, train, dev, labels, device
        self.ids = torch.arange(len(probes))
        self.best = [copy.deepcopy(p.state_dict()) for p in probes]

    def _live(self) -> list[Probe]:
        return [self.probes[i] for i in self.ids.tolist()]

    def loss(self, batch: Batch) -> Tensor:
        total = torch.zeros((), device=self.device)
        for q, idx in zip(batch.active.nonzero().squeeze(1).tolist(), batch.data):
            probe = self.probes[int(self.ids[q])]
            probe.train()
            hidden, lengths = self.train.batch(idx)
            total = total + self.engine.loss(probe, hidden.to(self.device), lengths, idx, self.labels["train"])
        return total

    def zero_grad(self) -> None:
        for probe in self._live():
            probe.zero_grad(set_to_none=True)

    def clip(self, max_norm: float) -> None:
        for probe in self._live():
            params = [p for p in probe.parameters() if p.grad is not None]
            if params:  # a probe that did not step this time has no gradient
                torch.nn.utils.clip_grad_norm_(params, max_norm)

    def score(self, positions: Tensor) -> list[float]:
        return self.engine.score([self.probes[int(self.ids[q])] for q in positions.tolist()], self.dev,
                                 self.labels["dev"], self.device)

    def snapshot(self, position: int) -> None:
        i = int(self.ids[position])
        self.best[i] = copy.deepcopy(self.probes[i].state_dict())

    def keep(self, positions: Tensor) -> None:
        self.ids = self.ids[positions]


def fit_utterance_probes(engine: UtteranceEngine, task: TaskSpec, mode: LayerMode, source: ArraySource | PooledSource,
                         labels: dict[str, SplitLabels], probes: list[ProbeSpec], n_classes: int, cfg: ProbeConfig,
                         device: torch.device, memory: int | None, progress: bool) -> list[ProbeResult]:
    """Train every probe of `probes` (its subset, its seed) as one group until each has stopped improving on dev;
    test at each one's best dev point. A probe's result does not depend on the others. The splits' frames are held
    in memory (float16) while they fit `memory` bytes (None: downstream.groups.resident_budget), dev and test first
    (every evaluation reads them whole), else read from the cache for each batch."""
    frames = source.frames if isinstance(source, PooledSource) else source
    budget = resident_budget(device) if memory is None else memory
    layers = mode.layers_read(frames.num_hidden_states)
    whiten = [frames.whitening()[frames.position(k)] for k in layers]
    split_frames = {}
    for s in ("dev", "test", "train"):
        need = UtteranceFrames.nbytes(frames, s, layers)
        split_frames[s] = UtteranceFrames(frames, s, layers, whiten, hold=need <= budget)
        budget -= need if need <= budget else 0
    engine.check(labels, {s: len(f.lengths) for s, f in split_frames.items()})
    models = []
    for spec in probes:
        with INIT_LOCK:
            seed_everything(spec.seed)
            models.append(Probe(task, mode, frames.num_hidden_states, frames.hidden_size, task.outputs(n_classes)))
        models[-1].to(device)
    group = UtteranceGroup(models, engine, split_frames["train"], split_frames["dev"], labels, device)
    mb = cfg.minibatch  # whole utterances train by minibatches: the L2 path solves classifiers of utterance means
    stop = Stopping(len(probes), cfg, task.metric)
    bar = progress_bar(len(probes), progress, f"{task.name}/{mode.label} x{len(probes)}")
    try:
        train_loop(group, UtteranceFeed(probes, mb.batch_size),
                   TorchOptimizer(*(optimizer(m, mb.optimizer) for m in models)), stop, mb.grad_clip, mb.lr_decay, bar)
    finally:
        if bar is not None:
            bar.close()
    for m, best in zip(models, group.best):
        m.load_state_dict(best)
    test = engine.test(models, split_frames["test"], labels["test"], device)
    return [ProbeResult(dev_metric=stop.best[i], test_metric=metric, test_utt_metric=second,
                        best_step=stop.best_step[i], steps=int(stop.steps[i]), converged=stop.converged[i],
                        layer_weights=m.featurizer.layer_weights(), train_utts=0, train_frames=0, wall_seconds=0.0,
                        state={k: v.detach().cpu() for k, v in m.state_dict().items()}, test_units=units)
            for i, (m, (metric, units, second)) in enumerate(zip(models, test))]
