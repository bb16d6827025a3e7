"""Log-mel front-end (Mockingjay, arXiv 1910.12638; s3prl 0.4.18 `s3prl/upstream/mockingjay/` front-end) computed
with torchaudio, with recorded normalisation.

Every utterance's features are computed from its own valid samples only, so the features of a padded
batch equal those computed one utterance at a time (a property the tests check).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torchaudio
import torchaudio.functional as AF
from torch import Tensor, nn

from core.config import config_from_dict, config_to_dict
from core.frames import HOP, SAMPLE_RATE, WIN, FrameRule, stft_rule

Normalization = Literal["none", "corpus", "utterance"]


@dataclass(frozen=True)
class FeatureConfig:
    """Front-end settings; defaults are s3prl's Mockingjay input except normalisation (see `norm`)."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = WIN
    win_length: int = WIN
    hop_length: int = HOP
    n_mels: int = 80
    log_floor: float = 1e-10
    target_dbfs: float | None = -25.0  # wav scaled to this RMS level; None keeps the raw level
    deltas: bool = False  # append time derivatives (torchaudio compute_deltas), see delta_order
    delta_order: int = 1  # 1: mel + delta (160-dim, the Mockingjay paper's input); 2: + delta-delta
    downsample: int = 1  # frame stacking factor k: (T, D) -> (T // k, k * D)
    # "corpus" (default): train-split mean/std stored with the checkpoint, keeps speaker information.
    # "utterance": per-utterance CMVN as in s3prl -- erases speaker identity (mean-pooled features ~0).
    norm: Normalization = "corpus"
    norm_mean: tuple[float, ...] = field(default=(), repr=False)  # per-dim, before stacking
    norm_std: tuple[float, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if self.norm not in ("none", "corpus", "utterance"):
            raise ValueError(f"FeatureConfig.norm must be none, corpus or utterance; got {self.norm!r}")
        if self.downsample < 1:
            raise ValueError(f"FeatureConfig.downsample must be >= 1, got {self.downsample}")
        if self.delta_order not in (1, 2):
            raise ValueError(f"FeatureConfig.delta_order must be 1 or 2, got {self.delta_order}")
        if len(self.norm_mean) != len(self.norm_std):
            raise ValueError("FeatureConfig.norm_mean and norm_std must have the same length")
        if self.norm_mean and len(self.norm_mean) != self.base_dim:
            raise ValueError(f"FeatureConfig normalisation statistics have {len(self.norm_mean)} dims, "
                             f"features have {self.base_dim}")

    @property
    def base_dim(self) -> int:
        """Feature dimension per 10 ms frame, before stacking."""
        return self.n_mels * (1 + (self.delta_order if self.deltas else 0))

    @property
    def feature_dim(self) -> int:
        return self.base_dim * self.downsample

    @property
    def frame_rule(self) -> FrameRule:
        """Samples -> output frames of this front-end (centred STFT, then stacking)."""
        return stft_rule(self.hop_length, self.n_fft, self.sample_rate, self.downsample)

    @property
    def frame_shift(self) -> int:
        """Samples per output frame."""
        return self.frame_rule.shift

    @property
    def has_stats(self) -> bool:
        return bool(self.norm_mean)

    def num_frames(self, n_samples: int) -> int:
        return self.frame_rule.num_frames(n_samples)

    def with_stats(self, mean: Tensor, std: Tensor) -> "FeatureConfig":
        from dataclasses import replace

        return replace(self, norm_mean=tuple(float(x) for x in mean), norm_std=tuple(float(x) for x in std))

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureConfig":
        return config_from_dict(cls, d, "feature config")


class LogMelFrontend(nn.Module):
    """Waveforms (B, S) + lengths (B,) -> features (B, T, feature_dim) + frame lengths (B,)."""

    def __init__(self, cfg: FeatureConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("window", torch.hann_window(cfg.win_length), persistent=False)
        self.mel = torchaudio.transforms.MelScale(n_mels=cfg.n_mels, sample_rate=cfg.sample_rate, f_min=0.0,
                                                  f_max=cfg.sample_rate / 2, n_stft=cfg.n_fft // 2 + 1,
                                                  mel_scale="htk")
        mean = torch.tensor(cfg.norm_mean, dtype=torch.float32)
        std = torch.tensor(cfg.norm_std, dtype=torch.float32)
        self.register_buffer("norm_mean", mean, persistent=False)
        self.register_buffer("norm_std", std, persistent=False)

    def unnormalized(self, wav: Tensor) -> Tensor:
        """One utterance (S,) -> (1 + S // hop, base_dim) log-mel (+deltas), before normalisation and stacking."""
        cfg = self.cfg
        wav = wav.float()
        if cfg.target_dbfs is not None and wav.numel():
            rms = wav.pow(2).mean().sqrt().clamp_min(1e-8)
            wav = wav * (10 ** (cfg.target_dbfs / 20) / rms)
        spec = torch.stft(wav, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
                          window=self.window, center=True, pad_mode="reflect" if wav.numel() > cfg.n_fft // 2 else "constant",
                          return_complex=True).abs().pow(2)  # (F, T)
        feat = torch.log(self.mel(spec) + cfg.log_floor)  # (n_mels, T)
        if cfg.deltas:
            d1 = AF.compute_deltas(feat)
            parts = [feat, d1] + ([AF.compute_deltas(d1)] if cfg.delta_order == 2 else [])
            feat = torch.cat(parts, dim=0)
        return feat.transpose(0, 1)  # (T, base_dim)

    def forward(self, wavs: Tensor, wav_lengths: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.cfg
        feats = [self.unnormalized(wavs[i, : int(n)]) for i, n in enumerate(wav_lengths.tolist())]
        lengths = torch.tensor([f.shape[0] for f in feats], device=wavs.device)
        x = nn.utils.rnn.pad_sequence(feats, batch_first=True)  # (B, T, base_dim)
        mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).unsqueeze(-1)  # (B, T, 1)
        if cfg.norm == "corpus":
            if not cfg.has_stats:
                raise ValueError("FeatureConfig.norm='corpus' needs norm_mean/norm_std: compute them with "
                                 "upstream.features.corpus_stats on the training audio first")
            x = (x - self.norm_mean) / self.norm_std
        elif cfg.norm == "utterance":
            n = lengths.clamp_min(1)[:, None, None].to(x.dtype)
            mu = (x * mask).sum(1, keepdim=True) / n
            var = ((x - mu).pow(2) * mask).sum(1, keepdim=True) / n
            x = (x - mu) / (var.sqrt() + 1e-5)
        x = x * mask  # padding stays exactly zero
        k = cfg.downsample
        if k > 1:
            t = x.shape[1] // k
            x = x[:, : t * k].reshape(x.shape[0], t, k * x.shape[2])
            lengths = torch.div(lengths, k, rounding_mode="floor")
            x = x * (torch.arange(t, device=x.device)[None, :] < lengths[:, None]).unsqueeze(-1)
        return x, lengths


STATS_DECIMALS = 4  # 1e-4 of a log-mel unit: far below any effect on features, far above float32 noise


@torch.no_grad()
def corpus_stats(cfg: FeatureConfig, wavs: "list[Tensor]") -> tuple[Tensor, Tensor]:
    """Per-dimension mean and std of un-normalised features over all frames of `wavs` (training audio), rounded
    to STATS_DECIMALS decimals: the FFT's float32 last bits depend on the thread count, and the statistics are
    part of a feature config's hash (feature caches, the mel upstream's identity), so unrounded they made the same
    corpus hash differently on a busy and a quiet machine (measured: one std of 160 differed by 1 ulp)."""
    fe = LogMelFrontend(cfg)
    total = torch.zeros(cfg.base_dim, dtype=torch.float64)
    total_sq = torch.zeros(cfg.base_dim, dtype=torch.float64)
    count = 0
    for w in wavs:
        f = fe.unnormalized(w).double()
        total += f.sum(0)
        total_sq += f.pow(2).sum(0)
        count += f.shape[0]
    if count == 0:
        raise ValueError("corpus_stats: no audio frames given")
    mean = total / count
    std = (total_sq / count - mean.pow(2)).clamp_min(1e-10).sqrt()
    return mean.round(decimals=STATS_DECIMALS).float(), std.round(decimals=STATS_DECIMALS).float()
