"""prepare_manifest: the user's own data from a CSV or JSONL list of (path, speaker[, id, split, alignment, sample_rate]).

Relative paths (audio and alignment) are resolved against the list's folder. `alignment` names a Praat
TextGrid, a `.lab` file (start end phone; seconds, or HTK 100 ns ticks with lab_units="htk") or a TIMIT-style
`.phn`. Without a `split` column, each speaker's utterances are split closed-set (corpora.splits).
"""
from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from core.config import config_from_dict, config_to_dict
from core.io import read_text
from corpora import build
from corpora.alignments import parse_alignment
from corpora.manifest import SPLITS, Corpus, Utterance
from corpora.splits import closed_set_splits
from corpora.validate import Issues, probe_audio

COLUMNS = ("path", "speaker", "id", "split", "alignment", "sample_rate")
REQUIRED = ("path", "speaker")


@dataclass(frozen=True)
class ManifestConfig:
    manifest: str
    lab_units: str = "seconds"
    seed: int = 0
    dev_fraction: float = 0.1
    test_fraction: float = 0.1


def read_rows(path: Path, issues: Issues) -> list[tuple[dict[str, str], str]]:
    """(row, 'file:line') for each record of a .csv (header row) or .jsonl file."""
    rows: list[tuple[dict[str, str], str]] = []
    ext = path.suffix.lower()
    text = read_text(path, "manifest")
    if ext == ".csv":
        reader = csv.DictReader(text.splitlines())
        header = reader.fieldnames or []
        for c in REQUIRED:
            if c not in header:
                raise ValueError(f"{path}:1: CSV header lacks required column {c!r} (has {header}; "
                                 f"columns: {list(COLUMNS)})")
        unknown = [c for c in header if c not in COLUMNS]
        if unknown:
            raise ValueError(f"{path}:1: unknown column(s) {unknown}; valid: {list(COLUMNS)}")
        for row in reader:
            rows.append(({k: (v or "").strip() for k, v in row.items() if k is not None}, f"{path}:{reader.line_num}"))
    elif ext in (".jsonl", ".json"):
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                issues.add(where, f"invalid JSON: {e}")
                continue
            if not isinstance(d, dict):
                issues.add(where, "expected a JSON object per line")
                continue
            unknown = [k for k in d if k not in COLUMNS]
            if unknown:
                issues.add(where, f"unknown field(s) {unknown}; valid: {list(COLUMNS)}")
            rows.append(({k: "" if d[k] is None else str(d[k]).strip() for k in d if k in COLUMNS}, where))
    else:
        raise ValueError(f"--manifest {path}: expected a .csv or .jsonl file")
    return rows


def prepare_manifest(out_dir: str | Path, force: bool = False, progress: bool = True, verify_audio: bool = True,
                     workers: int | None = None, **options: Any) -> Corpus:
    """Prepare the listed files; `verify_audio` decodes each once (corpora.verify) with `workers` threads."""
    cfg = config_from_dict(ManifestConfig, options, "manifest options")
    out_dir, src = Path(out_dir), Path(cfg.manifest)
    if not src.is_file():
        raise ValueError(f"--manifest {src}: file not found")
    config = {**config_to_dict(cfg), "manifest": str(src.resolve())}
    done = build.existing(out_dir, "manifest", config, force)
    if done is not None:
        return done
    issues = Issues()
    rows = read_rows(src, issues)
    base = src.resolve().parent
    has_split = [bool(r.get("split")) for r, _ in rows]
    if any(has_split) and not all(has_split):
        missing = [w for (r, w), h in zip(rows, has_split) if not h]
        issues.add(missing[0], f"no split, while other rows have one ({len(missing)} row(s) without): "
                               "give every row a split or none")
    utts, where = [], []
    for row, w in tqdm(rows, desc="manifest", unit="utt", disable=not progress):
        missing_cols = [c for c in REQUIRED if not row.get(c)]
        if missing_cols:
            issues.add(w, f"missing required field(s) {missing_cols}")
            continue
        path = Path(row["path"]) if Path(row["path"]).is_absolute() else base / row["path"]
        split = row.get("split") or "train"  # placeholder until the closed-set split below
        if split not in SPLITS:
            issues.add(w, f"unknown split {split!r}; valid: {list(SPLITS)}")
            continue
        declared = None
        if row.get("sample_rate"):
            try:
                declared = int(float(row["sample_rate"]))
            except ValueError:
                issues.add(w, f"sample_rate must be a number, got {row['sample_rate']!r}")
                continue
        got = probe_audio(path, w, issues, expected_sr=declared)
        if got is None:
            continue
        ali = None
        if row.get("alignment"):
            ap = Path(row["alignment"]) if Path(row["alignment"]).is_absolute() else base / row["alignment"]
            try:
                ali = tuple(parse_alignment(ap, got[0], cfg.lab_units))
            except ValueError as e:
                issues.add(w, str(e))
                continue
        utts.append(Utterance(id=row.get("id") or path.stem, path=str(path.resolve()), sample_rate=got[0],
                              num_samples=got[1], speaker=row["speaker"], split=split,  # type: ignore[arg-type]
                              alignment=ali))
        where.append(w)
    if utts and not any(has_split):
        split_of = closed_set_splits([(u.id, u.speaker) for u in utts], cfg.seed, cfg.dev_fraction, cfg.test_fraction)
        utts = [dataclasses.replace(u, split=split_of.get(u.id, "train")) for u in utts]
    info = {"source": str(src.resolve())}
    stage = build.staging_dir(out_dir)
    return build.commit(stage, out_dir, "manifest", utts, where, issues, config, info, closed_set_speakers=True,
                        verify=verify_audio, workers=workers, progress=progress)
