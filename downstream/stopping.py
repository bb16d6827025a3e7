"""The stopping rule every probe trains under, kept per probe: best dev point, patience, learning-rate decay, cap."""
from __future__ import annotations

import torch
from torch import Tensor

from downstream.metrics import Metric
from downstream.config import Minibatch, ProbeConfig


class Stopping:
    """The state of the rule for P probes, by probe id: the best dev metric (the highest, or the lowest for a
    lower-is-better `metric`) and its step, evaluations without a gain of `min_delta` (after `patience` of them the probe has converged; every `patience // 2` of them its step is
    scaled by `lr_decay`), the `max_steps` cap (a probe stopped there has not converged), and when dev is due:
    every `eval_every` steps, or at the end of each pass over the data at least `min_eval_steps` steps after the
    last evaluation (`eval_every` 0). The minibatch trainer's schedule (`ProbeConfig.trainer`) sets when dev is due and
    the decay; the L2 path asks `update` only, once per point of its grid."""

    def __init__(self, P: int, cfg: ProbeConfig, metric: Metric, eval_every: int | None = None) -> None:
        self.cfg, self.metric = cfg, metric
        if eval_every is None:
            eval_every = cfg.trainer.eval_every if isinstance(cfg.trainer, Minibatch) else 0
        self.eval_every = eval_every
        self.best = [metric.worst] * P
        self.best_step = [0] * P
        self.since = [0] * P  # evaluations since the last improvement of at least min_delta
        self.steps = torch.zeros(P, dtype=torch.long)
        self.last_eval = torch.zeros(P, dtype=torch.long)
        self.converged = [False] * P
        self.done = [False] * P

    def update(self, i: int, metric: float) -> bool:
        """Record probe i's dev metric at its current step; True when it is the new best (keep its weights)."""
        cfg, step = self.cfg, int(self.steps[i])
        self.last_eval[i] = step
        improved = self.metric.better(metric, self.best[i])
        if improved:
            self.since[i] = 0 if self.metric.gained(metric, self.best[i], cfg.min_delta) else self.since[i] + 1
            self.best[i], self.best_step[i] = metric, step
        else:
            self.since[i] += 1
        if not cfg.fixed_steps and self.since[i] >= cfg.patience:
            self.done[i], self.converged[i] = True, True
        elif step >= cfg.max_steps:
            self.done[i] = True
        return improved

    def decay(self, i: int) -> bool:
        """Whether to scale probe i's step by lr_decay now (after an evaluation): it settles into its optimum
        instead of hovering around it."""
        half = max(1, self.cfg.patience // 2)
        return self.cfg.minibatch.lr_decay < 1 and self.since[i] > 0 and self.since[i] % half == 0 and not self.done[i]

    def finished(self, ids: Tensor) -> Tensor:
        return torch.tensor([self.done[i] for i in ids.tolist()], dtype=torch.bool)

    def due(self, ids: Tensor, stepped: Tensor, pass_end: bool) -> Tensor:
        """(len(ids),) which of the probes `ids` are due for dev after a step that `stepped` of them took."""
        steps = self.steps[ids]
        due = stepped & (steps >= self.cfg.max_steps)
        if self.eval_every:
            due |= stepped & (steps % self.eval_every == 0)
        elif pass_end:
            due |= (steps - self.last_eval[ids]) >= self.cfg.minibatch.min_eval_steps
        return due
