"""Bad input: every problem is reported with its file and line, nothing is written, earlier output stays intact."""
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from corpora import load_corpus, prepare_corpus
from corpora.__main__ import main
from corpora.validate import CorpusError

SR = 16000


def _wav(path: Path, n: int = 4000, sr: int = SR) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.full(n, 0.05, np.float32), sr, subtype="PCM_16")


def _good(tmp: Path) -> list[dict]:
    rows = []
    for spk in ("a", "b"):
        for k in range(3):
            p = tmp / f"{spk}{k}.wav"
            _wav(p)
            (tmp / f"{spk}{k}.lab").write_text("0 0.1 x\n0.1 0.25 y\n")
            rows.append({"path": str(p), "speaker": spk, "split": ["train", "dev", "test"][k], "id": f"{spk}{k}",
                         "alignment": str(tmp / f"{spk}{k}.lab")})
    return rows


def _write(tmp: Path, rows: list[dict]) -> Path:
    m = tmp / "m.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return m


def _fails(tmp: Path, rows: list[dict], *patterns: str) -> str:
    m = _write(tmp, rows)
    with pytest.raises(CorpusError) as e:
        prepare_corpus("manifest", tmp / "out", manifest=str(m), progress=False)
    msg = str(e.value)
    for p in patterns:
        assert p in msg, msg
    assert not (tmp / "out").exists() and not (tmp / ".out.partial").exists()
    return msg


def test_missing_and_corrupt_and_empty_audio(tmp_path):
    rows = _good(tmp_path)
    rows[0]["path"] = str(tmp_path / "nope.wav")
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    rows[1]["path"] = str(tmp_path / "bad.wav")
    _wav(tmp_path / "empty.wav", 0)
    rows[2]["path"] = str(tmp_path / "empty.wav")
    msg = _fails(tmp_path, rows, "m.jsonl:1: audio file not found", "m.jsonl:2: unreadable or corrupt audio",
                 "m.jsonl:3: zero-length audio")
    assert "3 problem(s)" in msg


def _truncated_flac(path: Path) -> None:
    sf.write(str(path), np.random.default_rng(0).standard_normal(48000).astype(np.float32) * 0.1, SR, format="FLAC")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _nan_wav(path: Path) -> None:
    x = np.full(8000, 0.1, np.float32)
    x[100:200] = np.nan
    sf.write(str(path), x, SR, subtype="FLOAT")


def test_audio_is_decoded_by_default_and_every_problem_listed_at_once(tmp_path):
    rows = _good(tmp_path)
    _truncated_flac(tmp_path / "t.flac")
    _nan_wav(tmp_path / "nan.wav")
    _wav(tmp_path / "short.wav", 100)
    for k, name in enumerate(("t.flac", "nan.wav", "short.wav")):
        rows[k]["path"] = str(tmp_path / name)
    msg = _fails(tmp_path, rows, "m.jsonl:1: undecodable audio (corrupt or truncated)", "t.flac",
                 "m.jsonl:2: audio", "nan.wav holds 100 NaN/inf samples",
                 "m.jsonl:3: audio too short", "short.wav holds 100 samples (6.2 ms)")
    assert "3 problem(s)" in msg


def test_no_verify_audio_reads_headers_only(tmp_path):
    rows = _good(tmp_path)
    _nan_wav(tmp_path / "nan.wav")
    rows[0]["path"] = str(tmp_path / "nan.wav")
    m = _write(tmp_path, rows)
    c = prepare_corpus("manifest", tmp_path / "out", manifest=str(m), verify_audio=False, progress=False)
    assert c.info["audio_verified"] is False and c.info["verify_seconds"] is None
    # the same options on the prepared directory load it: verification is not part of the config
    assert prepare_corpus("manifest", tmp_path / "out", manifest=str(m), progress=False).info["audio_verified"] is False


def test_truncated_wav_is_caught_by_decoding(tmp_path):
    rows = _good(tmp_path)
    p = tmp_path / "cut.wav"
    sf.write(str(p), np.full(16000, 0.1, np.float32), SR, subtype="FLOAT")
    p.write_bytes(p.read_bytes()[:-4000])  # the header still says 16000 samples
    rows[0]["path"] = str(p)
    _fails(tmp_path, rows, "m.jsonl:1:", "cut.wav")


def test_sample_rate_mismatch_and_alignment_errors(tmp_path):
    rows = _good(tmp_path)
    rows[0]["sample_rate"] = 8000
    (tmp_path / "late.lab").write_text("0 0.1 x\n0.1 0.5 y\n")  # 0.5 s > 0.25 s of audio
    rows[1]["alignment"] = str(tmp_path / "late.lab")
    (tmp_path / "ovl.lab").write_text("0 0.1 x\n0.05 0.2 y\n")
    rows[2]["alignment"] = str(tmp_path / "ovl.lab")
    (tmp_path / "neg.lab").write_text("-0.1 0.1 x\n0.1 0.1 y\n")
    rows[3]["alignment"] = str(tmp_path / "neg.lab")
    _fails(tmp_path, rows, "m.jsonl:1: sample-rate mismatch", "m.jsonl:2: segment 1 ('y') ends at sample 8000, past the end",
           "m.jsonl:3: segment 1 ('y') starting at 800 overlaps", "m.jsonl:4: segment 0 ('x') has a negative start",
           "m.jsonl:4: segment 1 ('y') is empty")


def test_duplicate_ids_and_unseen_labels(tmp_path):
    rows = _good(tmp_path)
    rows[4]["id"] = "a0"
    (tmp_path / "new.lab").write_text("0 0.1 x\n0.1 0.25 zz\n")
    rows[2]["alignment"] = str(tmp_path / "new.lab")
    rows[5]["speaker"] = "stranger"
    _fails(tmp_path, rows, "m.jsonl:5: duplicate utterance id 'a0' (first at", "m.jsonl:3: phone label(s) ['zz'] never occur",
           "m.jsonl:6: speaker 'stranger' does not occur in the train split")


def test_bad_rows_and_columns(tmp_path):
    rows = _good(tmp_path)
    m = _write(tmp_path, rows)
    m.write_text(m.read_text() + "{not json\n" + json.dumps({"path": "x.wav"}) + "\n"
                 + json.dumps({"path": "x.wav", "speaker": "a", "split": "valid"}) + "\n")
    with pytest.raises(CorpusError) as e:
        prepare_corpus("manifest", tmp_path / "out", manifest=str(m), progress=False)
    assert "m.jsonl:7: invalid JSON" in str(e.value) and "m.jsonl:8: missing required field(s) ['speaker']" in str(e.value)
    assert "m.jsonl:9: unknown split 'valid'" in str(e.value)
    csv = tmp_path / "m.csv"
    csv.write_text("file,speaker\nx.wav,a\n")
    with pytest.raises(ValueError, match="m.csv:1: CSV header lacks required column 'path'"):
        prepare_corpus("manifest", tmp_path / "o2", manifest=str(csv), progress=False)


def test_failed_rebuild_leaves_earlier_output_intact(tmp_path):
    rows = _good(tmp_path)
    m = _write(tmp_path, rows)
    first = prepare_corpus("manifest", tmp_path / "out", manifest=str(m), progress=False)
    before = {p.name: p.read_bytes() for p in first.root.iterdir()}
    rows[0]["path"] = str(tmp_path / "gone.wav")
    _write(tmp_path, rows)
    with pytest.raises(CorpusError):
        prepare_corpus("manifest", tmp_path / "out", manifest=str(m), force=True, progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert load_corpus(tmp_path / "out").speakers == ("a", "b")


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    m = _write(tmp_path, _good(tmp_path))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    with pytest.raises(ValueError, match="non-empty directory without corpus.json"):
        prepare_corpus("manifest", tmp_path / "mine", manifest=str(m), progress=False)
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "precious"


def test_cli_bad_input_exits_nonzero_with_one_line_summary(tmp_path, capsys):
    rows = _good(tmp_path)
    rows[1]["path"] = str(tmp_path / "nope.wav")
    m = _write(tmp_path, rows)
    assert main(["prepare", "manifest", "--out", str(tmp_path / "out"), "--manifest", str(m), "--no-progress"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot prepare corpus 'manifest'")
    assert "m.jsonl:2: audio file not found" in err[0] and err[0].endswith("(nothing was written)")
    rows[4]["path"] = str(tmp_path / "gone.wav")
    _write(tmp_path, rows)
    assert main(["prepare", "manifest", "--out", str(tmp_path / "out"), "--manifest", str(m), "--no-progress"]) == 2
    err = capsys.readouterr().err.splitlines()  # several problems: a summary line, then one line each
    assert err[0].endswith("2 problem(s); nothing was written:") and "m.jsonl:5: audio file not found" in err[2]
    assert main(["prepare", "librispeech", "--out", str(tmp_path / "o"), "--root", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.startswith("error: --root")
    with pytest.raises(SystemExit):
        main(["prepare", "wsj", "--out", "x"])


def test_verify_command_decodes_a_prepared_corpus(tmp_path, capsys):
    rows = _good(tmp_path)
    m = _write(tmp_path, rows)
    assert main(["prepare", "manifest", "--out", str(tmp_path / "out"), "--manifest", str(m), "--no-progress",
                 "--no-verify-audio"]) == 0
    assert "--no-verify-audio: audio headers are read, samples are not decoded" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "out"), "--no-progress"]) == 0
    assert "6 files, 0.00 h of audio decoded" in capsys.readouterr().out
    x = np.full(4000, 0.05, np.float32)
    x[7] = np.inf
    sf.write(str(tmp_path / "b1.wav"), x, SR, subtype="FLOAT")  # damaged after preparation
    assert main(["verify", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "dev.jsonl: utterance b1: audio" in err[0] and "holds 1 NaN/inf samples" in err[0]
