"""Synthesis of one speaker's utterances, run in its own process (the library keeps state between utterances)."""
from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from corpora.synth import signal
from corpora.synth.espeak import PARAM_PITCH, PARAM_RANGE, PARAM_RATE, ESpeak
from corpora.synth.text import sentence
from corpora.synth.voices import Voice, sample_voice, voice_file_text

OUT_SR = 16_000


@dataclass(frozen=True)
class SpeakerTask:
    speaker: str
    seed: int
    plan: tuple[tuple[str, int, float], ...]  # (split, n utterances, or 0 and a target of seconds)
    stage: str  # staging corpus directory; audio goes under audio/<speaker>/
    audio_format: str  # "flac" | "wav"
    snr_db: tuple[float, float]
    rate_jitter: float
    pitch_jitter: int


def speaker_voice(speaker: str, seed: int) -> tuple[ESpeak, Voice, random.Random, np.random.Generator]:
    """One generated voice loaded into a fresh eSpeak NG and seeded: (the engine, the voice, the python and numpy
    generators that drew it and go on drawing the speaker's jitters). Once per process (libespeak-ng keeps state)."""
    r = random.Random(seed)
    rng = np.random.default_rng(seed)
    voice = sample_voice(speaker, r)
    es = ESpeak()
    with tempfile.TemporaryDirectory() as tmp:
        vf = Path(tmp) / speaker
        vf.write_text(voice_file_text(voice))
        es.set_voice_file(vf)
    es.set_seed(seed)
    return es, voice, r, rng


def synth_speaker(task: SpeakerTask) -> list[dict]:
    """Synthesise every utterance of one speaker; returns manifest records (paths relative to the corpus)."""
    es, voice, r, rng = speaker_voice(task.speaker, task.seed)
    out_dir = Path(task.stage) / "audio" / task.speaker
    out_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    k = 0
    for split, count, target_s in task.plan:
        done_s, n = 0.0, 0
        while (n < count) if count else (done_s < target_s):
            # pretraining utterances are longer (two sentences): the masked model trains on crops of several seconds
            text = sentence(r) if split != "pretrain" else f"{sentence(r)} {sentence(r)}"
            es.set_param(PARAM_RATE, round(voice.rate_wpm * r.uniform(1 - task.rate_jitter, 1 + task.rate_jitter)))
            es.set_param(PARAM_PITCH, 50 + r.randint(-task.pitch_jitter, task.pitch_jitter))
            es.set_param(PARAM_RANGE, r.randint(30, 80))
            pcm22, events = es.synth(text)
            segs = signal.event_segments(pcm22, events, es.sample_rate)  # on the clean output: silence fix first
            x = signal.resample(pcm22.astype(np.float32) / 32768.0, es.sample_rate, OUT_SR)
            segs = signal.resample_segments(segs, es.sample_rate, OUT_SR, len(x))
            x = signal.random_channel(x, OUT_SR, rng)
            x = signal.add_noise(x, float(rng.uniform(*task.snr_db)), rng)
            pcm = signal.to_int16(x, float(rng.uniform(-12.0, -1.0)))
            uid = f"{task.speaker}-{k:04d}"
            rel = Path("audio") / task.speaker / f"{uid}.{task.audio_format}"
            sf.write(str(Path(task.stage) / rel), pcm, OUT_SR, format=task.audio_format.upper(), subtype="PCM_16")
            records.append({"id": uid, "path": rel.as_posix(), "sample_rate": OUT_SR, "num_samples": len(pcm),
                            "speaker": task.speaker, "split": split, "alignment": [list(s) for s in segs],
                            "text": text})
            k += 1
            n += 1
            done_s += len(pcm) / OUT_SR
    return records
