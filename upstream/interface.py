"""The one upstream contract: waveforms + lengths in, every hidden state + valid frame lengths out."""
from __future__ import annotations

from torch import Tensor, nn

from upstream.features import FeatureConfig, LogMelFrontend
from upstream.transformer import EncoderConfig, TransformerEncoder


class Upstream(nn.Module):
    """Base class. Static attributes describe the output without running the model.

    forward(wavs (B, S) float in [-1, 1], wav_lengths (B,)) -> (hidden_states, lengths) where
    hidden_states is a list of `num_hidden_states` tensors (B, T, hidden_size) and lengths (B,) counts
    valid frames; frame t covers samples centred on t * frame_shift (core.frames).
    """

    sample_rate: int
    frame_shift: int
    hidden_size: int
    num_hidden_states: int

    def __init__(self, feature: FeatureConfig) -> None:
        super().__init__()
        self.feature_cfg = feature
        self.frontend = LogMelFrontend(feature)
        self.sample_rate = feature.sample_rate
        self.frame_shift = feature.frame_shift


class MelUpstream(Upstream):
    """The log-mel baseline: one hidden state, the (normalised, optionally stacked) features."""

    def __init__(self, feature: FeatureConfig) -> None:
        super().__init__(feature)
        self.hidden_size = feature.feature_dim
        self.num_hidden_states = 1

    def forward(self, wavs: Tensor, wav_lengths: Tensor) -> tuple[list[Tensor], Tensor]:
        x, lengths = self.frontend(wavs, wav_lengths)
        return [x], lengths


class TransformerUpstream(Upstream):
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
