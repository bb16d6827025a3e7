"""The one upstream contract: waveforms + lengths in, every hidden state + valid frame lengths out."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from core.frames import FrameRule
from upstream.features import FeatureConfig, LogMelFrontend
from upstream.transformer import EncoderConfig, TransformerEncoder


RANDOM_INIT_SEED = 0  # random-init controls are deterministic so their cached features can be reused


@dataclass(frozen=True)
class UpstreamShape:
    """What an upstream's outputs look like, known without building it (planning, cache sizes)."""

    num_hidden_states: int
    hidden_size: int
    frame_rule: FrameRule


class Upstream(nn.Module, ABC):
    """Base class of every upstream. Static attributes describe the output without running the model.

    forward(wavs (B, S) float in [-1, 1] at `sample_rate`, wav_lengths (B,)) -> (hidden_states, lengths): a list of
    `num_hidden_states` tensors (B, T, hidden_size) and lengths (B,) = frame_rule.num_frames(wav_lengths), padded
    frames zero. Utterance i's outputs do not depend on the rest of the batch (batched == one by one).
    `frame_rule` says where output frame t sits in time (core.frames): labels, caches and pooling use it alone.
    `cache_fields()`: what, besides the upstream's name, preset and weights hash (upstream.registry.upstream_identity),
    determines the outputs; it is part of every feature-cache key.
    """

    sample_rate: int
    frame_rule: FrameRule
    hidden_size: int
    num_hidden_states: int

    @property
    def frame_shift(self) -> int:
        """Samples between consecutive output frames."""
        return self.frame_rule.shift

    @abstractmethod
    def cache_fields(self) -> dict[str, Any]: ...

    @abstractmethod
    def forward(self, wavs: Tensor, wav_lengths: Tensor) -> tuple[list[Tensor], Tensor]: ...


class LogMelUpstream(Upstream):
    """Upstreams on the toolkit's log-mel front-end (upstream.features): mel itself and the Transformer encoders."""

    def __init__(self, feature: FeatureConfig) -> None:
        super().__init__()
        self.feature_cfg = feature
        self.frontend = LogMelFrontend(feature)
        self.sample_rate = feature.sample_rate
        self.frame_rule = feature.frame_rule

    def cache_fields(self) -> dict[str, Any]:
        return {"feature": self.feature_cfg.to_dict()}  # implies the frame rule (FeatureConfig.frame_rule)


class MelUpstream(LogMelUpstream):
    """The log-mel baseline: one hidden state, the (normalised, optionally stacked) features."""

    def __init__(self, feature: FeatureConfig) -> None:
        super().__init__(feature)
        self.hidden_size = feature.feature_dim
        self.num_hidden_states = 1

    def forward(self, wavs: Tensor, wav_lengths: Tensor) -> tuple[list[Tensor], Tensor]:
        x, lengths = self.frontend(wavs, wav_lengths)
        return [x], lengths


class TransformerUpstream(LogMelUpstream):
    """Mockingjay / AALBERT: log-mel front-end then the shared TransformerEncoder (N+1 hidden states)."""

    def __init__(self, feature: FeatureConfig, encoder: EncoderConfig) -> None:
        super().__init__(feature)
        if encoder.input_dim != feature.feature_dim:
            raise ValueError(f"encoder input_dim {encoder.input_dim} != feature dim {feature.feature_dim}")
        self.encoder_cfg = encoder
        self.encoder = TransformerEncoder(encoder)
        self.hidden_size = encoder.hidden_size
        self.num_hidden_states = encoder.num_layers + 1

    def forward(self, wavs: Tensor, wav_lengths: Tensor) -> tuple[list[Tensor], Tensor]:
        x, lengths = self.frontend(wavs, wav_lengths)
        hidden, _ = self.encoder(x, lengths)
        return hidden, lengths

    def attention(self, wavs: Tensor, wav_lengths: Tensor) -> tuple[list[Tensor], Tensor]:
        """Attention probabilities per layer, each (B, heads, T, T), and frame lengths (analysis)."""
        x, lengths = self.frontend(wavs, wav_lengths)
        _, weights = self.encoder(x, lengths, need_weights=True)
        return weights, lengths
