"""Parsers of phone alignment files: Praat TextGrid (long and short text), .lab (start end phone) and TIMIT .PHN.

Every parser returns (phone, start, end) items in SAMPLES (end exclusive) and raises ValueError naming
the file and line for malformed input. Consistency (order, overlap, range) is checked later by
corpora.validate, so that one run reports every problem of a corpus.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

from corpora.manifest import Segment

_TOKEN = re.compile(r'"(?:[^"]|"")*"|<exists>|<absent>|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?')
_INDEX = re.compile(r"\[\s*\d*\s*\]")  # `item [1]:` / `intervals [3]:` in the long format are not data
PHONE_TIER_NAMES = ("phones", "phone", "phonemes", "phoneme", "segments")


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    for enc in ("utf-8-sig", "utf-16"):  # Praat writes UTF-16 when a label needs it
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            continue
    raise ValueError(f"{path}: not UTF-8 or UTF-16 text")


def _lineno(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def parse_textgrid(path: str | Path, sample_rate: int, tier: str | None = None, empty_label: str = "sil") -> list[Segment]:
    """Intervals of the phone tier (`tier`, else the first named like PHONE_TIER_NAMES, else the first tier)."""
    path = Path(path)
    text = _read_text(path)
    clean = _INDEX.sub(lambda m: " " * len(m.group()), text)  # same length: token positions give line numbers
    toks = [(m.group(), m.start()) for m in _TOKEN.finditer(clean)]
    pos = 0

    def take(kind: str) -> str | float:
        nonlocal pos
        if pos >= len(toks):
            raise ValueError(f"{path}: truncated TextGrid (expected {kind} after line {_lineno(text, len(text))})")
        tok, at = toks[pos]
        pos += 1
        if kind == "str":
            if not tok.startswith('"'):
                raise ValueError(f"{path}:{_lineno(text, at)}: expected a quoted string, got {tok!r}")
            return tok[1:-1].replace('""', '"')
        if kind == "num":
            try:
                return float(tok)
            except ValueError:
                raise ValueError(f"{path}:{_lineno(text, at)}: expected a number, got {tok!r}") from None
        return tok

    def count() -> int:
        v = take("num")
        if not (0 <= v < 1e7) or v != int(v):
            raise ValueError(f"{path}:{_lineno(text, toks[pos - 1][1])}: bad count {v!r}")
        return int(v)

    if take("str") != "ooTextFile" or take("str") != "TextGrid":
        raise ValueError(f"{path}: not a Praat TextGrid text file (header must be ooTextFile / TextGrid)")
    take("num"), take("num")
    if take("any") != "<exists>":
        raise ValueError(f"{path}: TextGrid without tiers")
    n_tiers = count()
    tiers: list[tuple[str, list[tuple[float, float, str]], int]] = []  # interval tiers only
    for _ in range(n_tiers):
        cls, name = take("str"), take("str")
        take("num"), take("num")
        n, at = count(), toks[pos - 1][1]
        items = []
        for _ in range(n):
            if cls == "IntervalTier":
                items.append((float(take("num")), float(take("num")), str(take("str"))))
            else:  # TextTier: points, not intervals
                take("num"), take("str")
        if cls == "IntervalTier":
            tiers.append((str(name), items, at))
        elif cls != "TextTier":
            raise ValueError(f"{path}:{_lineno(text, at)}: unknown tier class {cls!r}")
    interval_tiers = tiers
    if tier is not None:
        chosen = [t for t in interval_tiers if t[0] == tier]
        if not chosen:
            raise ValueError(f"{path}: no interval tier named {tier!r}; interval tiers: {[t[0] for t in tiers]}")
    else:
        chosen = [t for t in interval_tiers if t[0].lower() in PHONE_TIER_NAMES] or interval_tiers
    if not chosen:
        raise ValueError(f"{path}: no interval tier")
    _, items, _ = chosen[0]
    segs = []
    for x0, x1, label in items:
        label = label.strip() or empty_label  # MFA and most aligners leave silences unlabelled
        segs.append(Segment(label, round(x0 * sample_rate), round(x1 * sample_rate)))
    return segs


def parse_lab(path: str | Path, sample_rate: int, units: str = "seconds") -> list[Segment]:
    """`start end phone` per line; units "seconds" (wavesurfer/Audacity style) or "htk" (100 ns ticks)."""
    path = Path(path)
    if units not in ("seconds", "htk"):
        raise ValueError(f"lab units must be 'seconds' or 'htk', got {units!r}")
    scale = sample_rate if units == "seconds" else sample_rate / 1e7
    segs = []
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) < 3:
            raise ValueError(f"{path}:{lineno}: expected `start end phone`, got {line.strip()!r}")
        try:
            t0, t1 = float(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(f"{path}:{lineno}: start/end must be numbers, got {line.strip()!r}") from None
        if not (math.isfinite(t0) and math.isfinite(t1)):
            raise ValueError(f"{path}:{lineno}: start/end must be finite numbers, got {line.strip()!r}")
        segs.append(Segment(parts[2], round(t0 * scale), round(t1 * scale)))
    return segs


def parse_phn(path: str | Path) -> list[tuple[Segment, int]]:
    """TIMIT .PHN: `start end phone` in samples; returns (segment, line number) pairs."""
    path = Path(path)
    out = []
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3:
            raise ValueError(f"{path}:{lineno}: expected `start end phone`, got {line.strip()!r}")
        try:
            s, e = int(parts[0]), int(parts[1])
        except ValueError:
            raise ValueError(f"{path}:{lineno}: start/end must be integer sample offsets, got {line.strip()!r}") from None
        out.append((Segment(parts[2], s, e), lineno))
    return out


def parse_alignment(path: str | Path, sample_rate: int, lab_units: str = "seconds") -> list[Segment]:
    """Dispatch on the extension: .TextGrid, .lab, .phn."""
    path = Path(path)
    ext = path.suffix.lower()
    if not path.is_file():
        raise ValueError(f"alignment file not found: {path}")
    if ext == ".textgrid":
        return parse_textgrid(path, sample_rate)
    if ext == ".lab":
        return parse_lab(path, sample_rate, lab_units)
    if ext == ".phn":
        return [s for s, _ in parse_phn(path)]
    raise ValueError(f"{path}: unknown alignment format {ext!r}; expected .TextGrid, .lab or .phn")
