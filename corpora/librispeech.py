"""prepare_librispeech: the LibriSpeech flac tree, optionally with the CPC 41-phone frame labels and split lists.

With `alignments` (converted_aligned_phones.txt: `utt-id l1 l2 ...`, one label per 10 ms frame) and
`split_dir` (train_split.txt / test_split.txt), the probe splits follow the CPC setup used by s3prl: the
train list is shuffled with seed 1337 and split 90/10 into train/dev, the test list is test. Without
split files every speaker's utterances are split closed-set (corpora.splits). Label k covers samples
[160k, 160k+160), so front-end frame j (centred on sample 160j) gets label j (see docs/corpora.md).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from core.config import config_from_dict, config_to_dict
from core.frames import HOP, SAMPLE_RATE
from core.io import decode_utf8, read_text
from corpora import build
from corpora.manifest import Corpus, Segment, Utterance
from corpora.splits import closed_set_splits
from corpora.validate import Issues, probe_audio


@dataclass(frozen=True)
class LibriSpeechConfig:
    root: str
    subsets: tuple[str, ...] = ("train-clean-100",)
    alignments: str | None = None  # converted_aligned_phones.txt
    split_dir: str | None = None  # folder with train_split.txt and test_split.txt
    pretrain_subsets: tuple[str, ...] = ()
    seed: int = 1337
    dev_fraction: float = 0.1
    test_fraction: float = 0.1  # only without split files


def read_frame_labels(path: Path, issues: Issues) -> dict[str, tuple[tuple[Segment, ...], str]]:
    """{utt id: (segments, where)} from converted_aligned_phones.txt; runs of one label become one segment."""
    out: dict[str, tuple[tuple[Segment, ...], str]] = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            parts = decode_utf8(raw, path, "alignment file", lineno).split()
            if not parts:
                continue
            where = f"{path}:{lineno}"
            if len(parts) < 2:
                issues.add(where, f"utterance {parts[0]!r} has no frame labels")
                continue
            if parts[0] in out:
                issues.add(where, f"duplicate utterance id {parts[0]!r} (first at {out[parts[0]][1]})")
                continue
            segs: list[Segment] = []
            for k, lab in enumerate(parts[1:]):
                if segs and segs[-1].phone == lab:
                    segs[-1] = Segment(lab, segs[-1].start, (k + 1) * HOP)
                else:
                    segs.append(Segment(lab, k * HOP, (k + 1) * HOP))
            out[parts[0]] = (tuple(segs), where)
    return out


# an utterance of LibriSpeech is a stretch of read speech cut at pauses, so its first and last frames are silence;
# the CPC frame labels are bare integers, so the label of silence is found that way (`silence_label`)
SILENCE_EDGE_SHARE = 0.9


def silence_label(labels: dict[str, tuple[tuple[Segment, ...], str]]) -> str | None:
    """The frame label that both opens and closes at least SILENCE_EDGE_SHARE of the labelled utterances: silence,
    which a phone sequence drops (downstream.tasks.silence). None when no label does."""
    edges: dict[str, int] = {}
    for segs, _ in labels.values():
        if segs and segs[0].phone == segs[-1].phone:
            edges[segs[0].phone] = edges.get(segs[0].phone, 0) + 1
    if not edges:
        return None
    label, n = max(edges.items(), key=lambda kv: kv[1])
    return label if n >= SILENCE_EDGE_SHARE * len(labels) else None


def _read_list(path: Path, issues: Issues) -> list[tuple[str, str]]:
    if not path.is_file():
        issues.add(str(path), "split list not found")
        return []
    return [(ln.split()[0], f"{path}:{i}") for i, ln in enumerate(read_text(path, "split list").splitlines(), 1)
            if ln.strip()]


def prepare_librispeech(out_dir: str | Path, force: bool = False, progress: bool = True, verify_audio: bool = True,
                        workers: int | None = None, **options: Any) -> Corpus:
    cfg = config_from_dict(LibriSpeechConfig, options, "librispeech options")
    out_dir, root = Path(out_dir), Path(cfg.root)
    config = config_to_dict(cfg)
    done = build.existing(out_dir, "librispeech", config, force)
    if done is not None:
        return done
    if not root.is_dir():
        raise ValueError(f"--root {root}: LibriSpeech folder not found")
    issues = Issues()
    files: dict[str, tuple[Path, str]] = {}  # utt id -> (flac, subset)
    for subset in (*cfg.subsets, *cfg.pretrain_subsets):
        d = root / subset
        if not d.is_dir():
            issues.add(str(d), f"subset {subset!r} not found under {root}")
            continue
        for p in sorted(d.glob("*/*/*.flac")):
            files.setdefault(p.stem, (p, subset))
    plan: list[tuple[str, str, str]] = []  # (utt id, split, where)
    probe_ids = [u for u, (_, s) in files.items() if s in cfg.subsets]
    if cfg.split_dir:
        train = _read_list(Path(cfg.split_dir) / "train_split.txt", issues)
        test = _read_list(Path(cfg.split_dir) / "test_split.txt", issues)
        order = sorted(train)
        random.Random(cfg.seed).shuffle(order)  # CPC / s3prl: 90/10 train/dev with seed 1337
        n_train = round(len(order) * (1 - cfg.dev_fraction))
        plan += [(u, "train" if k < n_train else "dev", w) for k, (u, w) in enumerate(order)]
        plan += [(u, "test", w) for u, w in test]
    else:
        split_of = closed_set_splits([(u, u.split("-")[0]) for u in probe_ids], cfg.seed, cfg.dev_fraction,
                                     cfg.test_fraction)
        plan += [(u, split_of[u], str(files[u][0])) for u in sorted(probe_ids)]
    plan += [(u, "pretrain", str(p)) for u, (p, s) in sorted(files.items()) if s in cfg.pretrain_subsets]
    if cfg.alignments and not Path(cfg.alignments).is_file():
        raise ValueError(f"--alignments {cfg.alignments}: file not found")
    labels = read_frame_labels(Path(cfg.alignments), issues) if cfg.alignments else {}
    utts, where = [], []
    for uid, split, w in tqdm(plan, desc="librispeech audio", unit="utt", disable=not progress):
        if uid not in files:
            issues.add(w, f"utterance {uid!r} has no audio file under {root} ({', '.join(cfg.subsets)})")
            continue
        path = files[uid][0]
        got = probe_audio(path, w, issues, expected_sr=SAMPLE_RATE)
        if got is None:
            continue
        ali = None
        if cfg.alignments and split != "pretrain":
            if uid not in labels:
                issues.add(w, f"utterance {uid!r} has no frame labels in {cfg.alignments}")
                continue
            ali = labels[uid][0]
        utts.append(Utterance(id=uid, path=str(path.resolve()), sample_rate=got[0], num_samples=got[1],
                              speaker=uid.split("-")[0], split=split, alignment=ali))  # type: ignore[arg-type]
        where.append(w)
    info = {"source": str(root.resolve()), "phone_set": "CPC 41 frame labels" if cfg.alignments else "none"}
    if cfg.alignments:
        sil = silence_label({u: labels[u] for u in {x.id for x in utts} if u in labels})
        info["silence"] = [sil] if sil is not None else []
    stage = build.staging_dir(out_dir)
    return build.commit(stage, out_dir, "librispeech", utts, where, issues, config, info, closed_set_speakers=True,
                        verify=verify_audio, workers=workers, progress=progress)
