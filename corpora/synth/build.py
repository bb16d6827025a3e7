"""prepare_synth: the default corpus, many generated voices in parallel worker processes, validated, committed."""
from __future__ import annotations

import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from core.config import config_from_dict, config_to_dict
from core.isolated import run_isolated
from corpora import build
from corpora.manifest import Corpus, Utterance
from corpora.synth.phones import CLASSES
from corpora.synth.worker import SpeakerTask, synth_speaker
from corpora.validate import Issues

FORMAT_VERSION = 1  # bump when the generator's output changes for the same config


@dataclass(frozen=True)
class SynthConfig:
    """Size and difficulty of the built-in corpus; the defaults are the benchmark's default corpus."""

    seed: int = 0
    probe_speakers: int = 100
    train_per_speaker: int = 12
    dev_per_speaker: int = 3
    test_per_speaker: int = 3
    pretrain_speakers: int = 150
    pretrain_hours: float = 2.0
    snr_db: tuple[float, float] = (10.0, 30.0)
    rate_jitter: float = 0.12  # per-utterance speaking-rate factor 1 +- this
    pitch_jitter: int = 20  # per-utterance eSpeak pitch parameter 50 +- this
    audio_format: str = "flac"
    # held-out speakers for speaker verification (corpora.trials), half for dev trials and half for test trials; they
    # are synthesised after every other speaker, so the other speakers' audio and the split manifests are the same
    # bytes with or without them
    trial_speakers: int = 40
    trial_per_speaker: int = 4

    def __post_init__(self) -> None:
        for k in ("probe_speakers", "train_per_speaker", "dev_per_speaker", "test_per_speaker"):
            if getattr(self, k) < 1:
                raise ValueError(f"SynthConfig.{k} must be >= 1, got {getattr(self, k)}")
        if self.pretrain_speakers < 0 or self.pretrain_hours < 0:
            raise ValueError("SynthConfig.pretrain_speakers and pretrain_hours must be >= 0")
        if self.pretrain_hours > 0 and self.pretrain_speakers == 0:
            raise ValueError("SynthConfig.pretrain_hours > 0 needs pretrain_speakers >= 1")
        if self.audio_format not in ("flac", "wav"):
            raise ValueError(f"SynthConfig.audio_format must be 'flac' or 'wav', got {self.audio_format!r}")
        if len(self.snr_db) != 2 or self.snr_db[0] > self.snr_db[1]:
            raise ValueError(f"SynthConfig.snr_db must be (low, high), got {self.snr_db}")
        if self.trial_speakers and (self.trial_speakers < 4 or self.trial_per_speaker < 2):
            raise ValueError(f"SynthConfig.trial_speakers must be 0 or >= 4 (two per trial split) with "
                             f"trial_per_speaker >= 2, got {self.trial_speakers} and {self.trial_per_speaker}")


def quick_config(seed: int = 0) -> SynthConfig:
    """The small corpus for smoke runs (< 40 s on 2 cores): 30 probe speakers, ~10 min of pretraining audio."""
    return SynthConfig(seed=seed, probe_speakers=30, pretrain_speakers=40, pretrain_hours=1 / 6, trial_speakers=10)


def _tasks(cfg: SynthConfig, stage: Path) -> list[SpeakerTask]:
    seeds = random.Random(cfg.seed)
    tasks = []
    probe = (("train", cfg.train_per_speaker, 0.0), ("dev", cfg.dev_per_speaker, 0.0), ("test", cfg.test_per_speaker, 0.0))
    per_pre = cfg.pretrain_hours * 3600 / cfg.pretrain_speakers if cfg.pretrain_speakers else 0.0
    names = [(f"p{i:03d}", probe) for i in range(cfg.probe_speakers)]
    names += [(f"u{i:03d}", (("pretrain", 0, per_pre),)) for i in range(cfg.pretrain_speakers) if per_pre > 0]
    # last: the seeds drawn above do not depend on them
    names += [(f"t{i:03d}", ((trial_split(i, cfg.trial_speakers), cfg.trial_per_speaker, 0.0),))
              for i in range(cfg.trial_speakers)]
    for name, plan in names:
        tasks.append(SpeakerTask(speaker=name, seed=seeds.getrandbits(62), plan=plan, stage=str(stage),
                                 audio_format=cfg.audio_format, snr_db=tuple(cfg.snr_db), rate_jitter=cfg.rate_jitter,
                                 pitch_jitter=cfg.pitch_jitter))
    return tasks


def trial_split(i: int, n: int) -> str:
    """Trial speaker i of n: the first half make the dev trials, the rest the test trials."""
    return "dev" if i < n // 2 else "test"


def synth_config_dict(cfg: SynthConfig) -> dict[str, Any]:
    """The config a corpus is keyed by; without trial speakers it is the config of a corpus prepared before they
    existed, which therefore still loads."""
    d = {**config_to_dict(cfg), "format_version": FORMAT_VERSION}
    if cfg.trial_speakers == 0:
        del d["trial_speakers"], d["trial_per_speaker"]
    return d


def prepare_synth(out_dir: str | Path, workers: int = 2, force: bool = False, progress: bool = True,
                  verify_audio: bool = True, **options: Any) -> Corpus:
    """Build (or load, when already built with the same options) the synthetic corpus in `out_dir`."""
    cfg = config_from_dict(SynthConfig, options, "synth corpus options")
    return prepare_synth_config(out_dir, cfg, workers=workers, force=force, progress=progress, verify_audio=verify_audio)


def prepare_synth_config(out_dir: str | Path, cfg: SynthConfig, workers: int = 2, force: bool = False,
                         progress: bool = True, verify_audio: bool = True) -> Corpus:
    out_dir = Path(out_dir)
    config = synth_config_dict(cfg)
    done = build.existing(out_dir, "synth", config, force)
    if done is not None:
        return done
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    stage = build.staging_dir(out_dir)
    tasks = _tasks(cfg, stage)
    t0 = time.time()
    # one fresh process per speaker: libespeak-ng keeps state between utterances, so only "new process + seed +
    # fixed utterance order" is reproducible; run_isolated forks them from a clean server (never from this
    # process, which may hold torch threads or a loaded libespeak-ng) and reruns one that crashes
    results: dict[str, list[dict]] = {}
    try:
        finished = run_isolated(synth_speaker, tasks, [f"synth speaker {t.speaker}" for t in tasks], workers)
        for i, recs in tqdm(finished, total=len(tasks), desc="synth speakers", unit="spk", disable=not progress):
            results[tasks[i].speaker] = recs
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)  # a failed synthesis leaves nothing half-built behind
        raise
    utts: list[Utterance] = []
    trials: list[Utterance] = []
    where: list[str] = []
    texts: dict[str, str] = {}
    trial_names = {f"t{i:03d}" for i in range(cfg.trial_speakers)}
    for t in tasks:  # task order, not completion order: the manifests are deterministic
        for rec in results.get(t.speaker, []):
            text = rec.pop("text")
            u = Utterance.from_json(rec, f"synth speaker {t.speaker}")
            if t.speaker in trial_names:  # kept out of texts.json too: every file of the splits stays as it was
                trials.append(u)
                continue
            texts[rec["id"]] = text
            utts.append(u)
            where.append(f"synth utterance {rec['id']} ({rec['path']})")
    info = {"source": "eSpeak NG via espeakng-loader (libespeak-ng is GPL-3.0, loaded at run time)",
            "phone_set": "TIMIT-39 (corpora/synth/phones.py)", "all_phone_classes": list(CLASSES),
            "seed": cfg.seed, "build_seconds": round(time.time() - t0, 1), "workers": workers}
    build.write_texts(stage, texts)
    return build.commit(stage, out_dir, "synth", utts, where, Issues(), config, info, closed_set_speakers=True,
                        verify=verify_audio, workers=workers, progress=progress, trials=trials, trial_seed=cfg.seed)
