"""ONE Transformer encoder for Mockingjay and AALBERT (Mockingjay, arXiv 1910.12638; Audio ALBERT, arXiv
2005.08575; s3prl 0.4.18 `s3prl/upstream/mockingjay/model.py`).

Post-LayerNorm BERT layers over log-mel frames (or Pre-LN with `pre_layer_norm=True`, as s3prl's option of the
same name: each sub-layer normalises its input, and every reported hidden state passes through its own LayerNorm;
Xiong et al. 2020, arXiv 2002.04745, train such models without warm-up). `share_layers=True` applies a single layer's weights
at every depth (AALBERT); `embed_dim` < hidden factorises the input projection (ALBERT-style, off by
default as in s3prl). Attention runs through `F.scaled_dot_product_attention` with a key padding mask,
so padded frames never change the outputs of valid frames.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.config import config_from_dict, config_to_dict


@dataclass(frozen=True)
class EncoderConfig:
    """Defaults are Mockingjay Base as released with s3prl (3 layers, 768 hidden, 12 heads)."""

    input_dim: int = 80
    hidden_size: int = 768
    num_layers: int = 3
    num_heads: int = 12
    intermediate_size: int = 3072
    dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    share_layers: bool = False  # True = AALBERT: one layer's weights at every depth
    embed_dim: int | None = None  # factorised input embedding input -> E -> hidden when set
    pre_layer_norm: bool = False  # Pre-LN layers + one output LayerNorm per reported hidden state (s3prl's flag)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if self.embed_dim is not None and not 0 < self.embed_dim < self.hidden_size:
            raise ValueError(f"embed_dim must be in (0, hidden_size={self.hidden_size}), got {self.embed_dim}")

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EncoderConfig":
        return config_from_dict(cls, d, "encoder config")


def sinusoidal_positions(length: int, dim: int, device: torch.device | None = None) -> Tensor:
    """Fixed sinusoidal table (length, dim): even dims sin(pos / 10000^(2i/dim)), odd dims cos (Vaswani et al.).

    Computed in float64 and returned in float32, as s3prl does (a float32 table drifts by ~1e-4 at 1,500 positions)."""
    pos = torch.arange(length, dtype=torch.float64, device=device)[:, None]
    inv = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64, device=device) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, dtype=torch.float64, device=device)
    pe[:, 0::2] = torch.sin(pos * inv)
    pe[:, 1::2] = torch.cos(pos * inv[: dim // 2])
    return pe.float()


class InputBlock(nn.Module):
    """Linear projection (optionally factorised) + sinusoidal positions + LayerNorm + dropout."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.embed = nn.Linear(cfg.input_dim, cfg.embed_dim, bias=False) if cfg.embed_dim else None
        self.proj = nn.Linear(cfg.embed_dim or cfg.input_dim, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, input_dim) -> (B, T, H)
        if self.embed is not None:
            x = self.embed(x)
        x = self.proj(x)
        x = x + sinusoidal_positions(x.shape[1], x.shape[2], x.device).to(x.dtype)
        return self.dropout(self.norm(x))


class EncoderLayer(nn.Module):
    """Post-LN layer: h = LN(x + Drop(Wo·Attn(x))); y = LN(h + Drop(W2·gelu(W1·h))).
    Pre-LN layer: h = x + Drop(Wo·Attn(LN(x))); y = h + Drop(W2·gelu(W1·LN(h)))."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.pre_ln = cfg.pre_layer_norm
        self.num_heads = cfg.num_heads
        self.attn_dropout = cfg.attention_dropout
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)  # fused q, k, v: one matmul
        self.attn_out = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.attn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.ffn_in = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.ffn_out = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.ffn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, attn_mask: Tensor | None, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        B, T, H = x.shape
        a = self.attn_norm(x) if self.pre_ln else x
        q, k, v = self.qkv(a).view(B, T, 3, self.num_heads, H // self.num_heads).permute(2, 0, 3, 1, 4)  # (B, h, T, d)
        weights = None
        if need_weights:  # explicit softmax so the attention map can be returned (analysis only)
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, h, T, T)
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            weights = scores.softmax(-1)
            ctx = F.dropout(weights, self.attn_dropout, self.training) @ v
        else:
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                                 dropout_p=self.attn_dropout if self.training else 0.0)
        ctx = ctx.transpose(1, 2).reshape(B, T, H)
        if self.pre_ln:
            h = x + self.dropout(self.attn_out(ctx))
            return h + self.dropout(self.ffn_out(F.gelu(self.ffn_in(self.ffn_norm(h))))), weights
        h = self.attn_norm(x + self.dropout(self.attn_out(ctx)))
        y = self.ffn_norm(h + self.dropout(self.ffn_out(F.gelu(self.ffn_in(h)))))
        return y, weights


class TransformerEncoder(nn.Module):
    """Features (B, T, input_dim) + lengths (B,) -> N+1 hidden states, each (B, T, H), padding zeroed."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.input = InputBlock(cfg)
        n_distinct = 1 if cfg.share_layers else cfg.num_layers
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(n_distinct))
        # Pre-LN: the residual stream is never normalised, so each reported state gets its own LayerNorm
        # (one per depth even when layers are shared, as in s3prl).
        self.out_norms = nn.ModuleList(nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
                                       for _ in range(cfg.num_layers + 1)) if cfg.pre_layer_norm else None
        self.apply(self._init_weights)

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=self.cfg.initializer_range)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def layer(self, i: int) -> EncoderLayer:
        """The module applied at depth i (always the same one when layers are shared)."""
        return self.layers[0 if self.cfg.share_layers else i]

    def forward(self, x: Tensor, lengths: Tensor, need_weights: bool = False
                ) -> tuple[list[Tensor], list[Tensor]]:
        """Return (hidden_states, attention_weights); weights (B, heads, T, T) per layer only if need_weights."""
        T = x.shape[1]
        valid = torch.arange(T, device=x.device)[None, :] < lengths.to(x.device)[:, None]  # (B, T)
        attn_mask = valid[:, None, None, :]  # (B, 1, 1, T): True = may attend
        keep = valid.unsqueeze(-1).to(x.dtype)
        h = self.input(x) * keep
        hidden, weights = [self._report(0, h, keep)], []
        for i in range(self.cfg.num_layers):
            h, w = self.layer(i)(h, attn_mask, need_weights)
            h = h * keep.to(h.dtype)
            hidden.append(self._report(i + 1, h, keep))
            if w is not None:
                weights.append(w)
        return hidden, weights

    def _report(self, depth: int, h: Tensor, keep: Tensor) -> Tensor:
        """The hidden state reported at `depth`: the residual stream itself, or its Pre-LN output norm."""
        if self.out_norms is None:
            return h
        return self.out_norms[depth](h) * keep.to(h.dtype)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
