"""The drill as tests: every broken input ends in exit status 2, ONE `error:` line naming the culprit (file and
line, or flag), no traceback, and no output (corpus, cache, rows, checkpoint) appearing or changing.

Each command runs in-process through its main(argv), in a temporary working directory whose whole tree (inputs
included) is hashed before and after. Hostile checkpoints (pickle payloads in s3prl files, safetensors headers
that lie) follow: a payload that a plain unpickler runs must never run on any of our load paths. Last, the kill
drills: a process SIGKILLed in the middle of corpus preparation, pretraining, feature extraction or a probe sweep,
then rerun, gives what an uninterrupted run gives, with no duplicate rows and no leftover temporary files.
"""
from __future__ import annotations

import csv
import hashlib
import importlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import soundfile as sf
import torch

import benchmark.cli
import corpora.__main__
import pretrain.__main__
import pretrain.import_s3prl
from pretrain import PretrainConfig, run_pretraining
from tests.fixtures import make_pretrain_corpus, make_tiny_corpus
from tests.test_checkpoint_errors import CFG, MICRO
from tests.test_corpora_validation import _good, _wav, _write
from upstream.checkpoint import CheckpointError, load_checkpoint, read_meta
from upstream.registry import load_upstream
from upstream.s3prl_compat import Placeholder, ours_to_s3prl, safe_torch_load
from upstream.transformer import TransformerEncoder

SR = 16000


# ---------------------------------------------------------------- helpers

def tree(*roots: Path) -> dict[str, str]:
    """Every file (content hash) and folder under `roots`: what "nothing appeared or changed" compares."""
    out = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    return out


def run_main(main: Callable[[list[str]], int], argv: list[str], capsys) -> tuple[int, str]:
    """(exit status, stderr) of a command line run in-process; argparse's own errors exit via SystemExit."""
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def assert_drill(main, argv: list[str], capsys, culprits: list[str], *watched: Path) -> str:
    """Exit 2, one error line naming every culprit, no traceback, and the watched trees unchanged."""
    before = tree(*watched)
    rc, err = run_main(main, [str(a) for a in argv], capsys)
    errors = [line for line in err.splitlines() if "error:" in line]
    assert rc == 2, (argv, rc, err)
    assert "Traceback" not in err, err
    assert len(errors) == 1, err
    for c in culprits:
        assert c in errors[0], (c, errors[0])
    assert tree(*watched) == before, "an input error wrote or changed files"
    return errors[0]


# ---------------------------------------------------------------- python -m corpora prepare manifest

def _nan_wav(p: Path) -> None:
    x = np.full(8000, 0.1, np.float32)
    x[:100] = np.nan
    sf.write(str(p), x, SR, subtype="FLOAT")


def _truncated_flac(p: Path) -> None:
    sf.write(str(p), np.random.default_rng(0).standard_normal(48000).astype(np.float32) * 0.1, SR, format="FLAC")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])


def _truncated_wav(p: Path) -> None:
    sf.write(str(p), np.full(16000, 0.1, np.float32), SR, subtype="FLOAT")
    p.write_bytes(p.read_bytes()[:-4000])


def _audio_case(make: Callable[[Path], None], name: str):
    def case(tmp: Path, rows: list[dict]) -> Path:
        make(tmp / name)
        rows[1]["path"] = str(tmp / name)
        return _write(tmp, rows)
    return case


def _lab_case(text: str):
    def case(tmp: Path, rows: list[dict]) -> Path:
        (tmp / "bad.lab").write_text(text)
        rows[1]["alignment"] = str(tmp / "bad.lab")
        return _write(tmp, rows)
    return case


def _set(row: int, **kw):
    def case(tmp: Path, rows: list[dict]) -> Path:
        rows[row].update(kw)
        return _write(tmp, rows)
    return case


def _csv(tmp: Path, rows: list[dict], extra_column: bool = False, latin1: bool = False) -> Path:
    cols = ["path", "speaker", "split", "id", "alignment"]
    lines = [",".join(cols + ["gender"] * extra_column)]
    lines += [",".join([str(r[c]) for c in cols] + ["f"] * extra_column) for r in rows]
    if latin1:  # the speaker of the 3rd row (file line 4) written as Latin-1
        lines[3] = lines[3].replace(f",{rows[2]['speaker']},", ",caf\xe9,")
    (tmp / "m.csv").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return tmp / "m.csv"


def _append(text: str):
    def case(tmp: Path, rows: list[dict]) -> Path:
        m = _write(tmp, rows)
        m.write_text(m.read_text() + text)
        return m
    return case


MANIFEST_DRILLS = {
    "empty audio": (_audio_case(lambda p: _wav(p, 0), "empty.wav"), ["m.jsonl:2:", "zero-length", "empty.wav"]),
    "NaN samples": (_audio_case(_nan_wav, "nan.wav"), ["m.jsonl:2:", "nan.wav holds 100 NaN/inf samples"]),
    "truncated FLAC": (_audio_case(_truncated_flac, "cut.flac"), ["m.jsonl:2:", "undecodable", "cut.flac"]),
    "truncated WAV": (_audio_case(_truncated_wav, "cut.wav"), ["m.jsonl:2:", "truncated WAV", "cut.wav"]),
    "garbage audio": (_audio_case(lambda p: p.write_bytes(b"RIFF\x00\x00garbage" * 10), "junk.wav"),
                      ["m.jsonl:2:", "unreadable or corrupt audio", "junk.wav"]),
    "too short": (_audio_case(lambda p: _wav(p, 100), "short.wav"), ["m.jsonl:2:", "too short", "short.wav"]),
    "missing audio": (_set(1, path="nowhere.wav"), ["m.jsonl:2:", "audio file not found", "nowhere.wav"]),
    "declared rate differs": (_set(1, sample_rate=8000), ["m.jsonl:2:", "sample-rate mismatch", "expected 8000 Hz"]),
    "bad sample_rate": (_set(1, sample_rate="fast"), ["m.jsonl:2:", "sample_rate must be a number"]),
    "duplicate id": (_set(4, id="a0"), ["m.jsonl:5:", "duplicate utterance id 'a0'", "m.jsonl:1"]),
    "alignment past the end": (_lab_case("0 0.1 x\n0.1 0.5 y\n"), ["m.jsonl:2:", "past the end of the audio"]),
    "overlapping alignment": (_lab_case("0 0.1 x\n0.05 0.2 y\n"), ["m.jsonl:2:", "overlaps the previous one"]),
    "negative alignment": (_lab_case("-0.1 0.1 x\n0.1 0.2 y\n"), ["m.jsonl:2:", "negative start"]),
    "unparsable alignment": (_lab_case("zero 0.1 x\n"), ["m.jsonl:2:", "bad.lab:1:", "must be numbers"]),
    "infinite alignment time": (_lab_case("0 inf x\n"), ["m.jsonl:2:", "bad.lab:1:", "finite"]),
    "missing alignment": (_set(1, alignment="nowhere.lab"), ["m.jsonl:2:", "alignment file not found"]),
    "unknown split": (_set(1, split="valid"), ["m.jsonl:2:", "unknown split 'valid'"]),
    "unknown JSON field": (_set(1, gender="f"), ["m.jsonl:2:", "unknown field(s) ['gender']"]),
    "bad JSON line": (_append("{not json\n"), ["m.jsonl:7:", "invalid JSON"]),
    "missing speaker": (_append(json.dumps({"path": "x.wav", "split": "train"}) + "\n"),
                        ["m.jsonl:7:", "missing required field(s) ['speaker']"]),
    "non-UTF-8 CSV manifest": (lambda tmp, rows: _csv(tmp, rows, latin1=True),
                               ["m.csv:4:", "not UTF-8", "0xe9", "iconv"]),
    "unknown CSV column": (lambda tmp, rows: _csv(tmp, rows, extra_column=True),
                           ["m.csv:1:", "unknown column(s) ['gender']"]),
}


@pytest.mark.parametrize("name", list(MANIFEST_DRILLS))
def test_bad_manifest_input(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make, culprits = MANIFEST_DRILLS[name]
    manifest = make(tmp_path, _good(tmp_path))
    assert_drill(corpora.__main__.main, ["prepare", "manifest", "--manifest", manifest, "--out", tmp_path / "out",
                                         "--no-progress", "--workers", "2"], capsys, culprits, tmp_path)


def test_a_failed_rebuild_changes_nothing(tmp_path, capsys, monkeypatch):
    """The same drill on a directory holding an earlier corpus, with --force: that corpus stays as it was."""
    monkeypatch.chdir(tmp_path)
    rows = _good(tmp_path)
    m = _write(tmp_path, rows)
    assert corpora.__main__.main(["prepare", "manifest", "--manifest", str(m), "--out", str(tmp_path / "out"),
                                  "--no-progress"]) == 0
    _nan_wav(tmp_path / "a1.wav")
    assert_drill(corpora.__main__.main, ["prepare", "manifest", "--manifest", m, "--out", tmp_path / "out", "--force",
                                         "--no-progress"], capsys, ["m.jsonl:2:", "NaN/inf"], tmp_path)


def test_stereo_and_other_rates_are_handled_not_refused(tmp_path, capsys):
    """Stereo files are down-mixed and other rates resampled when read (core.audio): a manifest may hold them."""
    rows = _good(tmp_path)
    sf.write(str(tmp_path / "st.wav"), np.full((4000, 2), 0.05, np.float32), SR, subtype="PCM_16")
    sf.write(str(tmp_path / "r8.wav"), np.full(2000, 0.05, np.float32), 8000, subtype="PCM_16")
    sf.write(str(tmp_path / "r44.flac"), np.full(11025, 0.05, np.float32), 44100, format="FLAC")
    for row, name in zip(rows[:3], ("st.wav", "r8.wav", "r44.flac")):
        row["path"] = str(tmp_path / name)
    m = _write(tmp_path, rows)
    assert corpora.__main__.main(["prepare", "manifest", "--manifest", str(m), "--out", str(tmp_path / "out"),
                                  "--no-progress"]) == 0
    got = {Path(u.path).name: (u.sample_rate, u.num_samples)
           for s in ("train", "dev", "test") for u in corpora.load_corpus(tmp_path / "out").utterances(s)}
    assert got["st.wav"] == (SR, 4000) and got["r8.wav"] == (8000, 2000) and got["r44.flac"] == (44100, 11025)


def test_librispeech_other_rate_is_refused(tmp_path, capsys):
    root = tmp_path / "LibriSpeech"
    for spk in ("19", "26"):
        for k in range(4):
            p = root / "train-clean-100" / spk / "100" / f"{spk}-100-{k:04d}.flac"
            p.parent.mkdir(parents=True, exist_ok=True)
            sr = 8000 if (spk, k) == ("26", 2) else SR
            sf.write(str(p), np.full(sr // 4, 0.05, np.float32), sr, format="FLAC")
    assert_drill(corpora.__main__.main, ["prepare", "librispeech", "--root", root, "--out", tmp_path / "ls",
                                         "--no-progress"], capsys,
                 ["26-100-0002.flac", "is 8000 Hz, expected 16000 Hz"], tmp_path)


CORPORA_FLAG_DRILLS = {
    "workers 0": (["synth", "--workers", "0"], ["--workers", ">= 1"]),
    "workers not a number": (["synth", "--workers", "two"], ["--workers", "'two'"]),
    "probe speakers 0": (["synth", "--probe-speakers", "0"], ["--probe-speakers", ">= 1"]),
    "negative hours": (["synth", "--pretrain-hours", "-1"], ["--pretrain-hours", ">= 0"]),
    "bad seed": (["synth", "--seed", "x"], ["--seed", "'x'"]),
    "snr low > high": (["synth", "--snr-db", "30", "10"], ["snr_db"]),
    "snr not finite": (["synth", "--snr-db", "nan", "10"], ["--snr-db", "'nan'"]),
    "infinite hours": (["synth", "--pretrain-hours", "inf"], ["--pretrain-hours", "finite"]),
    "unknown corpus": (["wsj"], ["invalid choice: 'wsj'"]),
    "missing manifest": (["manifest", "--manifest", "nowhere.csv"], ["--manifest nowhere.csv", "not found"]),
    "manifest of another type": (["manifest", "--manifest", "list.txt"], ["--manifest list.txt", ".csv or .jsonl"]),
    "missing root": (["timit", "--root", "nowhere"], ["--root nowhere", "no TRAIN folder"]),
}


@pytest.mark.parametrize("name", list(CORPORA_FLAG_DRILLS))
def test_bad_corpora_flags(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "list.txt").write_text("a.wav\n")
    argv, culprits = CORPORA_FLAG_DRILLS[name]
    assert_drill(corpora.__main__.main, ["prepare", *argv[:1], "--out", "out", "--no-progress", *argv[1:]], capsys,
                 culprits, tmp_path)


# ---------------------------------------------------------------- run_benchmark.py

@pytest.fixture(scope="module")
def probe_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("drill-corpus") / "corpus"
    make_tiny_corpus(root, n_speakers=2, per_speaker={"train": 2, "dev": 1, "test": 1})
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A complete toolkit checkpoint (micro Mockingjay, 2 steps) with its optimizer state."""
    root = tmp_path_factory.mktemp("drill-ckpt")
    corpus = make_pretrain_corpus(root / "corpus", n_utts=6, seconds=(0.8, 1.0))
    return run_pretraining("mockingjay:small", corpus, root / "ckpt", CFG, device="cpu", encoder=MICRO,
                           show_progress=False)


def _harness_argv(tmp: Path, corpus: Path, *extra: str) -> list[str]:
    return ["--corpus", str(corpus), "--data-dir", str(tmp / "data"), "--results-dir", str(tmp / "results"),
            "--cache-dir", str(tmp / "cache"), "--runs-dir", str(tmp / "runs"), "--no-progress", *extra]


HARNESS_FLAG_DRILLS = {
    "unknown upstream": (["--upstream", "mel,wav2vec"], ["--upstream wav2vec", "valid: mel"]),
    "unknown preset": (["--upstream", "mockingjay:huge"], ["--upstream mockingjay:huge", "valid:"]),
    "unknown task": (["--task", "asr"], ["--task", "'asr'", "valid: phone_linear"]),
    "unknown mode": (["--mode", "mean"], ["--mode", "'mean'", "valid: last"]),
    "layer not a number": (["--mode", "layer=x"], ["--mode 'layer=x'", "integer"]),
    "negative layer": (["--mode", "layer=-1"], ["--mode 'layer=-1'", ">= 0"]),
    "layer past the last": (["--upstream", "mockingjay", "--mode", "layer=99"],
                            ["--mode layer=99", "mockingjay has 4 hidden states", "0..3"]),
    "fraction as a percentage": (["--fractions", "5"], ["--fractions", "outside (0, 1]"]),
    "fraction not a number": (["--fractions", "0.1,half"], ["--fractions", "'half'"]),
    "seeds 0": (["--seeds", "0"], ["--seeds", ">= 1"]),
    "seeds not a number": (["--seeds", "three"], ["--seeds", "'three'"]),
    "workers 0": (["--workers", "0"], ["--workers", ">= 1"]),
    "probe memory negative": (["--probe-memory", "-1"], ["--probe-memory", ">= 0"]),
    "steps 0": (["--steps", "0"], ["--steps", ">= 1"]),
    "bad device": (["--device", "gpu0"], ["--device 'gpu0'"]),
    "ckpt for mel": (["--ckpt", "mel=x"], ["--ckpt 'mel=x'", "not a pretrained upstream"]),
    "ckpt not a directory": (["--ckpt", "mockingjay=nowhere"], ["--ckpt 'mockingjay=nowhere'", "no checkpoint.json"]),
    "unknown corpus name": (["--corpus", "wsj"], ["--corpus 'wsj'", "valid names"]),
    "timit not prepared": (["--corpus", "timit"], ["--corpus timit: not prepared", "python -m corpora prepare timit",
                                                   "--root"]),
    "librispeech not prepared": (["--corpus", "librispeech"], ["--corpus librispeech: not prepared"]),
    "manifest corpus not prepared": (["--corpus", "manifest"], ["--corpus manifest: not prepared", "--manifest"]),
}


@pytest.mark.parametrize("name", list(HARNESS_FLAG_DRILLS))
def test_bad_benchmark_flags(name, probe_corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    extra, culprits = HARNESS_FLAG_DRILLS[name]
    argv = _harness_argv(tmp_path, probe_corpus, "--upstream", "mel", *extra)  # a later --flag wins
    for dry in ([], ["--dry-run"]):  # caught while planning: a dry run fails exactly as the real run
        assert_drill(benchmark.cli.main, argv + dry, capsys, culprits, tmp_path, probe_corpus)


@pytest.mark.parametrize("content,culprits", [
    (b"run_id,upstream\nabc,mel\n", ["runs.csv: header differs"]),
    (b"run_id\nab\xffc\n", ["runs.csv:2:", "not UTF-8"])], ids=["foreign header", "not UTF-8"])
def test_foreign_results_file(content, culprits, probe_corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "runs.csv").write_bytes(content)
    for command in ([], ["report"], ["--dry-run"]):
        assert_drill(benchmark.cli.main, command + _harness_argv(tmp_path, probe_corpus, "--upstream", "mel"), capsys,
                     culprits, tmp_path, probe_corpus)


def _copy_corpus(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_bad_corpus_manifests(probe_corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    broken = _copy_corpus(probe_corpus, tmp_path / "c1")
    (broken / "dev.jsonl").write_text((broken / "dev.jsonl").read_text() + "{oops\n")
    assert_drill(benchmark.cli.main, _harness_argv(tmp_path, broken, "--upstream", "mel"), capsys,
                 ["dev.jsonl:3:", "invalid JSON"], tmp_path)
    latin = _copy_corpus(probe_corpus, tmp_path / "c2")
    (latin / "test.jsonl").write_bytes((latin / "test.jsonl").read_bytes().replace(b"spk1", b"spk\xe9"))
    assert_drill(benchmark.cli.main, _harness_argv(tmp_path, latin, "--upstream", "mel"), capsys,
                 ["test.jsonl:2:", "not UTF-8"], tmp_path)
    (broken / "corpus.json").write_text('{"name": "tiny", "vers')
    assert_drill(benchmark.cli.main, _harness_argv(tmp_path, broken, "--upstream", "mel"), capsys,
                 ["corpus.json is corrupt or truncated"], tmp_path)


def test_nan_audio_met_while_running_is_one_line(probe_corpus, tmp_path, capsys, monkeypatch):
    """A corpus prepared with --no-verify-audio (here: written directly) holding a NaN file: the benchmark stops
    at it with one line naming it and the remedy, and writes no rows, cache or statistics."""
    monkeypatch.chdir(tmp_path)
    bad = _copy_corpus(probe_corpus, tmp_path / "c")
    victim = sorted((bad / "wav").glob("train-*.wav"))[0]
    x, sr = sf.read(str(victim), dtype="float32")
    x[:10] = np.nan
    sf.write(str(victim), x, sr, subtype="FLOAT")
    assert_drill(benchmark.cli.main, _harness_argv(tmp_path, bad, "--upstream", "mel", "--fractions", "1",
                                                   "--seeds", "1"), capsys,
                 [victim.name, "NaN/inf", "--no-verify-audio"], tmp_path)


def _mutate_weights(ck: Path, change: Callable[[bytes], bytes], rehash: bool) -> Path:
    meta = json.loads((ck / "checkpoint.json").read_text())
    f = ck / meta["files"]["model"]["file"]
    f.write_bytes(change(f.read_bytes()))
    if rehash:  # an attacker (or a bad copy tool) that also rewrote checkpoint.json
        meta["files"]["model"]["sha256"] = hashlib.sha256(f.read_bytes()).hexdigest()
        (ck / "checkpoint.json").write_text(json.dumps(meta))
    return f


def _edit_header(edit: Callable[[dict], None]) -> Callable[[bytes], bytes]:
    def change(raw: bytes) -> bytes:
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8 : 8 + n])
        edit(header)
        hb = json.dumps(header).encode()
        return struct.pack("<Q", len(hb)) + hb + raw[8 + n :]
    return change


def _first_tensor(header: dict) -> dict:
    return header[sorted(k for k in header if k != "__metadata__")[0]]


def _meta_edit(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def change(ck: Path) -> None:
        meta = json.loads((ck / "checkpoint.json").read_text())
        edit(meta)
        (ck / "checkpoint.json").write_text(json.dumps(meta))
    return change


CHECKPOINT_DRILLS: dict[str, tuple[Callable[[Path], object], list[str]]] = {
    "checkpoint.json missing": (lambda ck: (ck / "checkpoint.json").unlink(), ["no checkpoint.json"]),
    "checkpoint.json truncated": (lambda ck: (ck / "checkpoint.json").write_text('{"format_version": 1, "fi'),
                                  ["checkpoint.json is corrupt or truncated"]),
    "weights missing": (lambda ck: next(ck.glob("model-*.safetensors")).unlink(), ["model-", "is missing"]),
    "weights truncated": (lambda ck: _mutate_weights(ck, lambda b: b[:100], False), ["model-", "corrupt or truncated"]),
    "weights tampered": (lambda ck: _mutate_weights(ck, lambda b: b[:-9] + bytes([b[-9] ^ 1]) + b[-8:], False),
                         ["model-", "SHA-256 differs"]),
    "header lies about a shape": (lambda ck: _mutate_weights(ck, _edit_header(
        lambda h: _first_tensor(h).update(shape=[9999])), True), ["cannot read model-", "invalid shape"]),
    "header lies about a dtype (wider)": (lambda ck: _mutate_weights(ck, _edit_header(
        lambda h: _first_tensor(h).update(dtype="F64")), True), ["cannot read model-"]),
    "header lies about a dtype (same size)": (lambda ck: _mutate_weights(ck, _edit_header(
        lambda h: _first_tensor(h).update(dtype="I32")), True), ["non-floating-point", "dtype I32"]),
    "header names an unknown dtype": (lambda ck: _mutate_weights(ck, _edit_header(
        lambda h: _first_tensor(h).update(dtype="Q99")), True), ["cannot read model-", "Q99"]),
    "header offsets past the end": (lambda ck: _mutate_weights(ck, _edit_header(
        lambda h: _first_tensor(h).update(data_offsets=[0, 1 << 40])), True), ["cannot read model-"]),
    "header length lies": (lambda ck: _mutate_weights(ck, lambda b: struct.pack("<Q", 1 << 60) + b[8:], True),
                           ["cannot read model-", "header too large"]),
    "weights do not match the config": (_meta_edit(lambda m: m["encoder"].update(hidden_size=64)),
                                        ["weights do not match its encoder config"]),
    "weights of another family": (_meta_edit(lambda m: m.update(upstream="aalbert")),
                                  ["holds a 'aalbert' model, expected 'mockingjay'"]),
    "files entry outside the directory": (_meta_edit(lambda m: m["files"]["model"].update(file="../x.safetensors")),
                                          ["files.model names '../x.safetensors'"]),
}


@pytest.mark.parametrize("name", list(CHECKPOINT_DRILLS))
def test_bad_checkpoint_for_the_benchmark(name, checkpoint, probe_corpus, tmp_path, capsys, monkeypatch):
    """Caught while planning, before any model is loaded; the runtime loader refuses the same file."""
    monkeypatch.chdir(tmp_path)
    ck = shutil.copytree(checkpoint, tmp_path / "ck")
    change, culprits = CHECKPOINT_DRILLS[name]
    change(ck)
    assert_drill(benchmark.cli.main, _harness_argv(tmp_path, probe_corpus, "--upstream", "mockingjay",
                                                   "--ckpt", f"mockingjay={ck}"), capsys, culprits, tmp_path, probe_corpus)
    if (ck / "checkpoint.json").is_file():
        with pytest.raises(CheckpointError):
            load_upstream(ck, expect_family="mockingjay")


@pytest.mark.parametrize("name", ["weights tampered", "header lies about a shape", "header length lies",
                                  "header lies about a dtype (same size)"])
def test_bad_checkpoint_for_pretrain_resume(name, checkpoint, tmp_path, capsys, monkeypatch):
    """python -m pretrain --resume checks the checkpoint before reading any audio."""
    monkeypatch.chdir(tmp_path)
    ck = shutil.copytree(checkpoint, tmp_path / "ck")
    change, culprits = CHECKPOINT_DRILLS[name]
    change(ck)
    assert_drill(pretrain.__main__.main, ["--upstream", "mockingjay", "--corpus", tmp_path / "nowhere", "--out", ck,
                                          "--resume"], capsys, culprits, tmp_path)


def test_resume_checkpoint_lacking_its_training_state(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ck = shutil.copytree(checkpoint, tmp_path / "ck")
    next(ck.glob("train-*.safetensors")).unlink()
    assert_drill(pretrain.__main__.main, ["--upstream", "mockingjay", "--corpus", tmp_path / "nowhere", "--out", ck,
                                          "--resume"], capsys, ["train-", "is missing"], tmp_path)
    with pytest.raises(CheckpointError, match="train-.*missing"):
        load_checkpoint(ck, ("model", "train"))


PRETRAIN_FLAG_DRILLS = {
    "unknown upstream": (["--upstream", "bert"], ["--upstream bert", "valid:"]),
    "not pretrainable": (["--upstream", "mel"], ["--upstream mel", "pretrainable: mockingjay, aalbert"]),
    "torchaudio model": (["--upstream", "wav2vec2_base"], ["--upstream wav2vec2_base", "pretrainable: mockingjay"]),
    "steps 0": (["--steps", "0"], ["--steps must be >= 1"]),
    "batch size 0": (["--batch-size", "0"], ["--batch-size must be >= 1"]),
    "lr not finite": (["--lr", "nan"], ["--lr must be a finite number > 0"]),
    "lr negative": (["--lr", "-0.1"], ["--lr must be a finite number > 0"]),
    "bad device": (["--device", "gpu0"], ["--device 'gpu0'"]),
    "stop before start": (["--stop-at-step", "0"], ["--stop-at-step"]),
    "missing corpus": (["--corpus", "nowhere"], ["nowhere"]),
    "out is a file": (["--out", "afile"], ["--out afile", "not a directory"]),
}


@pytest.mark.parametrize("name", list(PRETRAIN_FLAG_DRILLS))
def test_bad_pretrain_flags(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    extra, culprits = PRETRAIN_FLAG_DRILLS[name]
    argv = ["--upstream", "mockingjay", "--corpus", "nowhere", "--out", "out", *extra]
    assert_drill(pretrain.__main__.main, argv, capsys, culprits, tmp_path)


def test_pretrain_audio_list_not_utf8(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "list.txt").write_bytes(b"a.wav\ncaf\xe9.wav\n")
    assert_drill(pretrain.__main__.main, ["--upstream", "mockingjay", "--audio", "list.txt", "--out", "out"], capsys,
                 ["list.txt:2:", "audio list is not UTF-8"], tmp_path)


def test_pretrain_on_nan_audio_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "audio").mkdir()
    _wav(tmp_path / "audio" / "ok.wav", 16000)
    _nan_wav(tmp_path / "audio" / "nan.wav")
    assert_drill(pretrain.__main__.main, ["--upstream", "mockingjay", "--audio", "audio", "--out", "out", "--steps", "1"],
                 capsys, ["nan.wav", "NaN/inf"], tmp_path)


# ---------------------------------------------------------------- s3prl import and hostile checkpoints

def s3prl_states(share: bool = False) -> dict:
    """An s3prl Mockingjay checkpoint dict (our micro encoder's weights under s3prl names), no s3prl needed."""
    from dataclasses import replace

    torch.manual_seed(0)
    cfg = replace(MICRO, input_dim=80, share_layers=share)
    enc = TransformerEncoder(cfg)
    t = {"hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
         "intermediate_size": cfg.intermediate_size, "hidden_act": "gelu", "share_layer": share,
         "pre_layer_norm": False}
    audio = {"target_level": -25, "n_mels": 80, "input": {"feat_type": "mel", "delta": 0, "cmvn": True}}
    return {"Transformer": ours_to_s3prl(enc.state_dict(), cfg), "Upstream_Config": {"transformer": t, "audio": audio},
            "Step": 10}


class Payload:
    """Pickles as a call of exec: a plain unpickler runs it and the marker file appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _place(states: dict, field: str, payload: Payload) -> None:
    if field == "Transformer":
        states["Transformer"] = payload
    elif field == "a weight":
        k = sorted(states["Transformer"])[0]
        states["Transformer"][k] = payload
    elif field == "SpecHead":
        states["SpecHead"] = {"output.weight": payload}
    elif field == "config value":
        states["Upstream_Config"]["transformer"]["hidden_size"] = payload
    elif field == "config key":
        states["Upstream_Config"]["audio"][payload] = 1
    elif field == "nested config list":
        states["Upstream_Config"]["task"] = {"layers": [1, [payload]]}
    elif field == "Step":
        states["Step"] = payload
    elif field in ("Optimizer", "Args"):
        states[field] = {"state": {0: payload}}
    elif field == "top-level key":
        states[payload] = "x"
    else:
        raise AssertionError(field)


HOSTILE_FIELDS = ["Transformer", "a weight", "SpecHead", "config value", "config key", "nested config list", "Step",
                  "Optimizer", "Args", "top-level key"]
HARMLESS_FIELDS = {"Step", "Optimizer", "Args", "top-level key"}  # fields the import does not use


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("field", HOSTILE_FIELDS)
def test_pickle_payload_never_executes(field, zip_format, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    states = s3prl_states()
    _place(states, field, Payload(marker))
    path = tmp_path / "hostile.ckpt"
    torch.save(states, path, _use_new_zipfile_serialization=zip_format)
    torch.load(path, weights_only=False)  # the payload is live: a plain unpickler runs it
    assert marker.read_text() == "pwned"
    marker.unlink()

    loaded = safe_torch_load(path)
    assert not marker.exists()
    assert any(isinstance(v, Placeholder) for v in _walk(loaded))
    argv = [str(path), str(tmp_path / "out")]
    if field in HARMLESS_FIELDS:
        assert pretrain.import_s3prl.main(argv) == 0 and load_upstream(tmp_path / "out").num_hidden_states == 2
    else:
        line = assert_drill(pretrain.import_s3prl.main, argv, capsys, ["hostile.ckpt"], tmp_path)
        assert "builtins.exec" in line, line  # names what the field held
    assert not marker.exists()


def _walk(obj):
    yield obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(k)
            yield from _walk(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _walk(v)


def test_raw_pickle_and_tar_files_are_refused_inertly(tmp_path, capsys, monkeypatch):
    import pickle
    import tarfile

    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    (tmp_path / "raw.ckpt").write_bytes(pickle.dumps({"Transformer": Payload(marker)}))
    assert_drill(pretrain.import_s3prl.main, [tmp_path / "raw.ckpt", tmp_path / "out"], capsys,
                 ["cannot read s3prl checkpoint", "raw.ckpt"], tmp_path)
    (tmp_path / "storages").write_bytes(pickle.dumps(Payload(marker)))
    with tarfile.open(tmp_path / "old.ckpt", "w") as tar:
        tar.add(tmp_path / "storages", arcname="storages")
    assert_drill(pretrain.import_s3prl.main, [tmp_path / "old.ckpt", tmp_path / "out"], capsys,
                 ["old.ckpt", "tar archive"], tmp_path)
    assert not marker.exists()


def _bad_weights(states: dict) -> None:
    states["Upstream_Config"]["transformer"]["intermediate_size"] = 128


IMPORT_DRILLS = {
    "not a checkpoint": (lambda p: p.write_bytes(b"not a checkpoint at all"), ["cannot read s3prl checkpoint"]),
    "truncated": (lambda p: (torch.save(s3prl_states(), p), p.write_bytes(p.read_bytes()[:2000])),
                  ["cannot read s3prl checkpoint"]),
    "no model config": (lambda p: torch.save({"Transformer": s3prl_states()["Transformer"]}, p), ["no model config"]),
    "weights do not match the config": (lambda p: torch.save(_with(s3prl_states(), _bad_weights), p),
                                        ["weights do not match its transformer config"]),
    "integer weights": (lambda p: torch.save(_with(s3prl_states(), lambda s: s["Transformer"].update(
        {k: v.to(torch.int32) for k, v in s["Transformer"].items()})), p), ["expected floating-point weights"]),
    "config of the wrong type": (lambda p: torch.save(_with(s3prl_states(), lambda s: s["Upstream_Config"][
        "transformer"].update(num_hidden_layers=[1])), p), ["bad transformer config"]),
}


def _with(states: dict, edit: Callable[[dict], None]) -> dict:
    edit(states)
    return states


@pytest.mark.parametrize("name", list(IMPORT_DRILLS))
def test_bad_s3prl_files(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make, culprits = IMPORT_DRILLS[name]
    make(tmp_path / "in.ckpt")
    assert_drill(pretrain.import_s3prl.main, [tmp_path / "in.ckpt", tmp_path / "out"], capsys,
                 ["in.ckpt", *culprits], tmp_path)


def test_import_never_overwrites_without_force(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save(s3prl_states(), tmp_path / "in.ckpt")
    assert pretrain.import_s3prl.main([str(tmp_path / "in.ckpt"), str(tmp_path / "out")]) == 0
    assert_drill(pretrain.import_s3prl.main, [tmp_path / "in.ckpt", tmp_path / "out"], capsys,
                 ["already holds a checkpoint", "--force"], tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    assert_drill(pretrain.import_s3prl.main, [tmp_path / "in.ckpt", tmp_path / "mine"], capsys,
                 ["non-empty directory"], tmp_path)
    assert_drill(pretrain.import_s3prl.main, [tmp_path / "nowhere.ckpt", tmp_path / "o2"], capsys,
                 ["nowhere.ckpt", "not found"], tmp_path)
    assert pretrain.import_s3prl.main([str(tmp_path / "in.ckpt"), str(tmp_path / "out"), "--force"]) == 0
    new = read_meta(tmp_path / "out")["files"]["model"]["file"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["checkpoint.json", new]


# ---------------------------------------------------------------- kill drills (SIGKILL, then rerun)

ROOT = Path(__file__).resolve().parent.parent
PRETRAIN = PretrainConfig(steps=6, batch_size=4, crop_frames=50, ckpt_interval=2, eval_interval=2, precision="float32")


def arm_kill(module: str, attr: str, n: int, after: bool) -> None:
    """SIGKILL this process at the n-th call of module.attr: just before it runs, or right after it returned."""
    mod = importlib.import_module(module)
    real, calls = getattr(mod, attr), [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n and not after:
            os.kill(os.getpid(), signal.SIGKILL)
        out = real(*args, **kwargs)
        if calls[0] == n and after:
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    setattr(mod, attr, wrapper)


def killed(job: str, args: list[str], module: str, attr: str, n: int, after: bool = False) -> None:
    """Run job(*args) (a function of this file) in a fresh process that is SIGKILLed at the n-th module.attr."""
    code = (f"import sys, torch; sys.path.insert(0, {str(ROOT)!r}); torch.set_num_threads(2)\n"
            f"from tests.test_drills import arm_kill, {job}\n"
            f"arm_kill({module!r}, {attr!r}, {n}, {after})\n{job}(*{args!r})\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stderr[-3000:])


def temporary_files(*roots: Path) -> list[str]:
    """What an interrupted writer leaves: temp files of atomic writes, staging, partial and backup folders."""
    return sorted(str(p) for root in roots for p in Path(root).rglob("*")
                  if p.name.endswith((".tmp", ".partial", ".old")) or ".partial-" in p.name)


def job_prepare(manifest: str, out: str) -> None:
    corpora.prepare_corpus("manifest", out, manifest=manifest, progress=False, workers=2)


def job_pretrain(corpus: str, out: str) -> None:
    run_pretraining("mockingjay:small", corpus, Path(out), PRETRAIN, resume=True, device="cpu", encoder=MICRO,
                    show_progress=False)


def harness_config(corpus: str, tmp: str):
    import benchmark.run.runner as runner
    from benchmark.plan.config import BenchmarkConfig
    from downstream.config import AdamW, Minibatch, ProbeConfig

    return runner, BenchmarkConfig(
        corpus=corpus, upstreams=("mel", "aalbert_random"), tasks=("phone_linear",), modes="last,weighted_sum",
        fractions=(0.5, 1.0), seeds=2, probe=ProbeConfig(Minibatch(AdamW(lr=1e-2), eval_every=3, batch_size=4),
                                                         max_steps=6),
        results_dir=Path(tmp) / "results", cache_dir=Path(tmp) / "cache", runs_dir=Path(tmp) / "runs",
        progress=False, report=False, probe_workers=1, finetune_ends=False)


def job_benchmark(corpus: str, tmp: str) -> None:
    runner, cfg = harness_config(corpus, tmp)
    runner.run_benchmark(cfg, log=lambda *_: None)


def test_kill_during_corpus_preparation(tmp_path):
    rows = _good(tmp_path)
    m = _write(tmp_path, rows)
    job_prepare(str(m), str(tmp_path / "ref"))
    killed("job_prepare", [str(m), str(tmp_path / "out")], "corpora.verify", "decode_problem", 4)
    assert (tmp_path / ".out.partial").is_dir() and not (tmp_path / "out").exists()  # killed half-way
    job_prepare(str(m), str(tmp_path / "out"))
    for name in ("pretrain.jsonl", "train.jsonl", "dev.jsonl", "test.jsonl"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
    a, b = (corpora.load_corpus(tmp_path / d) for d in ("out", "ref"))
    assert (a.phones, a.speakers, a.info["config_hash"]) == (b.phones, b.speakers, b.info["config_hash"])
    assert temporary_files(tmp_path) == []


def _loss_rows(ck: Path) -> list[tuple]:
    with open(ck / "loss.csv", newline="") as f:  # timing columns aside
        return [(r["step"], r["epoch"], r["lr"], r["train_loss"], r["val_loss"], r["frames"]) for r in csv.DictReader(f)]


def test_kill_during_pretraining(tmp_path):
    corpus = make_pretrain_corpus(tmp_path / "corpus", n_utts=6, seconds=(0.8, 1.0))
    job_pretrain(str(corpus), str(tmp_path / "ref"))
    # killed while saving the step-4 checkpoint: its model weights are in a temporary file, step 2 is the last done
    killed("job_pretrain", [str(corpus), str(tmp_path / "ck")], "upstream.checkpoint", "save_file", 3, after=True)
    assert read_meta(tmp_path / "ck")["step"] == 2 and temporary_files(tmp_path / "ck")
    job_pretrain(str(corpus), str(tmp_path / "ck"))  # resume=True: continues from step 2
    (meta, got), (_, ref) = load_checkpoint(tmp_path / "ck", ("model", "train")), load_checkpoint(tmp_path / "ref", ("model", "train"))
    assert meta["step"] == 6 and got["model"].keys() == ref["model"].keys()
    assert all(torch.equal(got["model"][k], ref["model"][k]) for k in ref["model"])
    assert _loss_rows(tmp_path / "ck") == _loss_rows(tmp_path / "ref")  # no duplicate or missing step
    assert temporary_files(tmp_path) == [] and len(list((tmp_path / "ck").glob("*.safetensors"))) == 2


@pytest.fixture(scope="module")
def harness_reference(tmp_path_factory, probe_corpus) -> dict[str, tuple[str, str]]:
    tmp = tmp_path_factory.mktemp("harness-ref")
    job_benchmark(str(probe_corpus), str(tmp))
    return _metrics(tmp)


def _metrics(tmp: Path) -> dict[str, tuple[str, str]]:
    from benchmark.record.results import read_rows

    rows = read_rows(tmp / "results" / "runs.csv")
    assert len({r["run_id"] for r in rows}) == len(rows), "duplicate rows"
    return {r["run_id"]: (r["dev_metric"], r["test_metric"]) for r in rows}


@pytest.fixture(scope="module")
def killed_extraction(tmp_path_factory, probe_corpus) -> Path:
    tmp = tmp_path_factory.mktemp("harness-killed-extraction")
    killed("job_benchmark", [str(probe_corpus), str(tmp)], "os", "pwrite", 3)  # mid-way through mel's train split
    assert not (tmp / "results" / "runs.csv").exists()
    job_benchmark(str(probe_corpus), str(tmp))
    return tmp


def test_kill_during_feature_extraction(killed_extraction, harness_reference):
    assert _metrics(killed_extraction) == harness_reference
    assert temporary_files(killed_extraction / "results") == []


def test_kill_during_feature_extraction_leaves_no_partial_cache(killed_extraction):
    assert temporary_files(killed_extraction / "cache") == []


def test_kill_during_probe_sweep(tmp_path, probe_corpus, harness_reference):
    killed("job_benchmark", [str(probe_corpus), str(tmp_path)], "benchmark.run.runner", "append_row", 3, after=True)
    assert len(_metrics(tmp_path)) == 3  # three complete rows, then the kill
    job_benchmark(str(probe_corpus), str(tmp_path))
    assert _metrics(tmp_path) == harness_reference
    assert temporary_files(tmp_path) == []
