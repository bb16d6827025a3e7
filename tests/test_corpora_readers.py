"""Real-corpus readers end to end on tiny fake trees: LibriSpeech, TIMIT (NIST SPHERE), user CSV/JSONL manifests."""
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from corpora import load_corpus, prepare_corpus
from corpora.__main__ import main
from core.frames import LOG_MEL
from corpora.labels import frame_labels

SR = 16000


def _wav(path: Path, n: int, rng, fmt: str | None = None, sr: int = SR) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), (0.1 * rng.standard_normal(n)).astype(np.float32), sr, format=fmt, subtype="PCM_16")


def _libri(root: Path, rng, speakers=("11", "22"), per=4, subset="train-clean-100") -> list[str]:
    ids = []
    for spk in speakers:
        for k in range(per):
            uid = f"{spk}-100-{k:04d}"
            _wav(root / subset / spk / "100" / f"{uid}.flac", 3200 + 160 * k, rng)
            ids.append(uid)
    return ids


def test_librispeech_closed_set_without_labels(tmp_path, rng):
    _libri(tmp_path / "LS", rng)
    c = prepare_corpus("librispeech", tmp_path / "out", root=str(tmp_path / "LS"), progress=False)
    assert c.speakers == ("11", "22") and c.phones == ()
    for s in ("train", "dev", "test"):
        assert {u.speaker for u in c.utterances(s)} == {"11", "22"}
    assert sum(len(c.utterances(s)) for s in ("train", "dev", "test")) == 8


def test_librispeech_with_cpc_labels_and_splits(tmp_path, rng):
    ids = _libri(tmp_path / "LS", rng, per=10)
    _libri(tmp_path / "LS", rng, speakers=("33",), per=2, subset="train-clean-360")
    lines = []
    for k, uid in enumerate(ids):
        n_kaldi = (3200 + 160 * (k % 10) - 400) // 160 + 1
        lines.append(uid + " " + " ".join(str((j // 3) % 41) for j in range(n_kaldi)))
    (tmp_path / "ali.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "splits").mkdir()
    train = [u for u in ids if not u.endswith(("8", "9"))]
    (tmp_path / "splits" / "train_split.txt").write_text("\n".join(train) + "\n")
    (tmp_path / "splits" / "test_split.txt").write_text("\n".join(u for u in ids if u not in train) + "\n")
    c = prepare_corpus("librispeech", tmp_path / "out", root=str(tmp_path / "LS"), alignments=str(tmp_path / "ali.txt"),
                       split_dir=str(tmp_path / "splits"), pretrain_subsets=("train-clean-360",), progress=False)
    tr, dv, te = c.utterances("train"), c.utterances("dev"), c.utterances("test")
    assert (len(tr), len(dv), len(te)) == (14, 2, 4)  # 16 listed -> 90/10 with seed 1337
    assert [u.speaker for u in c.utterances("pretrain")] == ["33", "33"]
    assert c.phones[:3] == ("0", "1", "2")  # numeric labels in numeric order
    u = next(x for x in tr if x.id == "11-100-0005")
    lab = frame_labels(u, {p: int(p) for p in c.phones})
    assert lab[:7].tolist() == [0, 0, 0, 1, 1, 1, 2]  # front-end frame j gets Kaldi frame j's label
    # idempotent, and the same seed gives the same split
    again = prepare_corpus("librispeech", tmp_path / "out", root=str(tmp_path / "LS"),
                           alignments=str(tmp_path / "ali.txt"), split_dir=str(tmp_path / "splits"),
                           pretrain_subsets=("train-clean-360",), progress=False)
    assert [u.id for u in again.utterances("dev")] == [u.id for u in dv]


def test_librispeech_cpc_silence_label_is_found_and_left_out_of_phone_sequences(tmp_path, rng):
    """CPC's frame labels are bare integers: the label that opens and closes the utterances is silence; it is
    recorded in corpus.json and phone_ctc's sequences and vocabulary leave it out (frame probes keep every label)."""
    from downstream.tasks import get_task, phone_classes

    ids = _libri(tmp_path / "LS", rng, per=5)
    lines = []
    for k, uid in enumerate(ids):
        n = (3200 + 160 * (k % 5) - 400) // 160 + 1
        body = [str(5 + (j // 2) % 7) for j in range(n - 6)]  # phones 5..11, two frames each
        lines.append(" ".join([uid, "3", "3", "3", *body, "3", "3", "3"]))
    (tmp_path / "ali.txt").write_text("\n".join(lines) + "\n")
    c = prepare_corpus("librispeech", tmp_path / "out", root=str(tmp_path / "LS"), alignments=str(tmp_path / "ali.txt"),
                       progress=False)
    assert c.info["silence"] == ["3"] and "3" in c.phones and "3" not in phone_classes(c)
    task = get_task("phone_ctc")
    seqs = task.labels.make(c, c.utterances("train"), "train", LOG_MEL)
    vocab = phone_classes(c)
    assert all(len(q) and {vocab[i] for i in q} <= {str(p) for p in range(5, 12)} for q in seqs)
    # without a label at both edges of nearly every utterance, none is declared silence
    (tmp_path / "ali.txt").write_text("\n".join(ln.replace(" 3 3 3", " 4 4 4", 1) if i % 3 == 0 else ln
                                                for i, ln in enumerate(lines)) + "\n")
    other = prepare_corpus("librispeech", tmp_path / "out2", root=str(tmp_path / "LS"),
                           alignments=str(tmp_path / "ali.txt"), progress=False)
    assert other.info["silence"] == []


PHN = [("h#", 0, 1000), ("sh", 1000, 2500), ("ix", 2500, 3000), ("q", 3000, 3200), ("hv", 3200, 4000),
       ("eh", 4000, 5200), ("dcl", 5200, 5600), ("h#", 5600, 6400)]


def _timit(root: Path, rng) -> None:
    spks = [("TRAIN", "DR1", "FCJF0"), ("TRAIN", "DR2", "MABC0"), ("TEST", "DR1", "MDAB0"), ("TEST", "DR1", "FAKS0"),
            ("TEST", "DR3", "MZZZ0")]
    for part, dr, spk in spks:
        for utt in ("SI1027", "SX127", "SA1"):
            d = root / part / dr / spk
            _wav(d / f"{utt}.WAV", 6400, rng, fmt="NIST")
            (d / f"{utt}.PHN").write_text("".join(f"{s} {e} {p}\n" for p, s, e in PHN))


def test_timit_sphere_fold_and_splits(tmp_path, rng):
    _timit(tmp_path / "TIMIT", rng)
    c = prepare_corpus("timit", tmp_path / "out", root=str(tmp_path / "TIMIT"), progress=False)
    tr, dv, te = c.utterances("train"), c.utterances("dev"), c.utterances("test")
    assert len(tr) == 4 and {u.speaker for u in te} == {"MDAB0"} and {u.speaker for u in dv} == {"FAKS0", "MZZZ0"}
    assert not any("SA1" in u.id for u in tr + dv + te)
    u = tr[0]
    assert [s.phone for s in u.alignment] == ["sil", "sh", "ih", "hh", "eh", "sil", "sil"]  # q dropped, folded
    assert c.info["closed_set_speakers"] is False
    k50 = prepare_corpus("timit", tmp_path / "out50", root=str(tmp_path / "TIMIT"), dev="kaldi50", progress=False)
    assert {u.speaker for u in k50.utterances("dev")} == {"FAKS0"}


TEXTGRID = '''File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = 0.4
tiers? <exists>
size = 2
item []:
    item [1]:
        class = "IntervalTier"
        name = "words"
        xmin = 0
        xmax = 0.4
        intervals: size = 1
        intervals [1]:
            xmin = 0
            xmax = 0.4
            text = "hi"
    item [2]:
        class = "IntervalTier"
        name = "phones"
        xmin = 0
        xmax = 0.4
        intervals: size = 3
        intervals [1]:
            xmin = 0
            xmax = 0.1
            text = ""
        intervals [2]:
            xmin = 0.1
            xmax = 0.25
            text = "HH"
        intervals [3]:
            xmin = 0.25
            xmax = 0.4
            text = "AY1"
'''


def test_user_csv_manifest_with_textgrid_and_lab(tmp_path, rng):
    rows = ["path,speaker,alignment"]
    for spk in ("ann", "bob"):
        for k in range(4):
            _wav(tmp_path / "wavs" / f"{spk}{k}.wav", 6400, rng)
            if k % 2:
                (tmp_path / "wavs" / f"{spk}{k}.TextGrid").write_text(TEXTGRID)
                rows.append(f"wavs/{spk}{k}.wav,{spk},wavs/{spk}{k}.TextGrid")
            else:
                (tmp_path / "wavs" / f"{spk}{k}.lab").write_text("0 0.1 sil\n0.1 0.25 HH\n0.25 0.4 AY1\n")
                rows.append(f"wavs/{spk}{k}.wav,{spk},wavs/{spk}{k}.lab")
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    c = prepare_corpus("manifest", tmp_path / "out", manifest=str(tmp_path / "list.csv"), progress=False)
    assert c.phones == ("AY1", "HH", "sil") and c.speakers == ("ann", "bob")
    utts = [u for s in ("train", "dev", "test") for u in c.utterances(s)]
    assert len(utts) == 8 and all(u.alignment[1] == ("HH", 1600, 4000) or u.alignment[1].start == 1600 for u in utts)
    assert {u.speaker for u in c.utterances("test")} == {"ann", "bob"}


def test_user_jsonl_manifest_with_splits_via_cli(tmp_path, rng, capsys):
    lines = []
    for k, split in enumerate(["train", "train", "dev", "test", "pretrain"]):
        _wav(tmp_path / f"a{k}.flac", 4000, rng)
        spk = "z" if split == "pretrain" else "s1"
        lines.append(json.dumps({"path": str(tmp_path / f"a{k}.flac"), "speaker": spk, "split": split,
                                 "id": f"u{k}", "sample_rate": 16000}))
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    rc = main(["prepare", "manifest", "--out", str(tmp_path / "out"), "--manifest", str(tmp_path / "m.jsonl"),
               "--no-progress"])
    assert rc == 0 and "manifest corpus ready" in capsys.readouterr().out
    c = load_corpus(tmp_path / "out")
    assert [u.id for u in c.utterances("pretrain")] == ["u4"] and len(c.utterances("train")) == 2
