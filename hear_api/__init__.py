"""HEAR 2021 common API for every speechprobe upstream (mel, Mockingjay/AALBERT checkpoints, random-init controls).

    import hear_api
    model = hear_api.load_model("runs/pretrain/mockingjay-small")     # or "", "mel", "aalbert_random", spec.json
    emb, ts = hear_api.get_timestamp_embeddings(audio, model)         # audio: (n_sounds, n_samples) at 16 kHz
    scene = hear_api.get_scene_embeddings(audio, model)

API: HEAR 2021 (Turian et al., "HEAR: Holistic Evaluation of Audio Representations", PMLR 176, 2022; the
`hearvalidator` package checks it). What `model_file_path` names and the layer rule: hear_api/spec.py.
Timestamps: output frame t is centred on sample t * hop (a centred STFT; with k stacked frames, the mean of the k
centres: the upstream's frame rule, core.frames.FrameRule.centres), reported in milliseconds, so a regular hop of 10 ms (30 ms stacked)
starting at 0 (10 ms stacked); every frame of the 1 + n // hop (then // k) the front-end makes is reported, the
last one centred at or before the end of the audio. Scene embeddings are the mean over those frames, as the
toolkit's utterance-level probe pools. This package is outside the core toolkit: nothing else imports it.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from hear_api.spec import LayerRule, ModelSpec, build_model_upstream, parse_model_path
from upstream.interface import Upstream

__all__ = ["HearModel", "ModelSpec", "load_model", "get_timestamp_embeddings", "get_scene_embeddings"]


class HearModel(nn.Module):
    """An upstream plus the rule that turns its N+1 hidden states into one embedding per frame."""

    def __init__(self, upstream: Upstream, layer: LayerRule = "last") -> None:
        super().__init__()
        n = upstream.num_hidden_states
        if isinstance(layer, int) and not -n <= layer < n:
            raise ValueError(f"layer {layer} is out of range: this upstream has {n} hidden states (0..{n - 1})")
        self.upstream, self.layer = upstream, layer
        self.sample_rate: int = upstream.sample_rate
        self.timestamp_embedding_size: int = upstream.hidden_size * (n if layer == "concat" else 1)
        self.scene_embedding_size: int = self.timestamp_embedding_size
        rule = upstream.frame_rule
        self.hop_ms = rule.shift * 1000 / rule.sample_rate
        self.first_ms = float(rule.centres(1)[0]) * 1000 / rule.sample_rate

    def combine(self, hidden: list[Tensor]) -> Tensor:
        """N+1 hidden states (B, T, H) -> (B, T, D) by the layer rule."""
        if self.layer == "last":
            return hidden[-1]
        if self.layer == "mean":
            return torch.stack(hidden).mean(0)
        if self.layer == "concat":
            return torch.cat(hidden, dim=-1)
        return hidden[int(self.layer)]

    def forward(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        """(n_sounds, n_samples) in [-1, 1] -> float32 embeddings (n_sounds, T, D), timestamps in ms (n_sounds, T)."""
        if audio.dim() != 2 or not audio.is_floating_point():
            raise ValueError(f"audio must be a float tensor (n_sounds, n_samples), got {tuple(audio.shape)} "
                             f"of {audio.dtype}")
        lengths = torch.full((audio.shape[0],), audio.shape[1], dtype=torch.long, device=audio.device)
        hidden, _ = self.upstream(audio, lengths)
        emb = self.combine(hidden).float()  # (B, T, D)
        if emb.shape[1] == 0:
            raise ValueError(f"{audio.shape[1]} samples give no frame (the front-end needs at least "
                             f"{self.upstream.frame_shift} samples per output frame)")
        t = torch.arange(emb.shape[1], dtype=torch.float64, device=audio.device)
        ts = (self.first_ms + t * self.hop_ms).float().expand(audio.shape[0], -1)  # (B, T), float64 before: no drift
        return emb, ts


def load_model(model_file_path: str = "") -> HearModel:
    """The HEAR model `model_file_path` names (hear_api/spec.py), in eval mode on the CPU."""
    spec: ModelSpec = parse_model_path(model_file_path)
    return HearModel(build_model_upstream(spec), spec.layer).eval()


@torch.no_grad()
def get_timestamp_embeddings(audio: Tensor, model: HearModel) -> tuple[Tensor, Tensor]:
    """Embeddings (n_sounds, n_timestamps, D) float32 and frame-centre timestamps (n_sounds, n_timestamps) in ms."""
    return model(audio)


@torch.no_grad()
def get_scene_embeddings(audio: Tensor, model: HearModel) -> Tensor:
    """One float32 embedding per sound (n_sounds, D): the mean of its timestamp embeddings."""
    emb, _ = model(audio)
    return emb.mean(dim=1)
