"""Whole utterances for the engines that read them (CTC, speaker verification): their whitened frames, minibatches
of them, and the minibatch optimiser of one probe."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor, nn

from downstream.heads import Whitening
from downstream.loop import Batch
from downstream.probe import ProbeConfig
from downstream.sources import ArraySource


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
