"""THE frame arithmetic: samples <-> frames for the whole toolkit (front-ends, labels, caches, pooling).

Every upstream declares a `FrameRule`: a chain of strided windows over the waveform (each output frame of a window
covers `size` inputs, one every `stride`), optional padding before the first window, then optional stacking of
`stack` consecutive frames into one (the remainder dropped). One rule covers
  * the centred STFT of the log-mel front-end (torch.stft center=True pads n_fft // 2 samples on each side):
    1 + n // hop frames; frame t centred on sample t * hop (the periodic Hann window of torch.hann_window is
    symmetric about its sample n_fft // 2; s3prl 0.4.18's Mockingjay front-end: hop 160, n_fft 400);
  * frame stacking by k (Mockingjay's downsample_rate): output frame j = frames [j k, j k + k), centred on the mean
    of their centres;
  * a stack of valid (unpadded) convolutions, e.g. the wav2vec 2.0 feature encoder (Baevski et al. 2020, arXiv
    2006.11477, sec. 2 and 4.2: kernels (10, 3, 3, 3, 3, 2, 2), strides (5, 2, 2, 2, 2, 2, 2)): 400-sample receptive
    field, 320-sample (20 ms) hop, frame t centred on sample 320 t + 199.5; torchaudio's ConvLayerBlock counts
    floor((n - kernel) / stride) + 1 per layer, never below 0.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

SAMPLE_RATE = 16_000
HOP = 160  # 10 ms at 16 kHz
WIN = 400  # 25 ms at 16 kHz


@dataclass(frozen=True)
class Window:
    """One strided window: `size` inputs per output, a new output every `stride` inputs; the output sits at input
    offset `centre` within its window ((size - 1) / 2 for a convolution kernel, n_fft // 2 for a periodic Hann)."""

    size: int
    stride: int
    centre: float

    def __post_init__(self) -> None:
        if self.size < 1 or self.stride < 1 or not 0 <= self.centre <= self.size - 1:
            raise ValueError(f"Window needs size >= 1, stride >= 1 and 0 <= centre <= size - 1, got {self}")


@dataclass(frozen=True)
class FrameRule:
    """Samples -> frames of one upstream: how many, and where each sits in time (module docstring)."""

    sample_rate: int
    windows: tuple[Window, ...]
    pad: int = 0  # samples added on each side before the first window
    stack: int = 1  # consecutive frames concatenated into one output frame, remainder dropped

    def __post_init__(self) -> None:
        if not self.windows or self.pad < 0 or self.stack < 1 or self.sample_rate < 1:
            raise ValueError(f"FrameRule needs windows, pad >= 0, stack >= 1 and a sample rate, got {self}")

    @property
    def hop(self) -> int:
        """Input samples between consecutive frames before stacking."""
        return int(np.prod([w.stride for w in self.windows]))

    @property
    def shift(self) -> int:
        """Input samples between consecutive output frames."""
        return self.hop * self.stack

    def num_frames(self, n_samples: int) -> int:
        """Output frames for an utterance of `n_samples` samples at `sample_rate`."""
        if n_samples < 0:
            raise ValueError(f"n_samples must be >= 0, got {n_samples}")
        n = n_samples + 2 * self.pad
        for w in self.windows:
            n = max(0, (n - w.size) // w.stride + 1)
        return n // self.stack

    def num_frames_of(self, n_samples: int, sample_rate: int) -> int:
        """Output frames for audio of `n_samples` samples at `sample_rate`, as loaded (resampled to this rule's rate)."""
        return self.num_frames(resampled_length(n_samples, sample_rate, self.sample_rate))

    def num_frames_tensor(self, n_samples: torch.Tensor) -> torch.Tensor:
        """Vectorised `num_frames` for a (B,) integer tensor of sample counts."""
        n = n_samples + 2 * self.pad
        for w in self.windows:
            n = (torch.div(n - w.size, w.stride, rounding_mode="floor") + 1).clamp_min(0)
        return torch.div(n, self.stack, rounding_mode="floor")

    def centres(self, n_frames: int) -> np.ndarray:
        """(n_frames,) float64: the sample each output frame is centred on (stacked: the mean of its frames')."""
        offset, step = -float(self.pad), 1
        for w in self.windows:  # a frame of window i starts `stride` of its inputs after the previous one
            offset += w.centre * step
            step *= w.stride
        first = offset + (self.stack - 1) / 2 * step
        return first + np.arange(n_frames, dtype=np.float64) * self.shift

    def to_dict(self) -> dict:
        return {"sample_rate": self.sample_rate, "windows": [asdict(w) for w in self.windows], "pad": self.pad,
                "stack": self.stack}

    @classmethod
    def from_dict(cls, d: dict) -> "FrameRule":
        try:
            return cls(int(d["sample_rate"]), tuple(Window(**w) for w in d["windows"]), int(d["pad"]), int(d["stack"]))
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a frame rule: {d!r} ({e})") from None


def resampled_length(n_samples: int, orig_sr: int, new_sr: int) -> int:
    """Samples after resampling `n_samples` from `orig_sr` to `new_sr` with torchaudio.functional.resample (what
    core.audio.load_audio does): ceil(n * new / orig), rates reduced by their gcd first, as torchaudio computes it."""
    if orig_sr == new_sr:
        return n_samples
    g = math.gcd(orig_sr, new_sr)
    return -(-n_samples * (new_sr // g) // (orig_sr // g))


def stft_rule(hop: int = HOP, n_fft: int = WIN, sample_rate: int = SAMPLE_RATE, stack: int = 1) -> FrameRule:
    """Centred STFT (torch.stft center=True, periodic Hann) with `hop`, then stacking by `stack`."""
    return FrameRule(sample_rate, (Window(n_fft, hop, n_fft // 2),), pad=n_fft // 2, stack=stack)


def conv_rule(layers: list[tuple[int, int]] | tuple[tuple[int, int], ...], sample_rate: int = SAMPLE_RATE) -> FrameRule:
    """Valid convolutions (kernel, stride), input first: e.g. the wav2vec 2.0 feature encoder."""
    return FrameRule(sample_rate, tuple(Window(k, s, (k - 1) / 2) for k, s in layers))


LOG_MEL = stft_rule()  # the 10-ms log-mel front-end's frames (upstream.features defaults)
