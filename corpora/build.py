"""Shared end of every preparation: idempotency check, staging directory, validation, atomic commit.

A corpus is built in a hidden staging directory beside `out_dir` and swapped in only after validation
passed and corpus.json (the done-marker) was written, so a failed or interrupted run leaves any earlier
output intact, and re-running with the same config is a cheap load. Validation decodes every audio file
once (corpora.verify) unless the caller opts out; whether it did is recorded, but it is not part of the
config: a corpus that passed decoding is the same corpus as one that was not decoded.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from core.io import atomic_write_json, sha256_json
from corpora.manifest import SPLITS, Corpus, Utterance, is_prepared, load_corpus, write_corpus_info, write_manifest
from corpora.trials import TRIAL_SPLITS, make_trials, write_trials
from corpora.validate import Issues, check_alignment, validate_records
from corpora.verify import default_workers, verify_audio


class ConfigMismatch(ValueError):
    """The output directory already holds a corpus prepared with other options."""


def existing(out_dir: Path, name: str, config: dict[str, Any], force: bool) -> Corpus | None:
    """The prepared corpus in `out_dir` when it was made from the same config; None when it must be built."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not is_prepared(out_dir):
        # never replace a folder we did not make: it may hold the user's own data
        raise ValueError(f"--out {out_dir} is a non-empty directory without corpus.json; choose an empty or new directory")
    if not is_prepared(out_dir) or force:
        return None
    corpus = load_corpus(out_dir)
    if corpus.name == name and _same_config(corpus.info, config):
        return corpus
    raise ConfigMismatch(f"{out_dir} already holds a corpus ({corpus.name!r}) prepared with a different config; "
                     f"choose another --out directory or pass --force to rebuild it")


def _same_config(info: dict[str, Any], config: dict[str, Any]) -> bool:
    if info.get("config_hash") == sha256_json(config):
        return True
    # corpora prepared before decoding became the default recorded verify_audio in their config: it never
    # changed the output, so it does not make them differ
    stored = info.get("config")
    return isinstance(stored, dict) and "verify_audio" in stored and sha256_json(
        {k: v for k, v in stored.items() if k != "verify_audio"}) == sha256_json(config)


def staging_dir(out_dir: Path) -> Path:
    stage = out_dir.parent / f".{out_dir.name}.partial"
    if stage.exists():
        shutil.rmtree(stage)  # leftover of an interrupted run: never trusted
    stage.mkdir(parents=True)
    return stage


def commit(stage: Path, out_dir: Path, name: str, utts: list[Utterance], where: list[str], issues: Issues,
           config: dict[str, Any], info: dict[str, Any], closed_set_speakers: bool, verify: bool = True,
           workers: int | None = None, progress: bool = True, trials: list[Utterance] | None = None,
           trial_seed: int = 0) -> Corpus:
    """Validate (decoding every audio file when `verify`), write manifests then corpus.json into `stage`, and
    move it to `out_dir`. Relative audio paths are relative to `stage` (the corpus directory to be).

    `trials`: utterances of held-out speakers (split dev or test) for speaker verification, written with their
    trial list beside the manifests (corpora.trials); the manifests of the splits do not change."""
    trials = list(trials or [])
    try:
        t0 = time.perf_counter()
        if verify:
            files = [(Path(u.path) if Path(u.path).is_absolute() else stage / u.path, u.num_samples, w)
                     for u, w in zip(utts + trials, where + [f"trial utterance {u.id} ({u.path})" for u in trials])]
            for w, problem in verify_audio(files, workers or default_workers(), progress):
                issues.add(w, problem)
        verify_seconds = round(time.perf_counter() - t0, 1)
        phones, speakers = validate_records(utts, where, issues, closed_set_speakers)
        trial_info = _check_trials(trials, utts, issues)
        issues.raise_if_any(f"cannot prepare corpus {name!r} into {out_dir}")
        counts = {}
        for split in SPLITS:
            part = [u for u in utts if u.split == split]
            write_manifest(stage / f"{split}.jsonl", part)
            counts[split] = {"utterances": len(part), "hours": round(sum(u.duration for u in part) / 3600, 4),
                             "speakers": len({u.speaker for u in part})}
        full_info = {**info, "config": config, "config_hash": sha256_json(config), "splits": counts,
                     "closed_set_speakers": closed_set_speakers, "audio_verified": verify,
                     "verify_seconds": verify_seconds if verify else None}
        if trials:
            made = make_trials(trials, trial_seed)
            write_trials(stage, trials, made)
            full_info["trials"] = {s: {**trial_info[s], "target": sum(t.same for t in made if t.split == s),
                                       "nontarget": sum(not t.same for t in made if t.split == s)}
                                   for s in TRIAL_SPLITS}
        write_corpus_info(stage, name, phones, speakers, full_info)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = out_dir.parent / f".{out_dir.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if out_dir.exists():
        out_dir.rename(old)
    stage.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return load_corpus(out_dir)


def _check_trials(trials: list[Utterance], utts: list[Utterance], issues: Issues) -> dict[str, dict[str, int]]:
    """Trial utterances are dev or test utterances of speakers outside every split, with unique ids."""
    probe_speakers = {u.speaker for u in utts}
    seen = {u.id for u in utts}
    for u in trials:
        w = f"trial utterance {u.id}"
        if u.split not in TRIAL_SPLITS:
            issues.add(w, f"split {u.split!r}: trial utterances belong to {list(TRIAL_SPLITS)}")
        if u.speaker in probe_speakers:
            issues.add(w, f"speaker {u.speaker!r} is also in the corpus's splits: trial speakers are held out")
        if u.id in seen:
            issues.add(w, "duplicate utterance id")
        seen.add(u.id)
        if u.alignment is not None:
            check_alignment(u.alignment, u.num_samples, w, issues)
    return {s: {"utterances": sum(u.split == s for u in trials), "speakers": len({u.speaker for u in trials
                                                                                if u.split == s})}
            for s in TRIAL_SPLITS}


def write_texts(stage: Path, texts: dict[str, str]) -> None:
    """Transcripts beside the manifests (texts.json), for inspection; no consumer needs them."""
    atomic_write_json(stage / "texts.json", texts)
