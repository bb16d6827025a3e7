"""Probe heads: per-frame linear / one-hidden-layer classifiers and the mean-pooled utterance classifier."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from downstream.tasks import TaskSpec


def segment_mean(x: Tensor, lengths: Tensor) -> Tensor:
    """Per-utterance mean of FLAT frames: x (sum of lengths, D), lengths (B,) -> (B, D).

    Batches are flat (valid frames only, see downstream.sources), so padding can never enter an average.
    """
    seg = torch.repeat_interleave(torch.arange(len(lengths), device=x.device), lengths.to(x.device))
    out = torch.zeros(len(lengths), x.shape[-1], dtype=x.dtype, device=x.device).index_add_(0, seg, x)
    return out / lengths.clamp_min(1).to(x.device)[:, None].to(x.dtype)


class ProbeHead(nn.Module):
    """Flat features (sum of lengths, D) + lengths (B,) -> logits per frame (n, C) or per utterance (B, C)."""

    def __init__(self, task: TaskSpec, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.task = task
        if task.head == "linear":
            self.net: nn.Module = nn.Linear(in_dim, num_classes)
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, task.hidden), nn.ReLU(), nn.Linear(task.hidden, num_classes))

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        if self.task.level == "utterance":
            x = segment_mean(x, lengths)  # (B, D)
        return self.net(x)
