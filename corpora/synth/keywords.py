"""The built-in keyword corpus (`corpora prepare synth_keywords`): a small Speech Commands v1.0 look-alike.

The built-in synthesiser (eSpeak NG, generated voices, random channel and additive noise: corpora/synth) says the 10
keywords and a dozen other Speech Commands words (the `_unknown_` class), each from its TIMIT-39 phone sequence
below (eSpeak's phoneme input, not its spelling rules; every clip's phoneme events are checked against the
sequence), placed at a random offset in a 1-s 16 kHz clip. Seeded noise recordings play `_background_noise_`.
The clips are written as a Speech Commands folder (speech_commands/: one folder per word,
`<speaker>_nohash_<n>.wav`, validation_list.txt, testing_list.txt) and read by the Speech Commands reader
(corpora.speech_commands), which cuts the `_silence_` clips: the built-in corpus and a real one go through the same
code. Speakers are disjoint across train, dev and test; every class has the same count in each split.
A separate corpus (its own folder, data/synth_keywords), so the built-in `synth` corpus is untouched.
"""
from __future__ import annotations

import hashlib
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from scipy import signal as sps
from tqdm import tqdm

from core.config import config_from_dict, config_to_dict
from core.frames import SAMPLE_RATE
from core.io import atomic_write_text
from core.isolated import run_isolated
from corpora import build
from corpora.manifest import Corpus
from corpora.speech_commands import (BACKGROUND, CLASSES, TESTING_LIST, VALIDATION_LIST, WORDS, SpeechCommandsConfig,
                                     read_speech_commands)
from corpora.synth import signal
from corpora.synth.espeak import PARAM_PITCH, PARAM_RANGE, PARAM_RATE, ESpeak
from corpora.synth.phones import to_class
from corpora.synth.worker import speaker_voice

FORMAT_VERSION = 1  # bump when the generator's output changes for the same config
FOLDER = "speech_commands"  # the Speech Commands-shaped folder inside the corpus

# TIMIT-39 phones (corpora/synth/phones.py; ARPAbet with TIMIT's folds, e.g. ao -> aa) of General American
# pronunciations (CMUdict, stress dropped); the first vowel is the stressed one.
KEYWORD_PHONES: dict[str, tuple[str, ...]] = {
    "yes": ("y", "eh", "s"), "no": ("n", "ow"), "up": ("ah", "p"), "down": ("d", "aw", "n"),
    "left": ("l", "eh", "f", "t"), "right": ("r", "ay", "t"), "on": ("aa", "n"), "off": ("aa", "f"),
    "stop": ("s", "t", "aa", "p"), "go": ("g", "ow"),
}
# `_unknown_`: words of Speech Commands v1.0 that are not keywords
UNKNOWN_PHONES: dict[str, tuple[str, ...]] = {
    "bed": ("b", "eh", "d"), "bird": ("b", "er", "d"), "cat": ("k", "ae", "t"), "dog": ("d", "aa", "g"),
    "five": ("f", "ay", "v"), "house": ("hh", "aw", "s"), "nine": ("n", "ay", "n"), "seven": ("s", "eh", "v", "ah", "n"),
    "six": ("s", "ih", "k", "s"), "three": ("th", "r", "iy"), "wow": ("w", "aw"), "zero": ("z", "iy", "r", "ow"),
}
assert set(KEYWORD_PHONES) == set(WORDS)
# one eSpeak NG (en-us) phoneme mnemonic per TIMIT-39 phone; corpora.synth.phones maps each back to the same class
ESPEAK_OF: dict[str, str] = {
    "aa": "A:", "ae": "a", "ah": "V", "aw": "aU", "ay": "aI", "eh": "E", "er": "3:", "ey": "eI", "ih": "I",
    "iy": "i:", "ow": "oU", "oy": "OI", "uh": "U", "uw": "u:",
    "b": "b", "d": "d", "g": "g", "p": "p", "t": "t", "k": "k", "f": "f", "v": "v", "s": "s", "z": "z", "m": "m",
    "n": "n", "l": "l", "r": "r", "w": "w", "y": "j", "hh": "h", "th": "T", "dh": "D", "sh": "S", "ch": "tS",
    "jh": "dZ", "ng": "N",
}
VOWELS = frozenset({"aa", "ae", "ah", "aw", "ay", "eh", "er", "ey", "ih", "iy", "ow", "oy", "uh", "uw"})
NOISES = ("white_noise", "pink_noise", "brown_noise", "hum")  # the _background_noise_ recordings


def espeak_phonemes(phones: tuple[str, ...]) -> str:
    """eSpeak phoneme input for a TIMIT-39 sequence, stress on its first vowel: ("y", "eh", "s") -> "[[j'Es]]"."""
    out, stressed = [], False
    for p in phones:
        if p in VOWELS and not stressed:
            out.append("'")
            stressed = True
        out.append(ESPEAK_OF[p])
    return "[[" + "".join(out) + "]]"


@dataclass(frozen=True)
class SynthKeywordsConfig:
    """Size and difficulty of the built-in keyword corpus (the defaults build in about 10-20 s on 2 cores)."""

    seed: int = 0
    train_speakers: int = 12
    dev_speakers: int = 4
    test_speakers: int = 4
    repeats: int = 2  # clips of every keyword per speaker, and as many clips of unknown words
    noise_seconds: float = 30.0  # length of each background-noise recording
    snr_db: tuple[float, float] = (10.0, 30.0)
    rate_jitter: float = 0.12
    pitch_jitter: int = 20

    def __post_init__(self) -> None:
        for k in ("train_speakers", "dev_speakers", "test_speakers", "repeats"):
            if getattr(self, k) < 1:
                raise ValueError(f"SynthKeywordsConfig.{k} must be >= 1, got {getattr(self, k)}")
        if self.noise_seconds < 10:
            raise ValueError(f"SynthKeywordsConfig.noise_seconds must be >= 10 (each split cuts its silence from a "
                             f"tenth or more of every recording), got {self.noise_seconds}")
        if len(self.snr_db) != 2 or self.snr_db[0] > self.snr_db[1]:
            raise ValueError(f"SynthKeywordsConfig.snr_db must be (low, high), got {self.snr_db}")


@dataclass(frozen=True)
class KeywordSpeakerTask:
    speaker: str
    seed: int
    words: tuple[str, ...]  # the words this speaker says, in order (keywords and unknown words)
    folder: str  # the Speech Commands folder being written
    snr_db: tuple[float, float]
    rate_jitter: float
    pitch_jitter: int


def synth_keyword_speaker(task: KeywordSpeakerTask) -> list[str]:
    """Say every word of the task in one generated voice, one 1-s clip each; returns the clips' paths relative to
    the folder (`<word>/<speaker>_nohash_<n>.wav`). Runs in its own process (libespeak-ng keeps state)."""
    es, voice, r, rng = speaker_voice(task.speaker, task.seed)
    said: dict[str, int] = {}
    out = []
    for word in task.words:
        phones = KEYWORD_PHONES.get(word) or UNKNOWN_PHONES[word]
        es.set_param(PARAM_RATE, round(voice.rate_wpm * r.uniform(1 - task.rate_jitter, 1 + task.rate_jitter)))
        es.set_param(PARAM_PITCH, 50 + r.randint(-task.pitch_jitter, task.pitch_jitter))
        es.set_param(PARAM_RANGE, r.randint(30, 80))
        pcm22, events = es.synth(espeak_phonemes(phones), phonemes=True)
        got = tuple(to_class(p) for p, _ in events if not p.startswith("_"))
        if got != phones:
            raise ValueError(f"eSpeak said {word!r} as {got}, not its phones {phones}")
        x = signal.resample(pcm22.astype(np.float32) / 32768.0, es.sample_rate, SAMPLE_RATE)[:SAMPLE_RATE]
        clip = np.zeros(SAMPLE_RATE, np.float32)
        at = int(rng.integers(0, SAMPLE_RATE - len(x) + 1))
        clip[at:at + len(x)] = x
        clip = signal.random_channel(clip, SAMPLE_RATE, rng)
        clip = signal.add_noise(clip, float(rng.uniform(*task.snr_db)), rng)
        pcm = signal.to_int16(clip, float(rng.uniform(-12.0, -1.0)))
        k = said[word] = said.get(word, -1) + 1
        rel = f"{word}/{task.speaker}_nohash_{k}.wav"
        (Path(task.folder) / word).mkdir(parents=True, exist_ok=True)
        sf.write(str(Path(task.folder) / rel), pcm, SAMPLE_RATE, subtype="PCM_16")
        out.append(rel)
    return out


def noise_recording(kind: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """One seeded background-noise recording (int16): white, pink (1/f power), brown (1/f^2) or mains hum with a
    noise floor, at a random level."""
    n = int(seconds * SAMPLE_RATE)
    white = rng.standard_normal(n)
    if kind == "white_noise":
        x = white
    elif kind == "pink_noise":  # 1/f power: amplitude spectrum scaled by f^-1/2
        spec = np.fft.rfft(white)
        f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
        spec[1:] /= np.sqrt(f[1:])
        spec[0] = 0
        x = np.fft.irfft(spec, n)
    elif kind == "brown_noise":
        x = sps.lfilter([1.0], [1.0, -0.995], white)
    elif kind == "hum":
        t = np.arange(n) / SAMPLE_RATE
        f0 = rng.choice((50.0, 60.0))
        x = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi))
                for k in range(1, 8)) + 0.05 * white
    else:
        raise ValueError(f"unknown noise kind {kind!r}; valid: {NOISES}")
    return signal.to_int16(np.asarray(x, np.float32), float(rng.uniform(-30.0, -10.0)))


def speaker_name(seed: int, i: int) -> str:
    """An 8-hex-digit speaker id, as Speech Commands hashes its speakers."""
    return hashlib.sha1(f"{seed}/{i}".encode()).hexdigest()[:8]


def _tasks(cfg: SynthKeywordsConfig, folder: Path) -> tuple[list[KeywordSpeakerTask], dict[str, str]]:
    seeds = random.Random(cfg.seed)
    unknown = sorted(UNKNOWN_PHONES)
    tasks, split_of = [], {}
    plan = [("train", cfg.train_speakers), ("dev", cfg.dev_speakers), ("test", cfg.test_speakers)]
    i = 0
    for split, n in plan:
        for j in range(n):
            name = speaker_name(cfg.seed, i)
            # every keyword `repeats` times, and `repeats` unknown words, taken in turn across the split's speakers
            words = [w for w in WORDS for _ in range(cfg.repeats)]
            words += [unknown[(j * cfg.repeats + k) % len(unknown)] for k in range(cfg.repeats)]
            random.Random(f"{cfg.seed}/order/{name}").shuffle(words)
            tasks.append(KeywordSpeakerTask(speaker=name, seed=seeds.getrandbits(62), words=tuple(words),
                                            folder=str(folder), snr_db=tuple(cfg.snr_db), rate_jitter=cfg.rate_jitter,
                                            pitch_jitter=cfg.pitch_jitter))
            split_of[name] = split
            i += 1
    return tasks, split_of


def synth_keywords_config_dict(cfg: SynthKeywordsConfig) -> dict[str, Any]:
    return {**config_to_dict(cfg), "format_version": FORMAT_VERSION}


def prepare_synth_keywords(out_dir: str | Path, workers: int = 2, force: bool = False, progress: bool = True,
                           verify_audio: bool = True, **options: Any) -> Corpus:
    """Build (or load, when already built with the same options) the synthetic keyword corpus in `out_dir`."""
    cfg = config_from_dict(SynthKeywordsConfig, options, "synth_keywords options")
    out_dir = Path(out_dir)
    config = synth_keywords_config_dict(cfg)
    done = build.existing(out_dir, "synth_keywords", config, force)
    if done is not None:
        return done
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    t0 = time.time()
    stage = build.staging_dir(out_dir)
    folder = stage / FOLDER
    try:
        (folder / BACKGROUND).mkdir(parents=True)
        noise_rng = np.random.default_rng([cfg.seed, 0xB6])
        for kind in NOISES:
            sf.write(str(folder / BACKGROUND / f"{kind}.wav"), noise_recording(kind, cfg.noise_seconds, noise_rng),
                     SAMPLE_RATE, subtype="PCM_16")
        tasks, split_of = _tasks(cfg, folder)
        clips: dict[str, list[str]] = {}
        finished = run_isolated(synth_keyword_speaker, tasks, [f"keyword speaker {t.speaker}" for t in tasks], workers)
        for i, rels in tqdm(finished, total=len(tasks), desc="keyword speakers", unit="spk", disable=not progress):
            clips[tasks[i].speaker] = rels
        for split, name in (("dev", VALIDATION_LIST), ("test", TESTING_LIST)):
            listed = sorted(rel for t in tasks if split_of[t.speaker] == split for rel in clips[t.speaker])
            atomic_write_text(folder / name, "".join(f"{rel}\n" for rel in listed))
        utts, where, issues, info = read_speech_commands(SpeechCommandsConfig(root=str(folder), seed=cfg.seed), stage,
                                                         progress, relative_to=stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)  # a failed synthesis leaves nothing half-built behind
        raise
    info.update(source=f"built-in: eSpeak NG phoneme input (libespeak-ng is GPL-3.0, loaded at run time), written as "
                       f"a Speech Commands folder in {FOLDER}/", test_source=None,
                keyword_phones={w: list(p) for w, p in {**KEYWORD_PHONES, **UNKNOWN_PHONES}.items()},
                phone_set="TIMIT-39 (corpora/synth/phones.py)", seed=cfg.seed, build_seconds=round(time.time() - t0, 1),
                workers=workers)
    assert list(info["keyword_classes"]) == list(CLASSES)
    return build.commit(stage, out_dir, "synth_keywords", utts, where, issues, config, info, closed_set_speakers=False,
                        verify=verify_audio, workers=workers, progress=progress)
