"""Where a probe gets hidden states: stored arrays (the feature cache) or the upstream run live on audio."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from core.audio import load_audio
from core.frames import SAMPLE_RATE
from corpora.manifest import Corpus, Utterance
from upstream.interface import Upstream


class FeatureSource(Protocol):
    num_hidden_states: int
    hidden_size: int

    def lengths(self, split: str) -> np.ndarray:
        """(n_utts,) valid frames per utterance of `split`, in manifest order."""

    def batch(self, split: str, idx: list[int], layers: list[int], grad: bool = False) -> tuple[list[Tensor], Tensor]:
        """Hidden states `layers` of utterances `idx`, FLAT: float32 (sum of lengths, D) tensors holding the
        valid frames of each utterance in `idx` order (no padding at all), and lengths (B,)."""


@dataclass(frozen=True)
class SplitArrays:
    """One split's hidden states stored flat: hidden (L, total_frames, D), utterance i at offsets[i]:offsets[i+1]."""

    hidden: np.ndarray  # usually a float16 np.memmap: never loaded whole
    offsets: np.ndarray  # (n_utts + 1,) int64

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


class ArraySource:
    """Reads batches from stored arrays; only the requested layers and utterances are touched."""

    def __init__(self, splits: dict[str, SplitArrays]) -> None:
        if not splits:
            raise ValueError("ArraySource needs at least one split")
        first = next(iter(splits.values()))
        self.splits = splits
        self.num_hidden_states = int(first.hidden.shape[0])
        self.hidden_size = int(first.hidden.shape[2])

    def lengths(self, split: str) -> np.ndarray:
        return self.splits[split].lengths

    def batch(self, split: str, idx: list[int], layers: list[int], grad: bool = False) -> tuple[list[Tensor], Tensor]:
        arr = self.splits[split]
        lens = arr.lengths[idx]
        out = np.empty((len(layers), int(lens.sum()), self.hidden_size), dtype=np.float32)
        pos = 0
        for i, n in zip(idx, lens.tolist()):
            a = int(arr.offsets[i])
            for j, layer in enumerate(layers):
                out[j, pos: pos + n] = arr.hidden[layer, a: a + n]  # float16 -> float32 on copy
            pos += n
        return list(torch.from_numpy(out).unbind(0)), torch.from_numpy(lens.astype(np.int64))


class LiveSource:
    """Runs the upstream on the audio of every batch (what s3prl does each epoch; also fine-tuning).

    Waveforms are memoised after the first read so that repeated epochs measure the model, not the disk.
    """

    def __init__(self, upstream: Upstream, corpus: Corpus, utts: dict[str, list[Utterance]],
                 device: torch.device | str = "cpu") -> None:
        self.upstream = upstream
        self.corpus = corpus
        self.utts = utts
        self.device = torch.device(device)
        self.num_hidden_states = upstream.num_hidden_states
        self.hidden_size = upstream.hidden_size
        self._wavs: dict[tuple[str, int], Tensor] = {}

    def lengths(self, split: str) -> np.ndarray:
        cfg = self.upstream.feature_cfg
        return np.array([cfg.num_frames(round(u.num_samples * SAMPLE_RATE / u.sample_rate)) for u in self.utts[split]],
                        dtype=np.int64)

    def wav(self, split: str, i: int) -> Tensor:
        key = (split, i)
        if key not in self._wavs:
            self._wavs[key] = load_audio(self.corpus.audio_path(self.utts[split][i]), self.upstream.sample_rate)
        return self._wavs[key]

    def batch(self, split: str, idx: list[int], layers: list[int], grad: bool = False) -> tuple[list[Tensor], Tensor]:
        wavs = [self.wav(split, i) for i in idx]
        wav_lengths = torch.tensor([len(w) for w in wavs], dtype=torch.long)
        padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True).to(self.device)  # (B, S)
        with torch.set_grad_enabled(grad):
            hidden, lengths = self.upstream(padded, wav_lengths.to(self.device))
            valid = torch.arange(hidden[0].shape[1], device=lengths.device)[None, :] < lengths[:, None]  # (B, T)
            return [hidden[k][valid] for k in layers], lengths.cpu()  # (sum of lengths, D): padding dropped
