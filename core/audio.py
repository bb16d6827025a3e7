"""Audio loading with soundfile: resampled to the toolkit rate, down-mixed, validated, errors naming the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from core.frames import SAMPLE_RATE


class AudioError(ValueError):
    """An audio file that cannot be used: unreadable, corrupt, or holding NaN/inf samples."""


def load_audio(path: str | Path, target_sr: int = SAMPLE_RATE) -> torch.Tensor:
    """Read `path` as a mono float32 (n_samples,) tensor at `target_sr`.

    Multi-channel audio is averaged to mono; other rates are resampled with torchaudio.
    Raises AudioError naming the file when it is unreadable or holds non-finite samples.
    An empty file returns a zero-length tensor: callers decide whether to skip it.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (n, channels)
    except Exception as e:  # soundfile raises several types (LibsndfileError, RuntimeError, TypeError)
        raise AudioError(f"cannot read audio file {path}: {e}") from e
    if data.size and not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise AudioError(f"audio file {path} holds {bad} NaN/inf samples")
    wav = torch.from_numpy(data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]).contiguous()
    if sr != target_sr and wav.numel():
        wav = AF.resample(wav, orig_freq=sr, new_freq=target_sr)  # core.frames.resampled_length(n, sr, target_sr)
    return wav


def audio_info(path: str | Path) -> tuple[int, int, int]:
    """(sample_rate, n_frames, channels) from the header, without decoding; AudioError when unreadable."""
    try:
        info = sf.info(str(path))
    except Exception as e:
        raise AudioError(f"cannot read audio header of {path}: {e}") from e
    return int(info.samplerate), int(info.frames), int(info.channels)
