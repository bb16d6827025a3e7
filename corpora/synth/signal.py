"""Signal side of the built-in corpus: event alignments, the silence fix, resampling, channel and noise.

Order matters (libespeak-ng 1.52 places stop closures and pauses at the end of the previous phone): digital-silence
runs are relabelled on the CLEAN synthesiser output,
before any filtering or noise makes them non-zero.
"""
from __future__ import annotations

import numpy as np
from scipy import signal as sps

from corpora.synth.phones import SIL, to_class

SILENCE_RUN_S = 0.015  # runs of exact zeros at least this long are silence, wherever eSpeak put them


def zero_runs(wav: np.ndarray, min_len: int) -> list[tuple[int, int]]:
    """[(start, end)) of runs of exact zeros in `wav` at least `min_len` samples long."""
    z = np.concatenate(([0], (wav == 0).astype(np.int8), [0]))
    edges = np.flatnonzero(np.diff(z))
    runs = edges.reshape(-1, 2)
    return [(int(s), int(e)) for s, e in runs if e - s >= min_len]


def event_segments(wav: np.ndarray, events: list[tuple[str, int]], sr: int) -> list[tuple[str, int, int]]:
    """Phoneme events -> contiguous (class, start, end) segments covering all of `wav`, with the silence fix.

    Phoneme i spans [sample_i, sample_{i+1}); audio before the first event is silence. Then every run of
    digital silence >= 15 ms becomes `sil`, because eSpeak renders stop closures and pauses inside the
    PREVIOUS phoneme's interval. Adjacent segments of one class are merged.
    """
    n = len(wav)
    labels = np.full(n, -1, dtype=np.int32)
    names: list[str] = [SIL]
    index = {SIL: 0}
    pts = sorted((min(max(s, 0), n), to_class(p)) for p, s in events)
    if not pts or pts[0][0] > 0:
        pts.insert(0, (0, SIL))
    for k, (start, cls) in enumerate(pts):
        end = pts[k + 1][0] if k + 1 < len(pts) else n
        if end > start:
            labels[start:end] = index.setdefault(cls, len(index))
    names = list(index)
    for s, e in zero_runs(wav, int(round(SILENCE_RUN_S * sr))):
        labels[s:e] = 0
    segs: list[tuple[str, int, int]] = []
    change = np.flatnonzero(np.diff(labels)) + 1
    bounds = np.concatenate(([0], change, [n])).astype(int)
    for s, e in zip(bounds[:-1], bounds[1:]):
        if e > s:
            segs.append((names[labels[s]], int(s), int(e)))
    return segs


def resample_segments(segs: list[tuple[str, int, int]], sr_in: int, sr_out: int, n_out: int) -> list[tuple[str, int, int]]:
    """Move boundaries to another rate (rounded), keeping the segments contiguous and dropping empty ones."""
    out = []
    for p, s, e in segs:
        s2 = min(round(s * sr_out / sr_in), n_out)
        e2 = min(round(e * sr_out / sr_in), n_out)
        if e2 > s2:
            out.append((p, s2, e2))
    if out:
        out[-1] = (out[-1][0], out[-1][1], n_out)  # rounding must not leave the last samples unlabelled
    return out


def resample(wav: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    g = np.gcd(sr_in, sr_out)
    return sps.resample_poly(wav, sr_out // g, sr_in // g).astype(np.float32)


def random_channel(wav: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """A random recording channel: band limits plus one peaking resonance, drawn per utterance.

    Drawn per UTTERANCE (not per speaker) so the channel is nuisance, not a speaker cue.
    """
    lo = rng.uniform(60, 300)
    hi = rng.uniform(3400, 7600)
    sos = sps.butter(2, [lo, hi], btype="bandpass", fs=sr, output="sos")
    y = sps.sosfilt(sos, wav)
    f0, gain_db, q = rng.uniform(300, 3000), rng.uniform(-9, 9), rng.uniform(0.7, 2.5)
    b, a = _peaking(f0, gain_db, q, sr)
    return sps.lfilter(b, a, y).astype(np.float32)


def _peaking(f0: float, gain_db: float, q: float, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """RBJ audio-EQ-cookbook peaking biquad."""
    a_ = 10 ** (gain_db / 40)
    w = 2 * np.pi * f0 / sr
    alpha = np.sin(w) / (2 * q)
    b = np.array([1 + alpha * a_, -2 * np.cos(w), 1 - alpha * a_])
    a = np.array([1 + alpha / a_, -2 * np.cos(w), 1 - alpha / a_])
    return b / a[0], a / a[0]


def add_noise(wav: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Additive noise (white to nearly brown: a random one-pole colouring) at `snr_db` relative to the speech power."""
    pole = rng.uniform(0.0, 0.98)  # 0 = white; near 1 = energy piled at low frequencies (hum/rumble-like)
    noise = sps.lfilter([1.0], [1.0, -pole], rng.standard_normal(len(wav)))
    active = np.abs(wav) > 1e-4 * (np.abs(wav).max() + 1e-12)
    p_sig = float(np.mean(wav[active] ** 2)) if active.any() else 1e-8
    p_noise = float(np.mean(noise ** 2)) + 1e-20
    noise *= np.sqrt(p_sig / p_noise / 10 ** (snr_db / 10))
    return (wav + noise).astype(np.float32)


def to_int16(wav: np.ndarray, peak_dbfs: float) -> np.ndarray:
    """Scale to the given peak level and quantise (the level is drawn per utterance by the caller)."""
    peak = float(np.abs(wav).max()) or 1.0
    y = wav * (10 ** (peak_dbfs / 20) / peak)
    return np.clip(np.round(y * 32767), -32768, 32767).astype(np.int16)
