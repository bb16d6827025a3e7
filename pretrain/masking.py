"""Masked acoustic model inputs (Mockingjay, arXiv 1910.12638; s3prl 0.4.18 `s3prl/pretrain/mockingjay/task.py`):
15% of frames in spans of 7, 80/10/10 per utterance."""
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


def reconstruction_l1(pred: Tensor, target: Tensor, loss_mask: Tensor, lengths: Tensor,
                      unmasked_weight: float = 0.0) -> Tensor:
    """The pretraining loss: masked L1, or with `unmasked_weight` w > 0, (1 - w) x masked L1 + w x the L1 of the
    unmasked frames within each utterance's length (HuBERT's loss weighting of masked and unmasked frames, alpha =
    1 - w: Hsu et al. 2021, arXiv 2106.07447, Section II-B). w = 0 is masked_l1 itself, bit for bit."""
    masked = masked_l1(pred, target, loss_mask)
    if unmasked_weight == 0:
        return masked
    T = target.shape[1]
    valid = torch.arange(T, device=target.device)[None, :] < lengths.to(target.device)[:, None]
    return (1 - unmasked_weight) * masked + unmasked_weight * masked_l1(pred, target, valid & ~loss_mask)


def interpolate_masked(x: Tensor, lengths: Tensor, loss_mask: Tensor) -> Tensor:
    """The trivial local predictor: each masked frame linearly interpolated between the nearest unmasked frames
    on either side (copied from the one side that exists at an utterance's edge; 0 if nothing is unmasked).

    A masked acoustic model that does not beat this has not yet learned to use its neighbours.
    """
    B, T, _ = x.shape
    t = torch.arange(T, device=x.device).expand(B, T)
    valid = t < lengths.to(x.device)[:, None]
    known = valid & ~loss_mask
    left = torch.where(known, t, torch.full_like(t, -1)).cummax(dim=1).values  # last known frame at or before t
    right = torch.where(known, t, torch.full_like(t, T)).flip(1).cummin(dim=1).values.flip(1)  # first at or after
    has_l, has_r = left >= 0, right < T
    xl = x.gather(1, left.clamp_min(0)[..., None].expand_as(x))
    xr = x.gather(1, right.clamp_max(T - 1)[..., None].expand_as(x))
    w = ((t - left) / (right - left).clamp_min(1)).to(x.dtype)[..., None]
    both = (has_l & has_r)[..., None]
    out = torch.where(both, (1 - w) * xl + w * xr, torch.where(has_l[..., None], xl, xr))
    out = torch.where((has_l | has_r)[..., None], out, torch.zeros_like(x))
    return torch.where(loss_mask[..., None], out, x)
