"""Masked acoustic model inputs (REFERENCE section 2): 15% of frames in spans of 7, 80/10/10 per utterance."""
from __future__ import annotations

import torch
from torch import Tensor


def mask_batch(x: Tensor, lengths: Tensor, g: torch.Generator, proportion: float = 0.15, span: int = 7,
               p_zero: float = 0.8, p_random: float = 0.1) -> tuple[Tensor, Tensor]:
    """Corrupt features x (B, T, D) -> (model input (B, T, D), loss mask (B, T) bool).

    Per utterance of n valid frames: round(n * proportion / span) (at least one) span starts are drawn
    without replacement from [0, n - span] (spans may overlap, as in s3prl); then, decided once per
    utterance, the chosen frames are zeroed (p_zero), replaced by other frames of the same utterance
    (p_random) or left unchanged. The loss covers every chosen frame in all three cases.
    """
    inp = x.clone()
    B, T, _ = x.shape
    loss_mask = torch.zeros(B, T, dtype=torch.bool)
    offsets = torch.arange(span)
    for b, n in enumerate(lengths.tolist()):
        if n < span:
            continue
        n_spans = max(1, round(n * proportion / span))
        starts = torch.randperm(n - span + 1, generator=g)[:n_spans]
        idx = (starts[:, None] + offsets).flatten()  # (n_spans * span,)
        loss_mask[b, idx] = True
        r = torch.rand((), generator=g).item()
        if r < p_zero:
            inp[b, idx] = 0
        elif r < p_zero + p_random:
            src = (torch.randperm(n - span + 1, generator=g)[:n_spans][:, None] + offsets).flatten()
            inp[b, idx] = x[b, src]
    return inp, loss_mask.to(x.device)


def masked_l1(pred: Tensor, target: Tensor, loss_mask: Tensor) -> Tensor:
    """Mean absolute error over the masked frames' elements (float32 whatever the autocast dtype)."""
    m = loss_mask.unsqueeze(-1)  # (B, T, 1)
    n = m.sum().clamp_min(1) * target.shape[-1]
    return ((pred.float() - target).abs() * m).sum() / n
