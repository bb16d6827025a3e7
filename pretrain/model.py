"""The masked-reconstruction model: our TransformerEncoder plus the s3prl-style prediction head."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from upstream.transformer import EncoderConfig, TransformerEncoder


class PredictionHead(nn.Module):
    """Linear(H, H) -> GELU -> LayerNorm -> Linear(H, target_dim), reading the last layer (no weight tying)."""

    def __init__(self, cfg: EncoderConfig, target_dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.out = nn.Linear(cfg.hidden_size, target_dim)
        for lin in (self.dense, self.out):
            nn.init.normal_(lin.weight, std=cfg.initializer_range)
            nn.init.zeros_(lin.bias)

    def forward(self, h: Tensor) -> Tensor:  # (B, T, H) -> (B, T, target_dim)
        return self.out(self.norm(F.gelu(self.dense(h))))


class MaskedAcousticModel(nn.Module):
    def __init__(self, cfg: EncoderConfig, target_dim: int) -> None:
        super().__init__()
        self.encoder = TransformerEncoder(cfg)
        self.head = PredictionHead(cfg, target_dim)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        hidden, _ = self.encoder(x, lengths)
        return self.head(hidden[-1])


def make_optimizer(model: nn.Module, lr: float, betas: tuple[float, float], eps: float, weight_decay: float
                   ) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: biases and LayerNorm weights (1-D) are not decayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # On CUDA the fused kernel: one launch for the whole update (a small model's step is bound by kernel launches,
    # docs/scale.md); elsewhere foreach: one multi-tensor kernel per op instead of a Python loop over ~40 parameters.
    if params and params[0].is_cuda:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=True)


def lr_at(step: int, total: int, peak: float, warmup: float) -> float:
    """Linear warm-up over the first `warmup` fraction of `total` steps, then linear decay to 0."""
    w = max(1, round(warmup * total))
    if step < w:
        return peak * (step + 1) / w
    return peak * max(0.0, (total - step) / max(1, total - w))
