"""A tiny generated corpus for the probe, cache and harness tests (tones per phone, timbre per speaker)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from corpora.manifest import Corpus, Segment, Utterance, load_corpus, write_corpus_info, write_manifest

PHONES = ("sil", "a", "b", "c")
SR = 16_000


def make_tiny_corpus(root: Path, n_speakers: int = 4, per_speaker: dict[str, int] | None = None,
                     seed: int = 0) -> Corpus:
    """Each phone is a tone, each speaker a harmonic colour + level; utterances 0.3-0.6 s, 16 kHz."""
    per_speaker = per_speaker or {"train": 6, "dev": 2, "test": 2}
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "wav").mkdir(exist_ok=True)
    speakers = [f"spk{i}" for i in range(n_speakers)]
    for split, n_per in per_speaker.items():
        utts = []
        for si, spk in enumerate(speakers):
            for j in range(n_per):
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
                utts.append(Utterance(uid, f"wav/{uid}.wav", SR, pos, spk, split, tuple(segs)))  # type: ignore[arg-type]
        write_manifest(root / f"{split}.jsonl", utts)
    write_corpus_info(root, "tiny", list(PHONES), speakers, {"generator": "tests.test_probes_corpus"})
    return load_corpus(root)


def test_tiny_corpus_loads(tmp_path: Path) -> None:
    c = make_tiny_corpus(tmp_path / "c", n_speakers=2, per_speaker={"train": 2, "dev": 1, "test": 1})
    assert len(c.utterances("train")) == 4 and c.speakers == ("spk0", "spk1")
    assert c.audio_path(c.utterances("dev")[0]).is_file()
