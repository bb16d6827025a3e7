"""Tiny generated corpora for tests: `make_tiny_corpus`, labelled probe splits (train / dev / test: tones per phone,
timbre per speaker) for the probe, cache and harness tests, and `make_pretrain_corpus`, a pretrain split of
'speech-like' audio (harmonic tones with moving pitch, formant-ish colouring, noise) for the pretraining tests."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import soundfile as sf

from corpora.manifest import Corpus, Segment, Utterance, load_corpus, write_corpus_info, write_manifest
from corpora.trials import make_trials, write_trials

PHONES = ("sil", "a", "b", "c")
SR = 16_000


def make_tiny_corpus(root: Path, n_speakers: int = 4, per_speaker: dict[str, int] | None = None,
                     seed: int = 0, trial_speakers: int = 0, trial_per_speaker: int = 3) -> Corpus:
    """Each phone is a tone, each speaker a harmonic colour + level; utterances 0.3-0.6 s, 16 kHz. With
    `trial_speakers`, held-out speakers (half for dev trials, half for test trials) and their trial list
    (corpora.trials), drawn after everything else: the splits are the same with or without them."""
    per_speaker = per_speaker or {"train": 6, "dev": 2, "test": 2}
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "wav").mkdir(exist_ok=True)
    speakers = [f"spk{i}" for i in range(n_speakers)]

    def utterance(split: str, si: int, j: int) -> Utterance:
        spk = f"spk{si}"
        segs, parts, pos = [], [], 0
        for _ in range(int(rng.integers(3, 6))):
            p = int(rng.integers(0, len(PHONES)))
            n = int(rng.integers(1000, 1800))
            t = np.arange(n) / SR
            f0 = 200.0 + 250.0 * p
            x = np.sin(2 * np.pi * f0 * t) + (0.2 + 0.2 * si) * np.sin(2 * np.pi * (2 + si) * f0 * t)
            x = 0.05 * x if p == 0 else x
            parts.append(x * (0.2 + 0.05 * si))
            segs.append(Segment(PHONES[p], pos, pos + n))
            pos += n
        wav = np.concatenate(parts) + 0.01 * rng.standard_normal(pos)
        uid = f"{split}-{spk}-{j}"
        sf.write(root / "wav" / f"{uid}.wav", wav.astype(np.float32), SR)
        return Utterance(uid, f"wav/{uid}.wav", SR, pos, spk, split, tuple(segs))  # type: ignore[arg-type]

    for split, n_per in per_speaker.items():
        utts = [utterance(split, si, j) for si in range(n_speakers) for j in range(n_per)]
        write_manifest(root / f"{split}.jsonl", utts)
    if trial_speakers:
        trial = [utterance("dev" if k < trial_speakers // 2 else "test", n_speakers + k, j)
                 for k in range(trial_speakers) for j in range(trial_per_speaker)]
        write_trials(root, trial, make_trials(trial, seed))
    write_corpus_info(root, "tiny", list(PHONES), speakers, {"generator": "tests.fixtures"})
    return load_corpus(root)


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


def make_pretrain_corpus(root: str | Path, n_utts: int = 24, seconds: tuple[float, float] = (1.0, 2.5), seed: int = 0,
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
    write_corpus_info(root, "tiny-harmonic", phones=[], speakers=[], info={"generator": "tests.fixtures", "seed": seed})
    return root


def perf_script(name: str) -> ModuleType:
    """The script perf/<name>.py loaded as a module (perf/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / "perf" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
