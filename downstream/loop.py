"""THE training loop of every minibatch probe: batched frozen groups and fine-tuning alike.

    for batch in feed:                      # a minibatch for the probes that step, and whether a pass ended
        loss -> backward -> clip -> step    # the probes that stepped
        dev for the probes that are due     # keep each one's best weights, decay or stop it
        finished probes leave the model, the optimiser and the feed

What differs is plugged in: the model (stacked heads over cached rows, downstream.groups; or an upstream and its
head run live, downstream.finetune), its feed (chunks of cached rows; or batches of audio) and its optimiser
(downstream.stacked.StackedOptimizer; or torch's AdamW). The stopping rule is downstream.stopping.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Protocol

import torch
from torch import Tensor

from downstream.stopping import Stopping


@dataclass
class Batch:
    """One step: `data` for the model's loss, `active` (A,) which of the model's probes step on it (none: a pass
    ends with no step), `pass_end` whether a pass over the data ends with it."""

    data: Any
    active: Tensor
    pass_end: bool = False


class Trainable(Protocol):
    ids: Tensor  # (A,) the probe id of each probe still training, in the model's order

    def loss(self, batch: Batch) -> Tensor:
        """The sum over the stepping probes of each one's mean loss on its minibatch."""

    def zero_grad(self) -> None: ...

    def clip(self, max_norm: float) -> None:
        """Clip each probe's gradient norm on its own."""

    def score(self, positions: Tensor) -> list[float]:
        """Dev metric of the probes at `positions`."""

    def snapshot(self, position: int) -> None:
        """Keep the current weights of the probe at `position` as its best."""

    def keep(self, positions: Tensor) -> None:
        """Keep only the probes at `positions`, in that order."""


class Optimizer(Protocol):
    def step(self, active: Tensor) -> None: ...

    def scale_lr(self, position: int, factor: float) -> None: ...

    def keep(self, positions: Tensor) -> None: ...


class Feed(Protocol):
    def __iter__(self) -> Iterator[Batch]: ...

    def keep(self, positions: Tensor) -> None: ...


class TorchOptimizer:
    """Torch optimisers as the loop's optimiser: one per probe, in the model's initial order (each probe's own
    parameters, state and learning rates, so a probe steps exactly as it would alone); learning-rate decay scales
    every group of that probe's optimiser."""

    def __init__(self, *opts: torch.optim.Optimizer) -> None:
        self.opts = list(opts)
        self.ids = torch.arange(len(self.opts))  # the probe id at each position of the model

    def step(self, active: Tensor) -> None:
        for q in active.nonzero().squeeze(1).tolist():
            self.opts[int(self.ids[q])].step()

    def scale_lr(self, position: int, factor: float) -> None:
        for g in self.opts[int(self.ids[position])].param_groups:
            g["lr"] *= factor

    def keep(self, positions: Tensor) -> None:
        self.ids = self.ids[positions]


def train_loop(model: Trainable, feed: Feed, opt: Optimizer, stop: Stopping, grad_clip: float, lr_decay: float,
               bar=None) -> None:
    """Train every probe of `model` until each has stopped (stopping rule `stop`) or the feed ends."""
    for batch in feed:
        stepped = batch.active
        if bool(stepped.any()):
            model.zero_grad()
            model.loss(batch).backward()
            model.clip(grad_clip)
            opt.step(stepped)
            stop.steps[model.ids[stepped]] += 1
        due = stop.due(model.ids, stepped, batch.pass_end)
        if not bool(due.any()):
            continue
        positions = due.nonzero().squeeze(1)
        for q, metric in zip(positions.tolist(), model.score(positions)):
            i = int(model.ids[q])
            if stop.update(i, metric):
                model.snapshot(q)
            if stop.decay(i):
                opt.scale_lr(q, lr_decay)
        finished = stop.finished(model.ids)
        if bool(finished.any()):
            keep = (~finished).nonzero().squeeze(1)
            if bar is not None:
                bar.update(int(finished.sum()))
            model.keep(keep)
            opt.keep(keep)
            feed.keep(keep)
            if len(model.ids) == 0:
                return


def progress_bar(total: int, enabled: bool, desc: str, unit: str = "probe"):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
