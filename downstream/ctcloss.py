"""The CTC loss of Graves et al. (ICML 2006) on the CPU: forward-backward in scaled probability space, compiled by numba.

torch's CPU `ctc_loss` works in float32 log space, with three exponentials and a logarithm per lattice cell in each
direction: on the CTC probes' minibatches (16 utterances of ~300 frames, ~40 phones) its forward and backward cost
several times this kernel's (perf/ctc_loss.py measures both side by side). Here each utterance's lattice is
computed in float64 probabilities, renormalised at every frame (Rabiner's scaling, Proc. IEEE 1989, sec. V.A), so a
cell costs a few multiply-adds; the gradient is torch's: d loss / d log_probs[t, c] = exp(log_probs[t, c]) -
sum over the lattice states s labelled c of alpha_t(s) beta_t(s) / P, the posterior of eq. 16 of Graves et al. that
torch returns for log-softmax outputs. Semantics are torch's `reduction="none", zero_infinity=True`: a target that
cannot fit its frames (fewer frames than labels plus repeats) gets loss 0 and gradient 0. Should a feasible lattice
underflow float64 (log-probabilities below about -700 along every path at a frame), the caller recomputes the batch
with torch's log-space kernel (downstream.tasks.ctc_loss, which also runs torch's kernel on every other device).
"""
from __future__ import annotations

import math

import numba
import numpy as np
import torch
from torch import Tensor

OK, IMPOSSIBLE, UNDERFLOW = 0, 1, 2  # per-utterance status of the kernel


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _lattice(lp: np.ndarray, targets: np.ndarray, in_len: np.ndarray, tgt_len: np.ndarray, blank: int,
             grad: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Losses (B,) and gradients (T, B, C) written in place for log-probabilities `lp` (T, B, C); returns statuses."""
    n_classes = lp.shape[2]
    status = np.zeros(lp.shape[1], np.int8)
    for b in range(lp.shape[1]):
        tb, sb = in_len[b], tgt_len[b]
        n = 2 * sb + 1  # the lattice: blank, label 1, blank, ..., label S, blank
        lab = np.full(n, blank, np.int64)
        skip = np.zeros(n + 4)  # skip[s + 2]: state s may be entered from s - 2 (a label unlike the one before it)
        need = sb
        for s in range(sb):
            lab[2 * s + 1] = targets[b, s]
            if s > 0 and targets[b, s] == targets[b, s - 1]:
                need += 1  # a repeated label needs a blank between its two frames
            elif s > 0:
                skip[2 * s + 1 + 2] = 1.0
        if tb == 0 or need > tb:
            status[b] = IMPOSSIBLE
            continue
        prob = np.empty((tb, n_classes))
        emit = np.empty((tb, n))  # emit[t, s] = prob[t, lab[s]]
        for t in range(tb):
            for c in range(n_classes):
                prob[t, c] = math.exp(lp[t, b, c])
            for s in range(n):
                emit[t, s] = prob[t, lab[s]]
        alpha = np.zeros((tb, n + 2))  # alpha[t, s + 2]: two empty states before the first keep the loops branch-free
        alpha[0, 2] = emit[0, 0]
        if n > 1:
            alpha[0, 3] = emit[0, 1]
        log_p = 0.0
        for t in range(tb):
            if t > 0:
                for s in range(n):
                    alpha[t, s + 2] = (alpha[t - 1, s + 2] + alpha[t - 1, s + 1] + skip[s + 2] * alpha[t - 1, s]) * emit[t, s]
            scale = 0.0
            for s in range(n):
                scale += alpha[t, s + 2]
            if not scale > 0.0:
                break
            inv = 1.0 / scale
            for s in range(n):
                alpha[t, s + 2] *= inv
            log_p += math.log(scale)
        end = alpha[tb - 1, n + 1] + alpha[tb - 1, n]
        if not end > 0.0:
            status[b] = UNDERFLOW
            continue
        loss[b] = -(log_p + math.log(end))
        # beta[t, s] * emit[t, s]: the rest of the labels from frame t on, rescaled per frame; two empty states after
        # the last (beta_t(s) itself, from frame t + 1 on, is ahead[s] while frame t is computed)
        beta = np.zeros((tb, n + 2))
        ahead = np.zeros(n + 2)
        ahead[n - 1] = 1.0
        if n > 1:
            ahead[n - 2] = 1.0
        for t in range(tb - 1, -1, -1):
            if t < tb - 1:
                z = 0.0
                for s in range(n):
                    v = beta[t + 1, s] + beta[t + 1, s + 1] + skip[s + 4] * beta[t + 1, s + 2]
                    ahead[s] = v
                    z += v
                if not z > 0.0:
                    break
                inv = 1.0 / z
                for s in range(n):
                    ahead[s] *= inv
            z = 0.0
            for s in range(n):
                beta[t, s] = ahead[s] * emit[t, s]
                z += alpha[t, s + 2] * ahead[s]
            if not z > 0.0:  # sum_s alpha_t(s) beta_t(s) is P at every frame (the scales cancel) unless it underflowed
                break
            inv = 1.0 / z
            for c in range(n_classes):
                grad[t, b, c] = prob[t, c]
            for s in range(n):
                grad[t, b, lab[s]] -= alpha[t, s + 2] * ahead[s] * inv
        else:
            continue
        status[b] = UNDERFLOW
    return status


class _ScaledCTC(torch.autograd.Function):
    @staticmethod
    def forward(ctx, log_probs: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor,
                blank: int) -> tuple[Tensor, Tensor]:
        lp = log_probs.detach().numpy()  # a strided view: (B, T, C) transposed is read in place
        grad = np.zeros(lp.shape, lp.dtype)
        loss = np.zeros(lp.shape[1], np.float64)
        status = _lattice(lp, targets.numpy().astype(np.int64), input_lengths.numpy().astype(np.int64),
                          target_lengths.numpy().astype(np.int64), blank, grad, loss)
        status_t = torch.from_numpy(status)
        ctx.save_for_backward(torch.from_numpy(grad))
        ctx.mark_non_differentiable(status_t)
        return torch.from_numpy(loss).to(log_probs.dtype), status_t

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _: Tensor) -> tuple[Tensor | None, ...]:
        grad, = ctx.saved_tensors
        return grad * grad_loss.view(1, -1, 1), None, None, None, None


def scaled_ctc_loss(log_probs: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor,
                    blank: int) -> Tensor | None:
    """CPU float (T, B, C) log-probabilities, (B, S) padded targets, (B,) lengths -> (B,) negative log-likelihoods,
    as `F.ctc_loss(..., reduction="none", zero_infinity=True)`; None where a feasible lattice underflowed."""
    loss, status = _ScaledCTC.apply(log_probs, targets, input_lengths, target_lengths, blank)
    return None if bool((status == UNDERFLOW).any()) else loss
