"""Tiny generated 'speech-like' corpora (harmonic tones with moving pitch, formant-ish colouring, noise) for tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from corpora.manifest import Utterance, write_corpus_info, write_manifest


def harmonic_utterance(rng: np.random.Generator, seconds: float, sr: int = 16_000,
                       segment: tuple[float, float] = (0.25, 0.6)) -> np.ndarray:
    """Voiced segments of a harmonic series whose pitch and spectral tilt drift, separated by noise bursts."""
    n = int(seconds * sr)
    t = np.arange(n) / sr
    out = np.zeros(n)
    pos = 0
    while pos < n:
        seg = int(rng.uniform(*segment) * sr)
        end = min(n, pos + seg)
        tt = t[pos:end]
        if rng.random() < 0.9:
            f0 = rng.uniform(90, 260) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(1, 4) * tt))
            phase = 2 * np.pi * np.cumsum(f0) / sr
            formant = rng.uniform(300, 2500)
            for k in range(1, 16):
                amp = np.exp(-((k * f0.mean() - formant) ** 2) / (2 * 400.0**2)) + 0.05 / k
                out[pos:end] += amp * np.sin(k * phase)
        else:
            out[pos:end] += rng.normal(0, 0.3, end - pos)
        pos = end
    out += rng.normal(0, 0.005, n)
    return (0.3 * out / (np.abs(out).max() + 1e-9)).astype(np.float32)


def make_tiny_corpus(root: str | Path, n_utts: int = 24, seconds: tuple[float, float] = (1.0, 2.5), seed: int = 0,
                     sr: int = 16_000, segment: tuple[float, float] = (0.25, 0.6)) -> Path:
    """Write a prepared corpus (pretrain split only, plus corpus.json last) of generated audio under `root`."""
    root = Path(root)
    (root / "wav").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    utts = []
    for i in range(n_utts):
        wav = harmonic_utterance(rng, rng.uniform(*seconds), sr, segment)
        rel = f"wav/u{i:04d}.wav"
        sf.write(root / rel, wav, sr, subtype="FLOAT")
        utts.append(Utterance(id=f"u{i:04d}", path=rel, sample_rate=sr, num_samples=len(wav),
                              speaker=f"s{i % 4}", split="pretrain"))
    write_manifest(root / "pretrain.jsonl", utts)
    write_corpus_info(root, "tiny-harmonic", phones=[], speakers=[], info={"generator": "pretrain.synthetic", "seed": seed})
    return root
