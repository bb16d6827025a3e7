"""prepare_speech_commands: a Speech Commands v1.0 folder (Warden 2018) -> keyword-spotting manifests (SUPERB's KS).

The folder (speech_commands_v0.01.tar.gz unpacked) holds one folder of 1-s 16 kHz wavs per word
(`<word>/<speaker hash>_nohash_<n>.wav`), `_background_noise_/` (a few minute-long noise recordings),
`validation_list.txt` and `testing_list.txt` (paths relative to the folder). Every clip gets one of 12 classes, as
s3prl's `downstream/speech_commands/dataset.py` (SUPERB KS) assigns them: the 10 keywords, `_unknown_` for every
other word, `_silence_` for 1-s clips cut from the background noise. docs/tasks.md and docs/corpora.md say what
follows s3prl and what differs (fixed silence clips, and classes balanced by subsampling instead of s3prl's
class-weighted random sampler).

Splits: dev = validation_list.txt, test = testing_list.txt (or, with `test_root`, SUPERB's separate test set
speech_commands_test_set_v0.01, whose class folders already hold `_unknown_` and `_silence_` clips), train = every
other clip. The lists split by speaker hash, so the splits' speakers are disjoint (`closed_set_speakers: false`).

Silence clips are written out as 1-s wavs (audio/_silence_/) because a manifest line is a whole file (core.audio
reads files, not ranges); where each was cut from is listed in silence.txt (`<id> _background_noise_/<file> <offset>
<samples>`, relative to the source folder that corpus.json's `source` names).
"""
from __future__ import annotations

import dataclasses
import random
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm import tqdm

from core.config import config_from_dict, config_to_dict
from core.frames import SAMPLE_RATE
from core.io import atomic_write_text, read_text
from corpora import build
from corpora.manifest import PROBE_SPLITS, Corpus, Utterance
from corpora.validate import Issues, probe_audio

WORDS: tuple[str, ...] = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN, SILENCE = "_unknown_", "_silence_"
CLASSES: tuple[str, ...] = WORDS + (UNKNOWN, SILENCE)  # s3prl's CLASSES, in its order (class id = index)
BACKGROUND = "_background_noise_"
VALIDATION_LIST, TESTING_LIST = "validation_list.txt", "testing_list.txt"
SILENCE_DIR = "audio/_silence_"
SILENCE_LIST = "silence.txt"
CLIP_SAMPLES = SAMPLE_RATE  # 1 s
# each noise recording is cut into disjoint regions, one per split, so no dev or test silence clip overlaps a
# training one (s3prl crops train and dev silence from the same recordings)
NOISE_REGIONS: dict[str, tuple[float, float]] = {"train": (0.0, 0.8), "dev": (0.8, 0.9), "test": (0.9, 1.0)}
LAYOUT = (f"a Speech Commands v1.0 folder holds {VALIDATION_LIST}, {TESTING_LIST} and {BACKGROUND}/ beside its "
          f"word folders")


@dataclass(frozen=True)
class SpeechCommandsConfig:
    root: str
    test_root: str | None = None  # SUPERB's test set (speech_commands_test_set_v0.01); None: testing_list.txt
    seed: int = 0
    balance: bool = True  # _unknown_ and _silence_ get the mean keyword count of their split (see `balanced`)


def label_of(word: str) -> str:
    """The class of a clip of folder `word` (s3prl: a word outside CLASSES is `_unknown_`)."""
    return word if word in CLASSES else UNKNOWN


def check_layout(root: Path) -> list[Path]:
    """The noise recordings of a Speech Commands folder; a one-line ValueError naming the first missing part."""
    if not root.is_dir():
        raise ValueError(f"--root {root}: not a directory ({LAYOUT})")
    for name in (VALIDATION_LIST, TESTING_LIST):
        if not (root / name).is_file():
            raise ValueError(f"{root / name}: missing ({LAYOUT})")
    noise_dir = root / BACKGROUND
    if not noise_dir.is_dir():
        raise ValueError(f"{noise_dir}: missing ({LAYOUT}; the {SILENCE} class is cut from its recordings)")
    noise = sorted(p for p in noise_dir.iterdir() if p.suffix.lower() == ".wav")
    if not noise:
        raise ValueError(f"{noise_dir}: no .wav noise recordings (the {SILENCE} class is cut from them)")
    return noise


def read_list(path: Path, root: Path, issues: Issues) -> set[str]:
    """The clips a split list names (`<word>/<file>.wav` relative to `root`); entries not on disk are issues."""
    out = set()
    for lineno, line in enumerate(read_text(path, "Speech Commands split list").splitlines(), 1):
        rel = line.strip()
        if not rel:
            continue
        if not (root / rel).is_file():
            issues.add(f"{path}:{lineno}", f"listed clip not found: {root / rel}")
        out.add(rel)
    return out


def balanced(utts: list[Utterance], seed: int, split: str) -> list[Utterance]:
    """The split's `_unknown_` clips cut to the mean count of its keywords (s3prl draws training and dev examples with
    weights 1 / class count, so each class is 1/12 of what it trains on; a fixed probe split gets the same balance by
    subsampling). The kept clips cover the unknown words evenly: each word's clips in a seeded order, interleaved."""
    counts = Counter(u.label for u in utts)
    target = round(sum(counts[w] for w in WORDS) / len(WORDS))
    unknown = [u for u in utts if u.label == UNKNOWN]
    if len(unknown) <= target:
        return utts
    r = random.Random(f"{seed}/unknown/{split}")
    by_word: dict[str, list[Utterance]] = {}
    for u in sorted(unknown, key=lambda u: u.id):
        by_word.setdefault(u.id.split("-", 1)[0], []).append(u)
    ranked = []
    for word in sorted(by_word):
        clips = by_word[word]
        r.shuffle(clips)
        ranked += [(k, word, u) for k, u in enumerate(clips)]
    keep = {u.id for _, _, u in sorted(ranked, key=lambda t: (t[0], t[1]))[:target]}
    return [u for u in utts if u.label != UNKNOWN or u.id in keep]


def cut_silence(noise: list[Path], split: str, n: int, seed: int, stage: Path,
                issues: Issues) -> tuple[list[Utterance], list[str]]:
    """`n` 1-s `_silence_` clips of `split`, cut at seeded offsets from the split's region of each noise recording in
    turn (as s3prl crops one random second of a recording), written under SILENCE_DIR; and their silence.txt lines."""
    r = random.Random(f"{seed}/silence/{split}")
    lo, hi = NOISE_REGIONS[split]
    utts, lines = [], []
    (stage / SILENCE_DIR).mkdir(parents=True, exist_ok=True)
    for k in range(n):
        src = noise[k % len(noise)]
        info = sf.info(str(src))
        if info.samplerate != SAMPLE_RATE:
            issues.add(str(src), f"sample-rate mismatch: {info.samplerate} Hz, expected {SAMPLE_RATE} Hz")
            return [], []
        start, stop = int(lo * info.frames), int(hi * info.frames)
        if stop - start < CLIP_SAMPLES:
            issues.add(str(src), f"{info.frames} samples: its {split} region ({lo:.0%}-{hi:.0%}) is shorter than "
                                 f"1 s, too short to cut {SILENCE} clips from")
            return [], []
        offset = r.randint(start, stop - CLIP_SAMPLES)
        pcm, _ = sf.read(str(src), start=offset, stop=offset + CLIP_SAMPLES, dtype="int16")
        uid = f"{SILENCE}-{split}-{k:04d}"
        rel = f"{SILENCE_DIR}/{uid}.wav"
        sf.write(str(stage / rel), pcm, info.samplerate, subtype="PCM_16")
        utts.append(Utterance(id=uid, path=rel, sample_rate=info.samplerate, num_samples=len(pcm),
                              speaker=f"{BACKGROUND}-{src.stem}", split=split, label=SILENCE))  # type: ignore[arg-type]
        lines.append(f"{uid} {BACKGROUND}/{src.name} {offset} {CLIP_SAMPLES}")
    return utts, lines


def _clip(wav: Path, word: str, split: str, issues: Issues, relative_to: Path | None) -> Utterance | None:
    got = probe_audio(wav, str(wav), issues, expected_sr=SAMPLE_RATE)
    if got is None:
        return None
    path = str(wav.relative_to(relative_to)) if relative_to is not None else str(wav.resolve())
    return Utterance(id=f"{word}-{wav.stem}", path=path, sample_rate=got[0], num_samples=got[1],
                     speaker=wav.stem.split("_nohash_")[0], split=split, label=label_of(word))  # type: ignore[arg-type]


def read_speech_commands(cfg: SpeechCommandsConfig, stage: Path, progress: bool = True,
                         relative_to: Path | None = None) -> tuple[list[Utterance], list[str], Issues, dict[str, Any]]:
    """The clips of the folder `cfg.root` as utterances with keyword labels, silence clips cut into `stage`;
    (utterances, where each came from, issues, corpus.json info). Layout problems raise before anything is read.
    `relative_to`: record clip paths relative to it (a folder inside the corpus), else absolute."""
    root = Path(cfg.root)
    noise = check_layout(root)
    test_root = Path(cfg.test_root) if cfg.test_root is not None else None
    if test_root is not None and not test_root.is_dir():
        raise ValueError(f"--test-root {test_root}: not a directory (SUPERB's speech_commands_test_set_v0.01: one "
                         f"folder per class, {UNKNOWN} and {SILENCE} included)")
    issues = Issues()
    lists = {"dev": read_list(root / VALIDATION_LIST, root, issues), "test": read_list(root / TESTING_LIST, root, issues)}
    words = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name != BACKGROUND and not d.name.startswith("."))
    wavs = [(w, p) for w in words for p in sorted((root / w).glob("*.wav"))]
    by_split: dict[str, list[Utterance]] = {s: [] for s in PROBE_SPLITS}
    where: dict[str, str] = {}
    for word, wav in tqdm(wavs, desc="speech commands", unit="clip", disable=not progress):
        rel = f"{word}/{wav.name}"
        split = "dev" if rel in lists["dev"] else "test" if rel in lists["test"] else "train"
        if split == "test" and test_root is not None:
            continue  # SUPERB tests on its own test set; the testing_list clips are used by no split (s3prl)
        u = _clip(wav, word, split, issues, relative_to)
        if u is not None:
            by_split[split].append(u)
            where[u.id] = str(wav)
    if test_root is not None:
        for d in sorted(p for p in test_root.iterdir() if p.is_dir()):
            for wav in sorted(d.glob("*.wav")):
                u = _clip(wav, d.name, "test", issues, None)
                if u is not None:
                    u = dataclasses.replace(u, id=f"test-{u.id}")  # the test set reuses training file names
                    by_split["test"].append(u)
                    where[u.id] = str(wav)
    silence_lines: list[str] = []
    for split in PROBE_SPLITS:
        if split == "test" and test_root is not None:
            continue  # its _silence_ folder holds SUPERB's silence clips
        if cfg.balance:
            by_split[split] = balanced(by_split[split], cfg.seed, split)
        counts = Counter(u.label for u in by_split[split])
        n_silence = round(sum(counts[w] for w in WORDS) / len(WORDS))
        clips, lines = cut_silence(noise, split, max(n_silence, 1), cfg.seed, stage, issues)
        by_split[split] += clips
        silence_lines += lines
        where.update({u.id: f"{SILENCE} clip {u.id}" for u in clips})
    utts = [u for s in PROBE_SPLITS for u in by_split[s]]
    train_classes = {u.label for u in by_split["train"]}
    for u in utts:
        if u.label not in CLASSES:
            issues.add(where[u.id], f"class {u.label!r} is not one of the 12 ({', '.join(CLASSES)})")
    for split in ("dev", "test"):
        for c in sorted({u.label for u in by_split[split]} - train_classes, key=str):
            issues.add("corpus", f"class {c!r} occurs in the {split} split but not in train")
    atomic_write_text(stage / SILENCE_LIST, "".join(line + "\n" for line in silence_lines))
    info = {"source": str(root.resolve()), "test_source": str(test_root.resolve()) if test_root else None,
            "task": "keyword spotting (Speech Commands v1.0, SUPERB KS)", "keyword_classes": list(CLASSES),
            "class_counts": {s: {c: sum(u.label == c for u in by_split[s]) for c in CLASSES} for s in PROBE_SPLITS},
            "noise_recordings": [p.name for p in noise]}
    return utts, [where[u.id] for u in utts], issues, info


def prepare_speech_commands(out_dir: str | Path, force: bool = False, progress: bool = True,
                            verify_audio: bool = True, workers: int | None = None, **options: Any) -> Corpus:
    cfg = config_from_dict(SpeechCommandsConfig, options, "speech_commands options")
    out_dir = Path(out_dir)
    config = config_to_dict(cfg)
    done = build.existing(out_dir, "speech_commands", config, force)
    if done is not None:
        return done
    check_layout(Path(cfg.root))  # before the staging folder exists: a bad folder leaves nothing behind
    stage = build.staging_dir(out_dir)
    try:
        utts, where, issues, info = read_speech_commands(cfg, stage, progress)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return build.commit(stage, out_dir, "speech_commands", utts, where, issues, config, info,
                        closed_set_speakers=False, verify=verify_audio, workers=workers, progress=progress)


def keyword_ids(corpus: Corpus) -> dict[str, int]:
    """Class id of every keyword class of a prepared keyword corpus (corpus.json's `keyword_classes`)."""
    classes = corpus.info.get("keyword_classes")
    if not classes:
        raise ValueError(f"{corpus.root / 'corpus.json'}: no keyword_classes: corpus {corpus.name!r} has no keyword "
                         f"labels (prepare one with `python -m corpora prepare speech_commands` or `synth_keywords`)")
    return {c: i for i, c in enumerate(classes)}


def write_noise(path: Path, pcm: np.ndarray) -> None:
    """A background-noise recording (int16, 16 kHz wav), as _background_noise_ holds them."""
    sf.write(str(path), pcm, SAMPLE_RATE, subtype="PCM_16")
