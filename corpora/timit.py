"""prepare_timit: the TIMIT tree (NIST SPHERE .WAV via soundfile, .PHN sample offsets), 61 -> 39 phones.

Splits (the standard TIMIT recipe, e.g. Kaldi egs/timit): train = TRAIN SI+SX (3,696 utterances, 462 speakers);
test = the 24-speaker
core test set SI+SX (192); dev = the other TEST speakers SI+SX (1,152), or with dev="kaldi50" the
50-speaker development set of the Kaldi recipe (400). SA sentences are excluded, as is customary.
Train and test speakers are disjoint in TIMIT, so corpus.json marks its speakers as NOT closed-set.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from core.config import config_from_dict, config_to_dict
from core.frames import SAMPLE_RATE
from corpora import build
from corpora.alignments import parse_phn
from corpora.manifest import Corpus, Segment, Utterance
from corpora.validate import Issues, probe_audio

# Lee & Hon (1989) fold of the 61 TIMIT labels to 39 classes; `q` (glottal stop) is removed.
FOLD_61_39: dict[str, str] = {
    "aa": "aa", "ao": "aa", "ah": "ah", "ax": "ah", "ax-h": "ah", "er": "er", "axr": "er", "hh": "hh", "hv": "hh",
    "ih": "ih", "ix": "ih", "l": "l", "el": "l", "m": "m", "em": "m", "n": "n", "en": "n", "nx": "n",
    "ng": "ng", "eng": "ng", "sh": "sh", "zh": "sh", "uw": "uw", "ux": "uw",
    "pcl": "sil", "tcl": "sil", "kcl": "sil", "bcl": "sil", "dcl": "sil", "gcl": "sil", "h#": "sil",
    "pau": "sil", "epi": "sil",
    **{p: p for p in ("ae", "aw", "ay", "b", "ch", "d", "dh", "dx", "eh", "ey", "f", "g", "iy", "jh", "k", "ow",
                      "oy", "p", "r", "s", "t", "th", "uh", "v", "w", "y", "z")},
}
DROPPED = frozenset({"q"})
CORE_TEST_SPEAKERS = frozenset("""MDAB0 MWBT0 FELC0 MTAS1 MWEW0 FPAS0 MJMP0 MLNT0 FPKT0 MLLL0 MTLS0 FJLM0
    MBPM0 MKLT0 FNLP0 MCMJ0 MJDH0 FMGD0 MGRT0 MNJM0 FDHC0 MJLN0 MPAM0 FMLD0""".split())
KALDI_DEV_SPEAKERS = frozenset(s.upper() for s in """faks0 fdac1 fjem0 mgwt0 mjar0 mmdb1 mmdm2 mpdf0 fcmh0 fkms0
    mbdg0 mbwm0 mcsh0 fadg0 fdms0 fedw0 mgjf0 mglb0 mrtk0 mtaa0 mtdt0 mthc0 mwjg0 fnmr0 frew0 fsem0 mbns0 mmjr0
    mdls0 mdlf0 mdvc0 mers0 fmah0 fdrw0 mrcs0 mrjm4 fcal1 mmwh0 fjsj0 majc0 mjsw0 mreb0 fgjd0 fjmg0 mroa0 mteb0
    mjfc0 mrjr0 fmml0 mrws1""".split())


@dataclass(frozen=True)
class TimitConfig:
    root: str
    dev: str = "rest-of-test"  # or "kaldi50"


def _ci_child(d: Path, name: str) -> Path | None:
    """Child of `d` named `name` in any letter case (copies of TIMIT differ)."""
    for c in d.iterdir() if d.is_dir() else ():
        if c.name.lower() == name.lower():
            return c
    return None


def fold_alignment(phn: Path, issues: Issues) -> tuple[Segment, ...] | None:
    try:
        items = parse_phn(phn)
    except ValueError as e:
        issues.add(str(phn), str(e))
        return None
    segs = []
    for seg, lineno in items:
        if seg.phone in DROPPED:
            continue  # its frames take the nearest remaining phone (corpora.labels rule)
        if seg.phone not in FOLD_61_39:
            issues.add(f"{phn}:{lineno}", f"unknown TIMIT phone {seg.phone!r}")
            continue
        segs.append(Segment(FOLD_61_39[seg.phone], seg.start, seg.end))
    return tuple(segs)


def prepare_timit(out_dir: str | Path, force: bool = False, progress: bool = True, verify_audio: bool = True,
                  workers: int | None = None, **options: Any) -> Corpus:
    cfg = config_from_dict(TimitConfig, options, "timit options")
    if cfg.dev not in ("rest-of-test", "kaldi50"):
        raise ValueError(f"timit dev must be 'rest-of-test' or 'kaldi50', got {cfg.dev!r}")
    out_dir, root = Path(out_dir), Path(cfg.root)
    config = config_to_dict(cfg)
    done = build.existing(out_dir, "timit", config, force)
    if done is not None:
        return done
    issues = Issues()
    wavs: list[tuple[str, Path]] = []
    for part in ("TRAIN", "TEST"):
        d = _ci_child(root, part)
        if d is None:
            raise ValueError(f"--root {root}: no {part} folder (expected the TIMIT tree {root}/TRAIN/DR1/...)")
        wavs += [(part, p) for p in sorted(d.glob("*/*/*")) if p.suffix.lower() == ".wav"
                 and not p.name.upper().startswith("SA")]
    utts, where = [], []
    for part, wav in tqdm(wavs, desc="timit", unit="utt", disable=not progress):
        spk, stem = wav.parent.name.upper(), wav.name.split(".")[0].upper()
        if part == "TRAIN":
            split = "train"
        elif spk in CORE_TEST_SPEAKERS:
            split = "test"
        elif cfg.dev == "rest-of-test" or spk in KALDI_DEV_SPEAKERS:
            split = "dev"
        else:
            continue
        w = str(wav)
        phn = next((p for p in wav.parent.iterdir() if p.name.split(".")[0].upper() == stem
                    and p.suffix.lower() == ".phn"), None)
        if phn is None:
            issues.add(w, "no .PHN alignment beside the audio")
            continue
        got = probe_audio(wav, w, issues, expected_sr=SAMPLE_RATE)
        ali = fold_alignment(phn, issues)
        if got is None or ali is None:
            continue
        utts.append(Utterance(id=f"{spk}_{stem}", path=str(wav.resolve()), sample_rate=got[0], num_samples=got[1],
                              speaker=spk, split=split, alignment=ali))  # type: ignore[arg-type]
        where.append(str(phn))
    info = {"source": str(root.resolve()), "phone_set": "TIMIT 61 -> 39 (Lee & Hon 1989), q removed"}
    stage = build.staging_dir(out_dir)
    return build.commit(stage, out_dir, "timit", utts, where, issues, config, info, closed_set_speakers=False,
                        verify=verify_audio, workers=workers, progress=progress)
