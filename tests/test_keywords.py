"""Keyword spotting (SUPERB KS): the Speech Commands v1.0 reader, the built-in keyword corpus and the keywords task."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from core.frames import LOG_MEL
from corpora import load_corpus, prepare_corpus
from corpora.__main__ import main
from corpora.manifest import Utterance, read_manifest, write_manifest
from corpora.speech_commands import (BACKGROUND, CLASSES, SILENCE, TESTING_LIST, UNKNOWN, VALIDATION_LIST, WORDS,
                                     prepare_speech_commands)
from corpora.synth.keywords import KEYWORD_PHONES, UNKNOWN_PHONES, espeak_phonemes
from corpora.validate import CorpusError
from downstream.data import split_labels
from downstream.metrics import UTT_ACC
from downstream.modes import LayerMode
from downstream.config import AdamW, Minibatch, ProbeConfig
from downstream.probe import ProbeSpec
from downstream.sources import PooledSource
from downstream.tasks import SUPERB_TASKS, TASKS, get_task
from downstream.train import train_probes
from tests.fixtures import make_tiny_corpus

SPLITS = ("train", "dev", "test")
SR = 16_000
# speakers of the generated folder: two train speakers, one listed in validation_list.txt, one in testing_list.txt
SPEAKERS = {"aaaa0001": "train", "aaaa0002": "train", "bbbb0001": "dev", "cccc0001": "test"}
OTHER_WORDS = ("bed", "cat", "dog")  # `_unknown_`: three clips per speaker, against one of each keyword


def _wav(path: Path, seconds: float, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = 0.3 * np.sin(2 * np.pi * (200 + 50 * (seed % 17)) * t) + 0.01 * rng.standard_normal(len(t))
    sf.write(str(path), (x * 32767).astype(np.int16), SR, subtype="PCM_16")


def speech_commands_folder(root: Path, test_set: Path | None = None) -> Path:
    """A tiny folder shaped like speech_commands_v0.01 (and optionally its separate test set)."""
    lists: dict[str, list[str]] = {"dev": [], "test": []}
    for k, word in enumerate(WORDS + OTHER_WORDS):
        for j, (spk, split) in enumerate(SPEAKERS.items()):
            rel = f"{word}/{spk}_nohash_0.wav"
            _wav(root / rel, 1.0 if j else 0.8, 10 * k + j)  # one clip shorter than 1 s, as in the real corpus
            if split in lists:
                lists[split].append(rel)
    for k, name in enumerate(("white_noise", "running_tap")):
        _wav(root / BACKGROUND / f"{name}.wav", 15.0 + k, 1000 + k)
    (root / BACKGROUND / "README.md").write_text("noise")
    (root / VALIDATION_LIST).write_text("".join(f"{r}\n" for r in lists["dev"]))
    (root / TESTING_LIST).write_text("".join(f"{r}\n" for r in lists["test"]))
    if test_set is not None:
        for k, cls in enumerate(CLASSES):
            for j in range(2):
                _wav(test_set / cls / f"dddd000{j}_nohash_0.wav", 1.0, 500 + 2 * k + j)
    return root


def _digest(root: Path, skip=lambda p: False) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and rel.name != "corpus.json" and not skip(rel):
            h.update(str(rel).encode() + p.read_bytes())
    return h.hexdigest()


# ---------------------------------------------------------------- the Speech Commands reader


def test_reader_labels_splits_balance_and_silence(tmp_path):
    root = speech_commands_folder(tmp_path / "sc")
    c = prepare_speech_commands(tmp_path / "out", root=str(root), progress=False, workers=1)
    assert c.name == "speech_commands" and c.info["keyword_classes"] == list(CLASSES)
    assert c.info["closed_set_speakers"] is False and c.phones == ()
    by = {s: c.utterances(s) for s in SPLITS}
    # the lists decide dev and test; every other clip is train
    assert {u.speaker for u in by["dev"] if u.label != SILENCE} == {"bbbb0001"}
    assert {u.speaker for u in by["test"] if u.label != SILENCE} == {"cccc0001"}
    assert {u.speaker for u in by["train"] if u.label != SILENCE} == {"aaaa0001", "aaaa0002"}
    for s, n in (("train", 2), ("dev", 1), ("test", 1)):
        counts = c.info["class_counts"][s]
        # every keyword once per speaker; _unknown_ (3 per speaker) cut to the mean keyword count; as many silences
        assert counts == {cls: n for cls in CLASSES}, (s, counts)
        assert all(u.label in CLASSES for u in by[s])
        unknown = [u for u in by[s] if u.label == UNKNOWN]
        assert {u.id.split("-")[0] for u in unknown} <= set(OTHER_WORDS)
    short = next(u for u in by["train"] if u.id == "yes-aaaa0001_nohash_0")
    assert short.num_samples == int(0.8 * SR) and short.label == "yes" and Path(short.path).is_absolute()
    # silence: 1-s clips written out, cut from each split's own region of the noise recordings (silence.txt)
    lines = (c.root / "silence.txt").read_text().split("\n")[:-1]
    assert len(lines) == 4
    regions = {"train": (0.0, 0.8), "dev": (0.8, 0.9), "test": (0.9, 1.0)}
    for line in lines:
        uid, noise, offset, n = line.split()
        u = next(u for s in SPLITS for u in by[s] if u.id == uid)
        assert u.label == SILENCE and u.num_samples == int(n) == SR and not Path(u.path).is_absolute()
        got, sr = sf.read(str(c.audio_path(u)), dtype="int16")
        src, _ = sf.read(str(root / noise), dtype="int16")
        assert sr == SR and np.array_equal(got, src[int(offset):int(offset) + SR])
        lo, hi = regions[u.split]
        assert lo * len(src) <= int(offset) and int(offset) + SR <= hi * len(src)
    assert len({u.id for s in SPLITS for u in by[s]}) == sum(len(by[s]) for s in SPLITS)
    get_task("keywords").check(c)
    # every unknown clip kept on request
    every = prepare_speech_commands(tmp_path / "all", root=str(root), progress=False, workers=1, balance=False)
    assert every.info["class_counts"]["train"][UNKNOWN] == 6 and every.info["class_counts"]["train"]["yes"] == 2


def test_reader_with_superbs_separate_test_set(tmp_path):
    root = speech_commands_folder(tmp_path / "sc", test_set=tmp_path / "test_set")
    rc = main(["prepare", "speech_commands", "--root", str(root), "--test-root", str(tmp_path / "test_set"),
               "--out", str(tmp_path / "out"), "--no-progress", "--workers", "1"])
    assert rc == 0
    c = load_corpus(tmp_path / "out")
    test = c.utterances("test")
    assert c.info["class_counts"]["test"] == {cls: 2 for cls in CLASSES}  # the test set as published
    assert all(u.id.startswith("test-") and u.speaker.startswith("dddd") for u in test)
    # testing_list.txt's clips belong to no split (s3prl discards them), and no test silence is cut
    assert not any(u.speaker == "cccc0001" for s in SPLITS for u in c.utterances(s))
    assert not any(line.split()[0].startswith(f"{SILENCE}-test") for line in
                   (c.root / "silence.txt").read_text().splitlines())


@pytest.mark.parametrize("missing", [VALIDATION_LIST, TESTING_LIST, BACKGROUND])
def test_folder_missing_its_lists_or_noise_is_a_one_line_error(tmp_path, capsys, missing):
    import shutil

    root = speech_commands_folder(tmp_path / "sc")
    (shutil.rmtree if missing == BACKGROUND else Path.unlink)(root / missing)
    out = tmp_path / "out"
    rc = main(["prepare", "speech_commands", "--root", str(root), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {root / missing}: missing (a Speech Commands v1.0 folder holds"), err
    assert not out.exists() and not list(tmp_path.glob(".out*"))  # nothing written, no staging left behind


def test_listed_clip_not_on_disk_names_the_list_line(tmp_path):
    root = speech_commands_folder(tmp_path / "sc")
    with open(root / VALIDATION_LIST, "a") as f:
        f.write("yes/ffff0000_nohash_0.wav\n")
    with pytest.raises(CorpusError, match=rf"validation_list\.txt:{len(WORDS + OTHER_WORDS) + 1}: listed clip not "
                                          rf"found"):
        prepare_speech_commands(tmp_path / "out", root=str(root), progress=False, workers=1)
    assert not (tmp_path / "out").exists()


def test_a_label_is_written_only_when_there_is_one(tmp_path):
    plain = Utterance("a", "a.wav", SR, SR, "s", "train")
    labelled = Utterance("b", "b.wav", SR, SR, "s", "dev", label="yes")
    assert "label" not in plain.to_json()  # manifests of corpora without labels keep their bytes
    write_manifest(tmp_path / "m.jsonl", [plain, labelled])
    assert read_manifest(tmp_path / "m.jsonl") == [plain, labelled]


# ---------------------------------------------------------------- the built-in keyword corpus

SMALL = {"train_speakers": 6, "dev_speakers": 2, "test_speakers": 2, "repeats": 2, "noise_seconds": 10.0}


@pytest.fixture(scope="module")
def synth_kw(tmp_path_factory):
    return prepare_corpus("synth_keywords", tmp_path_factory.mktemp("kw") / "c", workers=2, progress=False, **SMALL)


def test_phone_sequences_become_espeak_phoneme_input():
    assert espeak_phonemes(KEYWORD_PHONES["yes"]) == "[[j'Es]]"
    assert espeak_phonemes(UNKNOWN_PHONES["seven"]) == "[[s'EvVn]]"
    assert not set(KEYWORD_PHONES) & set(UNKNOWN_PHONES) and set(KEYWORD_PHONES) == set(WORDS)


def test_synth_keywords_every_class_in_every_split_speakers_disjoint(synth_kw):
    c = synth_kw
    assert c.name == "synth_keywords" and c.info["keyword_classes"] == list(CLASSES)
    speakers = {}
    for s, n_spk in (("train", 6), ("dev", 2), ("test", 2)):
        utts = c.utterances(s)
        assert c.info["class_counts"][s] == {cls: 2 * n_spk for cls in CLASSES}  # balanced: repeats x speakers
        speakers[s] = {u.speaker for u in utts if u.label != SILENCE}
        assert len(speakers[s]) == n_spk
        for u in utts[:5]:
            assert u.sample_rate == SR and u.num_samples == SR and c.audio_path(u).is_file()
    assert not (speakers["train"] & speakers["dev"] or speakers["train"] & speakers["test"]
                or speakers["dev"] & speakers["test"])
    # the Speech Commands folder the reader read sits inside the corpus
    assert (c.root / "speech_commands" / VALIDATION_LIST).is_file() and (c.root / "speech_commands" / BACKGROUND).is_dir()
    get_task("keywords").check(c)


def test_synth_keywords_is_deterministic(synth_kw, tmp_path):
    again = prepare_corpus("synth_keywords", tmp_path / "c", workers=1, progress=False, **SMALL)
    assert _digest(again.root) == _digest(synth_kw.root)
    assert again.info["config_hash"] == synth_kw.info["config_hash"]
    other = prepare_corpus("synth_keywords", tmp_path / "c2", workers=2, progress=False, **{**SMALL, "seed": 1})
    assert _digest(other.root) != _digest(synth_kw.root)


def test_synth_keywords_cli(tmp_path):
    out = tmp_path / "kw"
    assert main(["prepare", "synth_keywords", "--out", str(out), "--train-speakers", "2", "--dev-speakers", "1",
                 "--test-speakers", "1", "--repeats", "1", "--no-progress", "--workers", "2"]) == 0
    assert load_corpus(out).info["class_counts"]["dev"] == {cls: 1 for cls in CLASSES}


# ---------------------------------------------------------------- the keywords task


def test_keywords_task_spec():
    task = get_task("keywords")
    assert "keywords" in SUPERB_TASKS and "keywords" not in TASKS
    assert task.level == "utterance" and task.pooled and task.metric is UTT_ACC and task.metric.direction == "higher"
    assert task.linear and task.engine == "stacked" and task.finetunable


def test_keywords_refuses_a_corpus_without_keyword_labels(tmp_path, synth_kw):
    plain = make_tiny_corpus(tmp_path / "tiny")
    with pytest.raises(ValueError, match=r"task keywords: .*corpus\.json: no keyword_classes: corpus 'tiny' has no "
                                         r"keyword labels"):
        get_task("keywords").check(plain)
    import shutil

    copy = tmp_path / "kw"
    shutil.copytree(synth_kw.root, copy)
    dev = read_manifest(copy / "dev.jsonl")
    write_manifest(copy / "dev.jsonl", [dataclasses.replace(u, label=None) if i < 3 else u
                                        for i, u in enumerate(dev)])
    with pytest.raises(ValueError, match=rf"task keywords: .*dev\.jsonl: 3 of {len(dev)} utterances have no keyword "
                                         rf"label"):
        get_task("keywords").check(load_corpus(copy))
    info = json.loads((copy / "corpus.json").read_text())
    write_manifest(copy / "dev.jsonl", dev)
    train = read_manifest(copy / "train.jsonl")
    write_manifest(copy / "train.jsonl", [u for u in train if u.label != "go"])
    with pytest.raises(ValueError, match=r"train\.jsonl: no training utterance of keyword class\(es\) \['go'\]"):
        get_task("keywords").check(load_corpus(copy))
    assert info["info"]["keyword_classes"][9] == "go"


def test_keywords_probe_beats_chance(synth_kw):
    """Mean-pooled log-mel features of the built-in keyword corpus, a linear head trained by train_probes (the full
    train split and half of it, two seeds): test accuracy far above chance (1/12)."""
    import torch

    from core.audio import load_audio
    from tests.test_probes import array_source
    from upstream.features import FeatureConfig, corpus_stats
    from upstream.registry import build_upstream

    c = synth_kw
    cfg = FeatureConfig()
    mean, std = corpus_stats(cfg, [load_audio(c.audio_path(u)) for u in c.utterances("train")])
    mel = build_upstream("mel", feature=cfg.with_stats(mean, std)).eval()
    with torch.no_grad():
        src = PooledSource(array_source(mel, c))
    task = get_task("keywords")
    task.check(c)
    labels = {s: split_labels(c, c.utterances(s), s, task.labels, LOG_MEL) for s in SPLITS}
    assert sorted(set(labels["test"].utt.tolist())) == list(range(12))
    n = len(c.utterances("train"))
    probes = [ProbeSpec(tuple(range(n)), 0), ProbeSpec(tuple(range(0, n, 2)), 1)]
    results = train_probes(task, LayerMode("last"), src, labels, probes, len(CLASSES),
                           ProbeConfig(Minibatch(AdamW(lr=1e-2), batch_size=16, min_eval_steps=5), patience=5))
    full, half = results
    assert full.train_utts == n and half.train_utts == len(range(0, n, 2))
    assert full.test_metric > 0.3 and half.test_metric > 0.2, (full.test_metric, half.test_metric)  # chance 0.083
