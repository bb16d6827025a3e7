"""CLI: `python -m corpora prepare {synth,librispeech,timit,manifest} --out DIR [options]` (thin wrapper)."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from corpora.registry import PREPARERS, default_workers, prepare_corpus
from corpora.synth.build import SynthConfig, quick_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m corpora", description="Prepare a corpus into a data directory.")
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="prepare a corpus (idempotent)")
    kinds = prep.add_subparsers(dest="corpus", required=True)
    d = SynthConfig()

    def common(k: argparse.ArgumentParser) -> None:
        k.add_argument("--out", required=True, help="output corpus directory")
        k.add_argument("--force", action="store_true", help="rebuild even if DIR holds a corpus with other options")
        k.add_argument("--no-progress", action="store_true")

    s = kinds.add_parser("synth", help="built-in eSpeak NG corpus (default benchmark corpus)")
    common(s)
    s.add_argument("--quick", action="store_true", help="the small smoke-test size (30 probe speakers, ~10 min pretrain)")
    s.add_argument("--seed", type=int, default=d.seed)
    s.add_argument("--probe-speakers", type=int)
    s.add_argument("--train-per-speaker", type=int)
    s.add_argument("--dev-per-speaker", type=int)
    s.add_argument("--test-per-speaker", type=int)
    s.add_argument("--pretrain-speakers", type=int)
    s.add_argument("--pretrain-hours", type=float)
    s.add_argument("--snr-db", type=float, nargs=2, metavar=("LOW", "HIGH"))
    s.add_argument("--audio-format", choices=("flac", "wav"))
    s.add_argument("--workers", type=int, default=default_workers())

    ls = kinds.add_parser("librispeech", help="LibriSpeech flac tree (+ optional CPC phone labels and splits)")
    common(ls)
    ls.add_argument("--root", required=True, help="folder holding train-clean-100/ etc.")
    ls.add_argument("--subsets", nargs="+", default=["train-clean-100"])
    ls.add_argument("--alignments", help="converted_aligned_phones.txt (41-phone frame labels)")
    ls.add_argument("--split-dir", help="folder with train_split.txt and test_split.txt (CPC)")
    ls.add_argument("--pretrain-subsets", nargs="*", default=[])
    ls.add_argument("--seed", type=int, default=1337)
    ls.add_argument("--verify-audio", action="store_true", help="decode every file (slow)")

    t = kinds.add_parser("timit", help="TIMIT tree (SPHERE .WAV + .PHN), 61 -> 39 phones")
    common(t)
    t.add_argument("--root", required=True, help="folder holding TRAIN/ and TEST/")
    t.add_argument("--dev", choices=("rest-of-test", "kaldi50"), default="rest-of-test")
    t.add_argument("--verify-audio", action="store_true")

    m = kinds.add_parser("manifest", help="your own data: CSV/JSONL of path,speaker[,id,split,alignment,sample_rate]")
    common(m)
    m.add_argument("--manifest", required=True)
    m.add_argument("--lab-units", choices=("seconds", "htk"), default="seconds")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--verify-audio", action="store_true")
    return p


def _options(a: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {"force": a.force, "progress": not a.no_progress}
    if a.corpus == "synth":
        base = quick_config(a.seed) if a.quick else SynthConfig(seed=a.seed)
        over = {k: getattr(a, k) for k in ("probe_speakers", "train_per_speaker", "dev_per_speaker",
                                            "test_per_speaker", "pretrain_speakers", "pretrain_hours", "snr_db",
                                            "audio_format") if getattr(a, k) is not None}
        from core.config import config_to_dict

        opts.update({**config_to_dict(base), **over, "workers": a.workers})
    elif a.corpus == "librispeech":
        opts.update(root=a.root, subsets=tuple(a.subsets), alignments=a.alignments, split_dir=a.split_dir,
                    pretrain_subsets=tuple(a.pretrain_subsets), seed=a.seed, verify_audio=a.verify_audio)
    elif a.corpus == "timit":
        opts.update(root=a.root, dev=a.dev, verify_audio=a.verify_audio)
    else:
        opts.update(manifest=a.manifest, lab_units=a.lab_units, seed=a.seed, verify_audio=a.verify_audio)
    return opts


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    assert a.corpus in PREPARERS
    t0 = time.time()
    try:
        c = prepare_corpus(a.corpus, a.out, **_options(a))
    except (ValueError, FileNotFoundError, OSError) as e:
        lines = str(e).splitlines() or [type(e).__name__]
        print(f"error: {lines[0]}", file=sys.stderr)  # the one-line summary; details (if any) follow
        for line in lines[1:]:
            print(line, file=sys.stderr)
        return 2
    splits = c.info.get("splits", {})
    summary = ", ".join(f"{k} {v['utterances']} utt / {v['hours']:.2f} h" for k, v in splits.items())
    print(f"{c.name} corpus ready in {c.root} ({time.time() - t0:.1f} s): {summary}; "
          f"{len(c.phones)} phones, {len(c.speakers)} probe speakers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
