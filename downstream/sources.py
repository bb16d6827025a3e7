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
from downstream.heads import Whitening
from upstream.interface import Upstream


def frame_counts(rule: FrameRule, utts: list[Utterance]) -> np.ndarray:
    """(n_utts,) frames each utterance gives under `rule` (from the manifest's sample counts, resampled to the
    upstream's rate as core.audio.load_audio does)."""
    return np.array([rule.num_frames_of(u.num_samples, u.sample_rate) for u in utts], dtype=np.int64)


class FeatureSource(Protocol):
    num_hidden_states: int  # the upstream's
    hidden_size: int
    layers: tuple[int, ...]  # the hidden-state indices held, in order

    def position(self, layer: int) -> int:
        """Where hidden state `layer` is in what the source holds; ValueError if it is not there."""

    def lengths(self, split: str) -> np.ndarray:
        """(n_utts,) valid frames per utterance of `split`, in manifest order."""


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

    def read(self, j: int, a: int, b: int) -> np.ndarray:
        """Rows a:b of stored hidden state j (its position in `held`), (b - a, D) as stored, in a fresh buffer."""
        return self.read_runs(j, [(a, b)])

    def read_runs(self, j: int, runs: list[tuple[int, int]]) -> np.ndarray:
        """The rows of every run (a, b) of stored hidden state j, one after another, (sum of b - a, D) as stored, in
        one fresh buffer.

        A memory-mapped cache file is read with positioned reads into that buffer (the file opened once for all the
        runs: a scattered block of the probes' feed is a hundred short runs), not through the map: pages touched
        through a map count in the process's resident memory until it is unmapped, so a pass over a 100-hour cache
        would hold all of it. Reads go through the page cache like any file read."""
        h = self.hidden
        d = h.shape[2]
        out = np.empty((sum(b - a for a, b in runs), d), dtype=h.dtype)
        if isinstance(h, np.memmap) and h.filename is not None:
            n, size = h.shape[1], d * h.dtype.itemsize
            flat = out.reshape(-1).view(np.uint8)
            at = 0
            with open(h.filename, "rb", buffering=0) as f:
                for a, b in runs:
                    want = (b - a) * size
                    f.seek(h.offset + (j * n + a) * size)
                    got = f.readinto(memoryview(flat[at: at + want]))
                    if got != want:
                        raise OSError(f"{h.filename}: read {got} of {want} bytes at row {a} of hidden state {j}")
                    at += want
            return out
        at = 0
        for a, b in runs:
            out[at: at + b - a] = h[j, a:b]
            at += b - a
        return out


class ArraySource:
    """Reads stored arrays (the feature cache, or arrays in memory with --no-cache) in chunks; only the requested
    layers and rows are touched, and nothing is kept: a frozen probe streams what it needs (downstream.feeds).

    `layers`: the hidden states the probes read (default: every one the arrays hold).
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
        self._transforms: list[Whitening] | None = None
        self._lock = threading.Lock()
        self._train_of: ArraySource | None = None  # the source whose train split (and whitening) this one shares

    def with_splits(self, splits: dict[str, SplitArrays]) -> ArraySource:
        """This source with other evaluation splits beside its train split (a task whose dev and test read other
        utterances: speaker verification's trial utterances); the whitening, fitted on train, is this one's."""
        if "train" in splits:
            raise ValueError("with_splits keeps the train split (and its whitening); give the other splits only")
        out = ArraySource({**self.splits, **splits}, self.layers)
        out._train_of = self if self._train_of is None else self._train_of
        return out

    def lengths(self, split: str) -> np.ndarray:
        return self.splits[split].lengths

    def position(self, layer: int) -> int:
        return _position(self.layers, layer, self.num_hidden_states)

    def read(self, split: str, layer: int, a: int, b: int) -> Tensor:
        """Rows a:b of hidden state `layer` of the split: (b - a, D) as stored (float16 for the cache), a fresh
        tensor (SplitArrays.read: never through the memory map)."""
        return self.read_runs(split, layer, [(a, b)])

    def read_runs(self, split: str, layer: int, runs: list[tuple[int, int]]) -> Tensor:
        """The rows of every run (a, b) of hidden state `layer` of the split, one after another, as stored, in one
        fresh tensor (SplitArrays.read_runs)."""
        arrays = self.splits[split]
        return torch.from_numpy(arrays.read_runs(_position(arrays.held, layer, self.num_hidden_states), runs))

    def chunks(self, split: str, layer: int, chunk_rows: int = 1 << 16):
        """Every row of hidden state `layer` of the split, in order, as (start row, (n, D) tensor) chunks."""
        total = int(self.splits[split].offsets[-1])
        for a in range(0, total, chunk_rows):
            yield a, self.read(split, layer, a, min(total, a + chunk_rows))

    def whitening(self) -> list[Whitening]:
        """One transform per hidden state of `layers`, fitted on the train split's frames (features only, no labels)
        in one streaming pass; computed once and shared by every frozen probe of this upstream."""
        if self._train_of is not None:
            return self._train_of.whitening()
        with self._lock:  # probes in parallel threads share one fit
            if self._transforms is None:
                self._transforms = [Whitening(self.hidden_size).fit_chunks(x for _, x in self.chunks("train", k))
                                    for k in self.layers]
            return self._transforms

    def whitened(self, split: str, layer: int) -> Tensor:
        """(total_frames, D) float32 whitened frames of hidden state `layer`, IN MEMORY: for the convergence
        certificate's full-batch references, not for probe training (which streams)."""
        w = self.whitening()[self.position(layer)]
        return torch.cat([w(c.float()) for _, c in self.chunks(split, layer)])

    def batch(self, split: str, idx: list[int], layers: list[int]) -> tuple[Tensor, Tensor]:
        """Hidden states `layers` of utterances `idx`, flat: float32 (len(layers), sum of lengths, D), lengths (B,)."""
        arrays = self.splits[split]
        parts = [[self.read(split, k, int(arrays.offsets[i]), int(arrays.offsets[i + 1])) for i in idx] for k in layers]
        out = torch.stack([torch.cat(p).float() for p in parts])
        return out, torch.from_numpy(arrays.lengths[idx].astype(np.int64))


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
            L, n = len(self.layers), len(offsets) - 1
            out = torch.zeros(L, n, self.hidden_size, dtype=torch.float32)
            lens = torch.from_numpy(np.diff(offsets))
            seg = torch.repeat_interleave(torch.arange(n), lens)  # utterance of every frame
            a = 0
            while a < n:
                b = int(np.searchsorted(offsets, offsets[a] + self.chunk_frames, side="right")) - 1
                b = min(n, max(b, a + 1))  # at least one utterance per chunk
                lo, hi = int(offsets[a]), int(offsets[b])
                for j, k in enumerate(self.layers):
                    out[j].index_add_(0, seg[lo:hi], self.frames.read(split, k, lo, hi).float())
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

    def rows(self) -> ArraySource:
        """The raw means as rows, one per utterance (offsets 0..n): what a minibatch probe reads (downstream.feeds);
        `whitening()` is the standardisation that goes with them."""
        splits = {}
        for s in self.frames.splits:
            m = self.means(s)
            splits[s] = SplitArrays(m.numpy(), np.arange(m.shape[1] + 1, dtype=np.int64), layers=self.layers,
                                    num_hidden_states=self.num_hidden_states)
        return ArraySource(splits, self.layers)


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

    def batch(self, split: str, idx: list[int], layers: list[int], grad: bool = False) -> tuple[Tensor, Tensor]:
        """Hidden states `layers` of utterances `idx`, FLAT and stacked: float32 (len(layers), sum of lengths, D)
        holding the valid frames of each utterance in `idx` order (no padding at all), and lengths (B,)."""
        wavs = [self.wav(split, i) for i in idx]
        wav_lengths = torch.tensor([len(w) for w in wavs], dtype=torch.long)
        padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True).to(self.device)  # (B, S)
        with torch.set_grad_enabled(grad):
            hidden, lengths = self.upstream(padded, wav_lengths.to(self.device))
            valid = torch.arange(hidden[0].shape[1], device=lengths.device)[None, :] < lengths[:, None]  # (B, T)
            out = torch.stack([hidden[k][valid] for k in layers])  # (layers, sum of lengths, D): padding dropped
            return out, lengths.cpu()
