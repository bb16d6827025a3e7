"""The masked-reconstruction model: our TransformerEncoder plus the s3prl-style prediction head."""
from __future__ import annotations

from typing import Callable, Literal, get_args

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


# How a training step's forward and backward run. "off": eager PyTorch. "default": torch.compile (inductor fuses the
# elementwise kernels). "reduce-overhead": torch.compile replayed as CUDA graphs (one launch for the whole forward,
# one for the backward). A small model's step on a GPU is bound by kernel launches (docs/scale.md), so "auto" is
# meant to pick, for one process on CUDA, whichever mode perf/device_check.py measures fastest there; eager
# everywhere else (on the CPU compiling costs more than it saves at these step counts; with several ranks the DDP
# wrapper stays eager). No GPU has measured the compiled modes yet, so "auto" stays eager on CUDA too until one has:
# set AUTO_COMPILE_ON_CUDA from results/device_check.json.
Compile = Literal["auto", "off", "default", "reduce-overhead"]
COMPILE_CHOICES: tuple[str, ...] = get_args(Compile)
AUTO_COMPILE_ON_CUDA = "off"
BACKEND = "inductor"  # the tests trace the same path with "aot_eager" on the CPU


def resolve_compile(choice: str, device: torch.device, several_ranks: bool = False) -> str:
    """The compile mode a run uses: `choice`, or for "auto" the measured default on one CUDA device, else "off"."""
    if choice not in COMPILE_CHOICES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_CHOICES)}; got {choice!r}")
    if choice != "auto":
        return choice
    return AUTO_COMPILE_ON_CUDA if device.type == "cuda" and not several_ranks else "off"


def compiled(net: nn.Module, mode: str) -> Callable[..., Tensor]:
    """What a training step calls for `net` in compile `mode` (resolved): the module itself, or its compiled form.
    Compiled steps see one shape (the trainer pads every batch to the crop length), so nothing recompiles. In
    "reduce-overhead" each call starts a new CUDA-graph replay (the last call's outputs are no longer read)."""
    if mode == "off":
        return net
    kw = {} if BACKEND != "inductor" or mode == "default" else {"mode": mode}
    fn = torch.compile(net, backend=BACKEND, dynamic=False, **kw)
    if mode != "reduce-overhead":
        return fn

    def replay(*args, **kwargs) -> Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return fn(*args, **kwargs)

    return replay


def pad_frames(t: Tensor, frames: int) -> Tensor:
    """`t` (B, T, ...) zero-padded along time to `frames` (>= T): a compiled step's one shape. Padded frames are
    beyond every utterance's length, so the key padding mask hides them and the loss mask leaves them out."""
    extra = frames - t.shape[1]
    if extra <= 0:
        return t
    return torch.cat([t, t.new_zeros((t.shape[0], extra, *t.shape[2:]))], dim=1)
