"""Whole utterances for the engines that read them (CTC, speaker verification): their whitened frames, minibatches
of them, the minibatch optimiser of one probe, and the training of such probes one by one.

An engine of whole utterances is two functions (`UtteranceEngine`): the loss of a training minibatch and the metric
of a split. `fit_utterance_probes` does the rest, the same for every such engine: each probe (a label fraction and
seed) is one `Probe` trained on minibatches of its training utterances in the loop of every minibatch probe
(downstream.loop), dev scored after every pass (downstream.stopping keeps the best in the metric's direction), test
at the best dev point. The frames are the cached hidden states, whitened per hidden state as the frame probes' are
(downstream.sources).
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
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
from downstream.probe import INIT_LOCK, Probe, ProbeConfig, ProbeResult, ProbeSpec
from downstream.sources import ArraySource, PooledSource
from downstream.stopping import Stopping
from downstream.tasks import TaskSpec

EVAL_UTTS = 64  # utterances per evaluation forward


class UtteranceFrames:
    """The whitened frames of hidden states `layers` of one split, by utterance: (L, sum of lengths, D) float32 and
    lengths for a list of utterances. Held in memory when they fit `memory` bytes, else read from the source for
    every request."""

    def __init__(self, source: ArraySource, split: str, layers: list[int], whiten: list[Whitening], memory: int) -> None:
        self.source, self.split, self.layers, self.whiten = source, split, layers, whiten
        self.offsets = source.splits[split].offsets
        self.lengths = np.diff(self.offsets)
        total = int(self.offsets[-1])
        self.held: Tensor | None = None
        if len(layers) * total * source.hidden_size * 4 <= memory:
            self.held = self._read(0, total)

    def _read(self, a: int, b: int) -> Tensor:
        with torch.no_grad():
            return torch.stack([w(self.source.read(self.split, k, a, b).float()) for k, w in zip(self.layers, self.whiten)])

    def batch(self, idx: list[int]) -> tuple[Tensor, Tensor]:
        parts = []
        for i in idx:
            a, b = int(self.offsets[i]), int(self.offsets[i + 1])
            parts.append(self.held[:, a:b] if self.held is not None else self._read(a, b))
        return torch.cat(parts, 1), torch.from_numpy(self.lengths[idx].astype(np.int64))


class UtteranceFeed:
    """Minibatches of the probe's training utterances, a fresh order every pass (its own generator); a pass ends
    with a step of no probe."""

    def __init__(self, train_idx: list[int], batch_size: int, seed: int) -> None:
        self.train_idx, self.batch_size = list(train_idx), batch_size
        self.gen = torch.Generator().manual_seed(seed * 1_000_003 + 2)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            order = [self.train_idx[k] for k in torch.randperm(len(self.train_idx), generator=self.gen).tolist()]
            for a in range(0, len(order), self.batch_size):
                yield Batch(order[a: a + self.batch_size], torch.ones(1, dtype=torch.bool))
            yield Batch(None, torch.zeros(1, dtype=torch.bool), pass_end=True)

    def keep(self, positions: Tensor) -> None:
        pass


def optimizer(probe: nn.Module, cfg: ProbeConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(probe.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(probe.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    raise ValueError(f"ProbeConfig.optimizer {cfg.optimizer!r}: a probe of whole utterances trains with minibatches ('adamw' or "
                     f"'sgd'); the L2 path solves classifiers of utterance means")


@dataclass(frozen=True)
class UtteranceEngine:
    """What one engine of whole utterances adds to `fit_utterance_probes`."""

    # (probe, hidden (L, sum of lengths, D) on the device, lengths (B,), the batch's utterances, the train split's
    # labels) -> the minibatch's mean loss
    loss: Callable[[Probe, Tensor, Tensor, list[int], SplitLabels], Tensor]
    # (probe, a split's frames, its labels, device) -> the task's metric on the split
    score: Callable[[Probe, "UtteranceFrames", SplitLabels, torch.device], float]
    # (labels by split, utterances by split) -> ValueError naming what is missing, before any training
    check: Callable[[dict[str, SplitLabels], dict[str, int]], None]


class UtteranceModel:
    """The loop's view of one probe of whole utterances."""

    def __init__(self, probe: Probe, engine: UtteranceEngine, train: UtteranceFrames, dev: UtteranceFrames,
                 labels: dict[str, SplitLabels], device: torch.device) -> None:
        self.probe, self.engine, self.train, self.dev, self.labels, self.device = probe, engine, train, dev, labels, device
        self.ids = torch.zeros(1, dtype=torch.long)
        self.best = copy.deepcopy(probe.state_dict())

    def loss(self, batch: Batch) -> Tensor:
        self.probe.train()
        hidden, lengths = self.train.batch(batch.data)
        return self.engine.loss(self.probe, hidden.to(self.device), lengths, batch.data, self.labels["train"])

    def zero_grad(self) -> None:
        self.probe.zero_grad(set_to_none=True)

    def clip(self, max_norm: float) -> None:
        torch.nn.utils.clip_grad_norm_(self.probe.parameters(), max_norm)

    def score(self, positions: Tensor) -> list[float]:
        return [self.engine.score(self.probe, self.dev, self.labels["dev"], self.device)]

    def snapshot(self, position: int) -> None:
        self.best = copy.deepcopy(self.probe.state_dict())

    def keep(self, positions: Tensor) -> None:
        self.ids = self.ids[positions]


def fit_utterance_probes(engine: UtteranceEngine, task: TaskSpec, mode: LayerMode, source: ArraySource | PooledSource,
                         labels: dict[str, SplitLabels], probes: list[ProbeSpec], n_classes: int, cfg: ProbeConfig,
                         device: torch.device, memory: int | None, progress: bool) -> list[ProbeResult]:
    """Train every probe of `probes` on its own (its subset, its seed) until dev stops improving; test at each one's
    best dev point. A probe's result does not depend on the others."""
    frames = source.frames if isinstance(source, PooledSource) else source
    budget = resident_budget(device) if memory is None else memory
    layers = mode.layers_read(frames.num_hidden_states)
    whiten = [frames.whitening()[frames.position(k)] for k in layers]
    split_frames = {s: UtteranceFrames(frames, s, layers, whiten, budget // 3) for s in PROBE_SPLITS}
    engine.check(labels, {s: len(f.lengths) for s, f in split_frames.items()})
    bar = progress_bar(len(probes), progress, f"{task.name}/{mode.label} x{len(probes)}")
    out = []
    try:
        for spec in probes:
            with INIT_LOCK:
                seed_everything(spec.seed)
                probe = Probe(task, mode, frames.num_hidden_states, frames.hidden_size, task.outputs(n_classes))
            probe.to(device)
            model = UtteranceModel(probe, engine, split_frames["train"], split_frames["dev"], labels, device)
            stop = Stopping(1, cfg, task.metric)
            train_loop(model, UtteranceFeed(list(spec.train_idx), cfg.batch_size, spec.seed),
                       TorchOptimizer(optimizer(probe, cfg)), stop, cfg.grad_clip, cfg.lr_decay)
            probe.load_state_dict(model.best)
            test = engine.score(probe, split_frames["test"], labels["test"], device)
            out.append(ProbeResult(dev_metric=stop.best[0], test_metric=test, test_utt_metric=None,
                                   best_step=stop.best_step[0], steps=int(stop.steps[0]), converged=stop.converged[0],
                                   layer_weights=probe.featurizer.layer_weights(), train_utts=0, train_frames=0,
                                   wall_seconds=0.0, state={k: v.detach().cpu() for k, v in probe.state_dict().items()}))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return out
