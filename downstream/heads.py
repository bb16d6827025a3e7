"""Probe building blocks: per-hidden-state standardisation and mean pooling over valid frames (heads: tasks.py)."""
from __future__ import annotations

import torch
from torch import Tensor, nn


def segment_mean(x: Tensor, lengths: Tensor) -> Tensor:
    """Per-utterance mean of FLAT frames: x (sum of lengths, D), lengths (B,) -> (B, D).

    Batches are flat (valid frames only, see downstream.sources), so padding can never enter an average.
    """
    seg = torch.repeat_interleave(torch.arange(len(lengths), device=x.device), lengths.to(x.device))
    out = torch.zeros(len(lengths), x.shape[-1], dtype=x.dtype, device=x.device).index_add_(0, seg, x)
    return out / lengths.clamp_min(1).to(x.device)[:, None].to(x.dtype)


class Whitening(nn.Module):
    """x -> (x - mean) @ Z with Z = C^(-1/2) (ZCA) from the covariance C of a set of examples: decorrelated,
    unit-variance features.

    An invertible affine map, so a linear probe's function class is unchanged: it can represent exactly what it
    could on the raw features. What changes is the optimisation. Transformer hidden states are strongly correlated
    across dimensions (ill-conditioned), and a probe with one learning rate converged on log-mel but stopped 10-17
    points short on every Transformer (docs/benchmark.md); on whitened features the same probe converges in a
    few epochs. The features are standardised, then their correlation matrix is shrunk towards the identity by
    the Ledoit-Wolf coefficient (scikit-learn, estimated on up to `shrink_rows` examples): ~0 for many frames, large when there are few examples for the
    dimension (e.g. a handful of utterance means), so directions the data barely span are not blown up.

    `full=False` only standardises (each dimension to zero mean, unit variance; no rotation): for utterance means
    (1,200 examples for 100 speakers at most here) whitening's equal weighting of low-variance directions cost
    the mean-pooled speaker probe 2-3 points on dev against standardisation (docs/benchmark.md).
    """

    def __init__(self, dim: int, full: bool = True, shrink_rows: int = 65536) -> None:
        super().__init__()
        self.full = full
        self.shrink_rows = shrink_rows
        self.shrinkage = 0.0
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("matrix", torch.eye(dim))

    @torch.no_grad()
    def fit(self, x: Tensor, chunk: int = 65536) -> "Whitening":
        """Statistics of the rows of x (N, D), accumulated in float64 over chunks."""
        if len(x) < 2:
            raise ValueError(f"Whitening.fit: needs at least 2 examples, got {len(x)}")
        n, d = x.shape
        s = torch.zeros(d, dtype=torch.float64)
        for a in range(0, n, chunk):
            s += x[a: a + chunk].double().sum(0)
        mean = s / n
        cov = torch.zeros(d, d, dtype=torch.float64)
        for a in range(0, n, chunk):
            xc = x[a: a + chunk].double() - mean
            cov += xc.T @ xc
        cov /= n
        self.mean.copy_(mean.float())
        inv_std = cov.diagonal().clamp_min(1e-12).rsqrt()  # (D,)
        if not self.full:
            self.matrix.copy_(torch.diag(inv_std).float())
            return self
        from sklearn.covariance import ledoit_wolf_shrinkage

        corr = inv_std[:, None] * cov * inv_std[None, :]  # whiten the standardised features: every dimension counts
        rows = torch.linspace(0, n - 1, min(n, self.shrink_rows)).long()
        self.shrinkage = float(ledoit_wolf_shrinkage(((x[rows].double() - mean) * inv_std).numpy()))
        corr = (1 - self.shrinkage) * corr + self.shrinkage * torch.eye(d, dtype=torch.float64)
        vals, vecs = torch.linalg.eigh(corr)
        vals = vals.clamp_min(1e-9)  # exactly collinear dimensions stay finite
        self.matrix.copy_((inv_std[:, None] * ((vecs * vals.rsqrt()) @ vecs.T)).float())
        return self

    @torch.no_grad()
    def apply_(self, x: Tensor, chunk: int = 65536) -> Tensor:
        """Whiten the rows of x (N, D) float32 in place, chunk by chunk (no second full-size copy)."""
        for a in range(0, len(x), chunk):
            x[a: a + chunk] = (x[a: a + chunk] - self.mean) @ self.matrix
        return x

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) @ self.matrix
