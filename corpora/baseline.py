"""Difficulty check of a prepared corpus: logistic regressions on log-mel statistics (speaker) and frames (phone).

`python -m corpora.baseline DIR` prints test accuracy next to chance (majority class), so one sees that
the corpus is neither trivial (~100%) nor hopeless (~chance). Uses raw log-mel (no per-utterance CMVN,
which would erase the speaker cue; s3prl 0.4.18 normalises each utterance).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from core.audio import load_audio
from corpora.labels import frame_labels
from corpora.manifest import Corpus, Utterance, load_corpus
from upstream.features import FeatureConfig, LogMelFrontend


def _features(corpus: Corpus, utts: list[Utterance], fe: LogMelFrontend, desc: str) -> list[np.ndarray]:
    out = []
    with torch.no_grad():
        for u in tqdm(utts, desc=desc, unit="utt", leave=False):
            out.append(fe.unnormalized(load_audio(corpus.audio_path(u))).numpy())  # (T, 80)
    return out


def run_baseline(root: str, max_train_frames: int = 60_000, seed: int = 0) -> dict[str, float]:
    corpus = load_corpus(root)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    fe = LogMelFrontend(FeatureConfig(norm="none"))
    tr, te = corpus.utterances("train"), corpus.utterances("test")
    f_tr, f_te = _features(corpus, tr, fe, "train feats"), _features(corpus, te, fe, "test feats")
    res: dict[str, float] = {}
    if corpus.info.get("closed_set_speakers", True) and len(corpus.speakers) > 1:
        spk = {s: i for i, s in enumerate(corpus.speakers)}
        x_tr = np.stack([np.concatenate([f.mean(0), f.std(0)]) for f in f_tr])
        x_te = np.stack([np.concatenate([f.mean(0), f.std(0)]) for f in f_te])
        y_tr = np.array([spk[u.speaker] for u in tr])
        y_te = np.array([spk[u.speaker] for u in te])
        sc = StandardScaler().fit(x_tr)
        clf = LogisticRegression(max_iter=2000, C=1.0).fit(sc.transform(x_tr), y_tr)
        res["speaker_acc"] = float((clf.predict(sc.transform(x_te)) == y_te).mean())
        res["speaker_chance"] = float(np.bincount(y_te).max() / len(y_te))
    if corpus.phones and all(u.alignment for u in tr + te):
        idx = {p: i for i, p in enumerate(corpus.phones)}
        x_tr = np.concatenate(f_tr)
        y_tr = np.concatenate([frame_labels(u, idx) for u in tr])
        x_te = np.concatenate(f_te)
        y_te = np.concatenate([frame_labels(u, idx) for u in te])
        pick = np.random.default_rng(seed).permutation(len(x_tr))[:max_train_frames]
        sc = StandardScaler().fit(x_tr[pick])
        clf = LogisticRegression(max_iter=500, C=1.0).fit(sc.transform(x_tr[pick]), y_tr[pick])
        res["phone_frame_acc"] = float((clf.predict(sc.transform(x_te)) == y_te).mean())
        res["phone_chance"] = float(np.bincount(y_te).max() / len(y_te))
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m corpora.baseline", description=__doc__.splitlines()[0])
    p.add_argument("corpus_dir")
    p.add_argument("--max-train-frames", type=int, default=60_000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    t0 = time.time()
    try:
        res = run_baseline(a.corpus_dir, a.max_train_frames, a.seed)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for k, v in res.items():
        print(f"{k}: {100 * v:.1f}%")
    print(f"({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
