"""CLI: `python -m corpora prepare {synth,librispeech,timit,manifest,speech_commands,synth_keywords} --out DIR [options]`
(thin wrapper), and
`python -m corpora verify DIR`: decode every audio file of a prepared corpus (and time it).

Bad input (missing or corrupt files, bad manifests, bad options) ends with `error: ...` naming the file and
line or the flag, then the list of problems, exit status 2, and nothing written.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any, Callable

from core.config import config_to_dict
from corpora.manifest import SPLITS, load_corpus
from corpora.registry import PREPARERS, default_workers, prepare_corpus
from corpora.synth.build import SynthConfig, quick_config
from corpora.synth.keywords import SynthKeywordsConfig
from corpora.validate import Issues
from corpora.verify import SKIPPED_WITHOUT_DECODING, verify_audio


def at_least(low: int | float, kind: Callable[[str], Any] = int) -> Callable[[str], Any]:
    """An argparse type: a number >= `low` (argparse names the flag in its error)."""
    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'} >= {low}, "
                                             f"got {text!r}") from None
        if not (v >= low and math.isfinite(v)):  # also rejects nan and inf
            raise argparse.ArgumentTypeError(f"expected a finite number >= {low}, got {text!r}")
        return v
    parse.__name__ = kind.__name__
    return parse


def finite_float(text: str) -> float:
    """An argparse type: a finite number (nan and inf are refused, naming the flag)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


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
        k.add_argument("--workers", type=at_least(1), default=default_workers(),
                       help="parallel workers (synthesis, audio decoding; default: all CPUs)")
        k.add_argument("--verify-audio", action=argparse.BooleanOptionalAction, default=True,
                       help="decode every audio file once before anything is written (default), which finds NaN/inf "
                            "samples, truncated and undecodable files; --no-verify-audio reads headers only "
                            "(missing, unreadable-header, zero-length, too-short and wrong-rate files are still found)")

    s = kinds.add_parser("synth", help="built-in eSpeak NG corpus (default benchmark corpus)")
    common(s)
    s.add_argument("--quick", action="store_true", help="the small smoke-test size (30 probe speakers, ~10 min pretrain)")
    s.add_argument("--seed", type=int, default=d.seed)
    for flag in ("--probe-speakers", "--train-per-speaker", "--dev-per-speaker", "--test-per-speaker"):
        s.add_argument(flag, type=at_least(1))
    s.add_argument("--pretrain-speakers", type=at_least(0))
    s.add_argument("--pretrain-hours", type=at_least(0, float))
    s.add_argument("--snr-db", type=finite_float, nargs=2, metavar=("LOW", "HIGH"))
    s.add_argument("--audio-format", choices=("flac", "wav"))

    ls = kinds.add_parser("librispeech", help="LibriSpeech flac tree (+ optional CPC phone labels and splits)")
    common(ls)
    ls.add_argument("--root", required=True, help="folder holding train-clean-100/ etc.")
    ls.add_argument("--subsets", nargs="+", default=["train-clean-100"])
    ls.add_argument("--alignments", help="converted_aligned_phones.txt (41-phone frame labels)")
    ls.add_argument("--split-dir", help="folder with train_split.txt and test_split.txt (CPC)")
    ls.add_argument("--pretrain-subsets", nargs="*", default=[])
    ls.add_argument("--seed", type=int, default=1337)

    t = kinds.add_parser("timit", help="TIMIT tree (SPHERE .WAV + .PHN), 61 -> 39 phones")
    common(t)
    t.add_argument("--root", required=True, help="folder holding TRAIN/ and TEST/")
    t.add_argument("--dev", choices=("rest-of-test", "kaldi50"), default="rest-of-test")

    m = kinds.add_parser("manifest", help="your own data: CSV/JSONL of path,speaker[,id,split,alignment,sample_rate]")
    common(m)
    m.add_argument("--manifest", required=True,
                   help="a .csv (header row) or .jsonl list of utterances; columns: path, speaker (required), id "
                        "(default: the file's stem), split (pretrain|train|dev|test, in all rows or none; none: each "
                        "speaker split closed-set 80/10/10 with --seed), sample_rate (the declared rate, checked "
                        "against the file), alignment (a TextGrid, .lab or .phn file); relative paths are resolved "
                        "against the list's folder (docs/corpora.md)")
    m.add_argument("--lab-units", choices=("seconds", "htk"), default="seconds")
    m.add_argument("--seed", type=int, default=0)

    sc = kinds.add_parser("speech_commands", help="Speech Commands v1.0 folder (keyword spotting, SUPERB KS)")
    common(sc)
    sc.add_argument("--root", required=True, help="the unpacked speech_commands_v0.01 folder: word folders, "
                                                  "_background_noise_/, validation_list.txt, testing_list.txt")
    sc.add_argument("--test-root", help="SUPERB's test set (speech_commands_test_set_v0.01, one folder per class) as "
                                        "the test split instead of testing_list.txt")
    sc.add_argument("--seed", type=int, default=0, help="seed of the silence clips' offsets and the unknown subsample")
    sc.add_argument("--no-balance", action="store_true",
                    help="keep every _unknown_ clip (default: each split's _unknown_ clips are cut to its mean keyword "
                         "count, as s3prl's class-weighted sampler balances them)")

    kd = SynthKeywordsConfig()
    sk = kinds.add_parser("synth_keywords", help="built-in synthetic keyword corpus (12 Speech Commands classes)")
    common(sk)
    sk.add_argument("--seed", type=int, default=kd.seed)
    for flag in ("--train-speakers", "--dev-speakers", "--test-speakers", "--repeats"):
        sk.add_argument(flag, type=at_least(1))

    v = sub.add_parser("verify", help="decode every audio file of a prepared corpus (e.g. one prepared with "
                                      "--no-verify-audio); prints the time per hour of audio")
    v.add_argument("dir", help="prepared corpus directory")
    v.add_argument("--workers", type=at_least(1), default=default_workers(), help="decoding threads (default: all CPUs)")
    v.add_argument("--no-progress", action="store_true")
    return p


def verify_prepared(root: str, workers: int, progress: bool) -> str:
    """Decode every file of the corpus in `root`; a summary line, or CorpusError listing every problem."""
    c = load_corpus(root)
    utts = [(u, split) for split in SPLITS for u in c.utterances(split)]
    t0 = time.perf_counter()
    found = verify_audio([(c.audio_path(u), u.num_samples, f"{c.root / f'{split}.jsonl'}: utterance {u.id}")
                          for u, split in utts], workers, progress)
    seconds = time.perf_counter() - t0
    issues = Issues()
    for where, problem in found:
        issues.add(where, problem)
    issues.raise_if_any(f"corpus {c.root}")
    hours = sum(u.duration for u, _ in utts) / 3600
    return (f"{c.root}: {len(utts)} files, {hours:.2f} h of audio decoded in {seconds:.1f} s with {workers} "
            f"thread(s) ({seconds / max(hours, 1e-9):.1f} s per hour of audio): no problems")


def _options(a: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {"force": a.force, "progress": not a.no_progress, "verify_audio": a.verify_audio,
                            "workers": a.workers}
    if a.corpus == "synth":
        base = quick_config(a.seed) if a.quick else SynthConfig(seed=a.seed)
        over = {k: getattr(a, k) for k in ("probe_speakers", "train_per_speaker", "dev_per_speaker",
                                            "test_per_speaker", "pretrain_speakers", "pretrain_hours", "snr_db",
                                            "audio_format") if getattr(a, k) is not None}
        opts.update({**config_to_dict(base), **over})
    elif a.corpus == "librispeech":
        opts.update(root=a.root, subsets=tuple(a.subsets), alignments=a.alignments, split_dir=a.split_dir,
                    pretrain_subsets=tuple(a.pretrain_subsets), seed=a.seed)
    elif a.corpus == "timit":
        opts.update(root=a.root, dev=a.dev)
    elif a.corpus == "speech_commands":
        opts.update(root=a.root, test_root=a.test_root, seed=a.seed, balance=not a.no_balance)
    elif a.corpus == "synth_keywords":
        opts.update(seed=a.seed, **{k: getattr(a, k) for k in ("train_speakers", "dev_speakers", "test_speakers",
                                                               "repeats") if getattr(a, k) is not None})
    else:
        opts.update(manifest=a.manifest, lab_units=a.lab_units, seed=a.seed)
    return opts


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    if a.command == "verify":
        try:
            print(verify_prepared(a.dir, a.workers, not a.no_progress))
        except (ValueError, OSError) as e:
            return _error(e)
        return 0
    assert a.corpus in PREPARERS
    if not a.verify_audio:
        print(f"note: --no-verify-audio: audio headers are read, samples are not decoded: {SKIPPED_WITHOUT_DECODING}",
              file=sys.stderr)
    t0 = time.time()
    try:
        c = prepare_corpus(a.corpus, a.out, **_options(a))
    except (ValueError, OSError) as e:  # input errors (CorpusError, bad options, missing/unreadable files)
        return _error(e)
    splits = c.info.get("splits", {})
    summary = ", ".join(f"{k} {v['utterances']} utt / {v['hours']:.2f} h" for k, v in splits.items())
    verified = (f"every audio file decoded ({c.info['verify_seconds']:.1f} s)" if c.info.get("verify_seconds") is not None
                else "audio not decoded")
    print(f"{c.name} corpus ready in {c.root} ({time.time() - t0:.1f} s): {summary}; "
          f"{len(c.phones)} phones, {len(c.speakers)} probe speakers; {verified}")
    return 0


def _error(e: Exception) -> int:
    lines = str(e).splitlines() or [type(e).__name__]
    print(f"error: {lines[0]}", file=sys.stderr)  # the one-line summary; details (if any) follow
    for line in lines[1:]:
        print(line, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
