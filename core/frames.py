"""THE frame arithmetic: samples <-> frames for the whole toolkit (front-end, labels, pooling).

The log-mel front-end runs a centred STFT (torch.stft center=True) with hop `hop` samples, so frame i
is centred on sample i*hop and an utterance of n samples has 1 + n // hop frames (s3prl 0.4.18 front-end:
torch.stft center=True, hop 160).
Frame stacking by `downsample` k groups frames [j*k, j*k+k) into output frame j and drops the remainder.
"""
from __future__ import annotations

import torch

SAMPLE_RATE = 16_000
HOP = 160  # 10 ms at 16 kHz
WIN = 400  # 25 ms at 16 kHz


def num_frames(n_samples: int, hop: int = HOP, downsample: int = 1) -> int:
    """Number of output frames for an utterance of `n_samples` samples."""
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    return (1 + n_samples // hop) // downsample


def num_frames_tensor(n_samples: torch.Tensor, hop: int = HOP, downsample: int = 1) -> torch.Tensor:
    """Vectorised `num_frames` for a (B,) tensor of sample counts."""
    return torch.div(1 + torch.div(n_samples, hop, rounding_mode="floor"), downsample, rounding_mode="floor")


def frame_center_sample(frame: int, hop: int = HOP, downsample: int = 1) -> float:
    """Sample position of the centre of output frame `frame` (the mean of its stacked frames' centres)."""
    return (frame * downsample + (downsample - 1) / 2) * hop


def frame_shift_samples(hop: int = HOP, downsample: int = 1) -> int:
    return hop * downsample
