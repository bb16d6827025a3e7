"""Where a probe gets hidden states: stored arrays (the feature cache) or the upstream run live on audio."""
from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from core.audio import load_audio
from core.frames import FrameRule
from corpora.manifest import Corpus, Utterance
from downstream.data import flat_rows
from downstream.heads import Whitening
from upstream.interface import Upstream


def frame_counts(rule: FrameRule, utts: list[Utterance]) -> np.ndarray:
    """(n_utts,) frames each utterance gives under `rule` (from the manifest's sample counts, resampled to the
    upstream's rate as core.audio.load_audio does)."""
    return np.array([rule.num_frames_of(u.num_samples, u.sample_rate) for u in utts], dtype=np.int64)


class FeatureSource(Protocol):
    num_hidden_states: int  # the upstream's
    hidden_size: int
    layers: tuple[int, ...]  # the hidden-state indices `examples` and `whitening` hold, in order

    def position(self, layer: int) -> int:
        """Where hidden state `layer` is in `examples(split)` and `whitening()`; ValueError if it is not there."""

    def lengths(self, split: str) -> np.ndarray:
        """(n_utts,) valid frames per utterance of `split`, in manifest order."""

    def examples(self, split: str) -> Tensor:
        """Frozen probes: the split's examples (len(layers), N, D) float32 in memory, whitened (frames or utterance
        means)."""

    def whitening(self) -> list[Whitening]:
        """The per-hidden-state transforms `examples` applied (fitted on the train split's examples), one per
        `layers`."""

    def batch(self, split: str, idx: list[int], layers: list[int], grad: bool = False,
              select: np.ndarray | None = None) -> tuple[Tensor, Tensor]:
        """Hidden states `layers` of utterances `idx`, FLAT and stacked: float32 (len(layers), sum of lengths, D)
        holding the valid frames of each utterance in `idx` order (no padding at all), and lengths (B,).
        `select`: only these positions of the flat batch (frame-level training subsamples frames before
        reading them); the lengths still describe the whole batch."""


def whitened(x: Tensor, transforms: list[Whitening]) -> Tensor:
    """x (L, N, D) float32 with hidden state l whitened by transforms[l], in place."""
    for k, w in enumerate(transforms):
        w.apply_(x[k])
    return x


def _position(held: tuple[int, ...], layer: int, num_hidden_states: int) -> int:
    try:
        return held.index(layer)
    except ValueError:
        raise ValueError(f"hidden state {layer} of {num_hidden_states} is not in these features (they hold "
                         f"{', '.join(map(str, held))}): a feature cache extracted for other modes") from None


@dataclass(frozen=True)
class SplitArrays:
    """One split's hidden states stored flat: hidden (len(held), total_frames, D), utterance i at
    offsets[i]:offsets[i+1]; hidden[j] is the upstream's hidden state held[j]."""

    hidden: np.ndarray  # usually a float16 np.memmap: never loaded whole
    offsets: np.ndarray  # (n_utts + 1,) int64
    layers: tuple[int, ...] | None = None  # the hidden-state indices stored, in order; None: all of them
    num_hidden_states: int | None = None  # the upstream's count; None: hidden.shape[0]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def held(self) -> tuple[int, ...]:
        return tuple(range(self.hidden.shape[0])) if self.layers is None else tuple(self.layers)

    @property
    def total_hidden_states(self) -> int:
        return int(self.hidden.shape[0]) if self.num_hidden_states is None else int(self.num_hidden_states)


class ArraySource:
    """Reads batches from stored arrays; only the requested layers and frames are touched.

    A batch is one vectorised gather per layer (torch index_select on the float16 array, then one
    float32 conversion), never a per-utterance Python loop: that loop and numpy's slow float16
    conversion were most of a cached probe run's time.

    `layers`: the hidden states the probes read (default: every one the arrays hold); only those are put in memory
    by `examples`, so a last-layer sweep served from an all-layers cache holds one hidden state, not all.
    """

    def __init__(self, splits: dict[str, SplitArrays], layers: tuple[int, ...] | list[int] | None = None) -> None:
        if not splits:
            raise ValueError("ArraySource needs at least one split")
        first = next(iter(splits.values()))
        self.splits = splits
        self.num_hidden_states = first.total_hidden_states
        self.hidden_size = int(first.hidden.shape[2])
        self.layers = first.held if layers is None else tuple(layers)
        for arrays in splits.values():
            for k in self.layers:
                _position(arrays.held, k, self.num_hidden_states)
        self._tensors: dict[str, Tensor] = {}
        self._resident: dict[str, Tensor] = {}
        self._transforms: list[Whitening] | None = None
        self._lock = threading.Lock()

    def lengths(self, split: str) -> np.ndarray:
        return self.splits[split].lengths

    def position(self, layer: int) -> int:
        return _position(self.layers, layer, self.num_hidden_states)

    def stored(self, split: str, layer: int) -> Tensor:
        """Hidden state `layer` of the split, (total_frames, D) as stored (a view: no copy, no load)."""
        arrays = self.splits[split]
        return self.tensor(split)[_position(arrays.held, layer, self.num_hidden_states)]

    def examples(self, split: str) -> Tensor:
        """The split's (len(layers), total_frames, D) hidden states as float32 IN MEMORY, each hidden state whitened
        with the statistics of the train split's frames (`whitening`), computed once and shared by every frozen probe
        of this upstream: their batches and evaluations are then plain indexing."""
        with self._lock:  # probes in parallel threads share one copy
            if split not in self._resident:
                n = int(self.splits[split].offsets[-1])
                x = torch.empty(len(self.layers), n, self.hidden_size, dtype=torch.float32)
                for j, k in enumerate(self.layers):
                    x[j].copy_(self.stored(split, k))
                self._resident[split] = whitened(x, self._whitening())
        return self._resident[split]

    def whitening(self) -> list[Whitening]:
        """One transform per hidden state of `layers`, fitted on the train split's frames (features only, no labels)."""
        with self._lock:
            return self._whitening()

    def _whitening(self) -> list[Whitening]:
        if self._transforms is None:
            self._transforms = [Whitening(self.hidden_size).fit(self.stored("train", k)) for k in self.layers]
        return self._transforms

    def tensor(self, split: str) -> Tensor:
        """The split's stored (len(held), total_frames, D) array as a tensor sharing its memory (no copy, no load)."""
        if split not in self._tensors:
            hidden = self.splits[split].hidden
            with warnings.catch_warnings():  # a read-only memmap: torch warns that writes would be undefined;
                warnings.simplefilter("ignore", UserWarning)  # nothing here ever writes through this view
                self._tensors[split] = torch.from_numpy(hidden)
        return self._tensors[split]

    def batch(self, split: str, idx: list[int], layers: list[int], grad: bool = False,
              select: np.ndarray | None = None) -> tuple[Tensor, Tensor]:
        rows = flat_rows(self.splits[split].offsets, idx)
        if select is not None:
            rows = rows[select]
        rows_t = torch.from_numpy(rows)
        out = torch.empty(len(layers), len(rows), self.hidden_size, dtype=torch.float32)
        for j, layer in enumerate(layers):
            out[j] = self.stored(split, layer).index_select(0, rows_t)  # float16 gather, float32 on copy
        return out, torch.from_numpy(self.splits[split].lengths[idx].astype(np.int64))


class PooledSource:
    """Per-utterance means of every hidden state of an ArraySource: one row per utterance.

    For mean-pooling probes (speaker_utterance) this is exact, not an approximation: the mean over frames
    commutes with the fixed layer choice and with the (linear) weighted sum, so the probe computes the
    same logits as on frames while reading 1 row per utterance instead of ~300. Batches therefore have
    lengths of 1 per utterance; `lengths()` still reports the frame counts (for batching and accounting).
    """

    def __init__(self, source: ArraySource, chunk_frames: int = 1 << 16) -> None:
        self.frames = source
        self.num_hidden_states = source.num_hidden_states
        self.hidden_size = source.hidden_size
        self.layers = source.layers
        self.chunk_frames = chunk_frames
        self._means: dict[str, Tensor] = {}
        self._examples: dict[str, Tensor] = {}
        self._transforms: list[Whitening] | None = None

    def lengths(self, split: str) -> np.ndarray:
        return self.frames.lengths(split)

    def position(self, layer: int) -> int:
        return self.frames.position(layer)

    def means(self, split: str) -> Tensor:
        """(len(layers), n_utts, D) float32 per-utterance means, computed once in chunks of whole utterances."""
        if split not in self._means:
            offsets = self.frames.splits[split].offsets
            hidden = [self.frames.stored(split, k) for k in self.layers]
            L, n = len(hidden), len(offsets) - 1
            out = torch.zeros(L, n, self.hidden_size, dtype=torch.float32)
            lens = torch.from_numpy(np.diff(offsets))
            seg = torch.repeat_interleave(torch.arange(n), lens)  # utterance of every frame
            a = 0
            while a < n:
                b = int(np.searchsorted(offsets, offsets[a] + self.chunk_frames, side="right")) - 1
                b = min(n, max(b, a + 1))  # at least one utterance per chunk
                lo, hi = int(offsets[a]), int(offsets[b])
                for layer in range(L):
                    out[layer].index_add_(0, seg[lo:hi], hidden[layer][lo:hi].float())
                a = b
            self._means[split] = out / lens.clamp_min(1).to(torch.float32)[None, :, None]
        return self._means[split]

    def examples(self, split: str) -> Tensor:
        """(len(layers), n_utts, D): the examples of an utterance-level probe are the utterances' means, each hidden
        state standardised (per dimension, not decorrelated: downstream.heads.Whitening) with the statistics of the
        train split's means (`whitening`)."""
        if split not in self._examples:
            self._examples[split] = whitened(self.means(split).clone(), self.whitening())
        return self._examples[split]

    def whitening(self) -> list[Whitening]:
        if self._transforms is None:
            self._transforms = [Whitening(self.hidden_size, decorrelate=False).fit(x) for x in self.means("train")]
        return self._transforms

    def batch(self, split: str, idx: list[int], layers: list[int], grad: bool = False,
              select: np.ndarray | None = None) -> tuple[Tensor, Tensor]:
        if select is not None:
            raise ValueError("PooledSource has one row per utterance: frame selection does not apply")
        means, rows = self.means(split), torch.as_tensor(idx, dtype=torch.long)
        return means[[self.position(k) for k in layers]].index_select(1, rows), torch.ones(len(idx), dtype=torch.long)


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
        self.layers = tuple(range(upstream.num_hidden_states))
        self._wavs: dict[tuple[str, int], Tensor] = {}

    def position(self, layer: int) -> int:
        return _position(self.layers, layer, self.num_hidden_states)

    def lengths(self, split: str) -> np.ndarray:
        return frame_counts(self.upstream.frame_rule, self.utts[split])

    def wav(self, split: str, i: int) -> Tensor:
        key = (split, i)
        if key not in self._wavs:
            self._wavs[key] = load_audio(self.corpus.audio_path(self.utts[split][i]), self.upstream.sample_rate)
        return self._wavs[key]

    def batch(self, split: str, idx: list[int], layers: list[int], grad: bool = False,
              select: np.ndarray | None = None) -> tuple[Tensor, Tensor]:
        wavs = [self.wav(split, i) for i in idx]
        wav_lengths = torch.tensor([len(w) for w in wavs], dtype=torch.long)
        padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True).to(self.device)  # (B, S)
        with torch.set_grad_enabled(grad):
            hidden, lengths = self.upstream(padded, wav_lengths.to(self.device))
            valid = torch.arange(hidden[0].shape[1], device=lengths.device)[None, :] < lengths[:, None]  # (B, T)
            out = torch.stack([hidden[k][valid] for k in layers])  # (layers, sum of lengths, D): padding dropped
            if select is not None:
                out = out.index_select(1, torch.from_numpy(select).to(out.device))
            return out, lengths.cpu()
