"""Probe building blocks: per-hidden-state standardisation and mean pooling over valid frames (heads: tasks.py)."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from core.repro import torch_threads


def segment_mean(x: Tensor, lengths: Tensor) -> Tensor:
    """Per-utterance mean of FLAT frames: x (sum of lengths, D), lengths (B,) -> (B, D).

    Batches are flat (valid frames only, see downstream.sources), so padding can never enter an average.
    """
    seg = torch.repeat_interleave(torch.arange(len(lengths), device=x.device), lengths.to(x.device))
    out = torch.zeros(len(lengths), x.shape[-1], dtype=x.dtype, device=x.device).index_add_(0, seg, x)
    return out / lengths.clamp_min(1).to(x.device)[:, None].to(x.dtype)


class Whitening(nn.Module):
    """x -> (x - mean) @ Z with Z = C^(-1/2) (ZCA) from the covariance C of a set of examples: decorrelated,
    unit-variance features. With `decorrelate=False`, Z = diag(C)^(-1/2): each dimension standardised alone.

    An affine map, invertible on every direction the data spans, so a linear probe's function class is unchanged:
    it can represent what it could on the raw features. What changes is the optimisation. Transformer hidden states are strongly correlated
    across dimensions (ill-conditioned), and a probe with one learning rate converged on log-mel but stopped 10-17
    points short on every Transformer (docs/benchmark.md); on whitened features the same probe converges in a
    few epochs (standardising each dimension alone does not help: Adam is already invariant to per-dimension
    scale). The statistics come from many examples (every frame of the train split, labelled or not), so the
    low-variance directions are well estimated. Directions whose variance is below `floor` x the largest (exactly
    collinear dimensions, or fewer examples than dimensions) are mapped to zero.

    The transform is part of the probe's definition, not only of its speed: a regularised probe (early stopping,
    an L2 penalty) is regularised in the geometry of its inputs, which matters where examples are few. On 1,200
    mean-pooled utterances an L2-regularised regression on whitened means scores ~6 points lower on mel than
    on standardised means (docs/benchmark.md), so utterance-level probes standardise (`decorrelate=False`) and
    solve the well-conditioned small problem with L-BFGS instead (downstream.train). The convergence reference
    (benchmark.report.convergence) is fitted on the same examples.
    """

    def __init__(self, dim: int, floor: float = 1e-6, decorrelate: bool = True) -> None:
        super().__init__()
        self.floor = floor
        self.decorrelate = decorrelate
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("matrix", torch.eye(dim))

    @torch.no_grad()
    def fit(self, x: Tensor, chunk: int = 65536) -> "Whitening":
        """Statistics of the rows of x (N, D) (in memory or memory-mapped), read in chunks."""
        return self.fit_chunks(x[a: a + chunk] for a in range(0, len(x), chunk))

    @torch.no_grad()
    def fit_chunks(self, chunks: Iterable[Tensor]) -> "Whitening":
        """Statistics of the rows of every chunk (each (n, D)) in ONE streaming pass: float32 products of chunks
        centred on the first chunk's mean, summed in float64 (the shift keeps the sums well conditioned), so the
        corpus is never held whole. On one torch thread (core.repro.torch_threads), so the transform's bits do not
        depend on how many cores the fitting process has (probes trained through other bits give other rows)."""
        with torch_threads(1):
            return self._fit(chunks)

    def _fit(self, chunks: Iterable[Tensor]) -> "Whitening":
        n, s, m2, shift = 0, None, None, None
        for x in chunks:
            xc = x.float()
            if shift is None:
                shift = xc.mean(0)
                s = torch.zeros(xc.shape[1], dtype=torch.float64)
                m2 = torch.zeros(xc.shape[1], xc.shape[1], dtype=torch.float64)
            xc = xc - shift
            s += xc.sum(0).double()
            m2 += (xc.T @ xc).double()
            n += len(xc)
        if n < 2:
            raise ValueError(f"Whitening.fit: needs at least 2 examples, got {n}")
        assert s is not None and m2 is not None and shift is not None
        d = s / n  # mean - shift
        cov = m2 / n - torch.outer(d, d)
        self.mean.copy_((shift.double() + d).float())
        var = cov.diagonal()
        if not self.decorrelate:  # standardise only; (near-)constant dimensions map to zero, as in the ZCA below
            kept = var > float(var.max()) * self.floor
            self.matrix.copy_(torch.diag(torch.where(kept, var.clamp_min(1e-300).rsqrt(), torch.zeros_like(var))).float())
            return self
        inv_std = var.clamp_min(1e-12).rsqrt()  # (D,)
        corr = inv_std[:, None] * cov * inv_std[None, :]  # whiten the standardised features: every dimension counts
        vals, vecs = torch.linalg.eigh(corr)
        # directions the train examples do not span (variance below floor x the largest) are dropped, not blown
        # up: a probe trained on these examples could not learn a weight for them anyway
        scale = torch.where(vals > float(vals.max()) * self.floor, vals.clamp_min(1e-300).rsqrt(), torch.zeros_like(vals))
        self.matrix.copy_((inv_std[:, None] * ((vecs * scale) @ vecs.T)).float())
        return self

    @torch.no_grad()
    def apply_(self, x: Tensor, chunk: int = 65536) -> Tensor:
        """Whiten the rows of x (N, D) in place, chunk by chunk (no second full-size copy)."""
        for a in range(0, len(x), chunk):
            x[a: a + chunk] = self(x[a: a + chunk])
        return x

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) @ self.matrix
