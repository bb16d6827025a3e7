"""Generated eSpeak voices: one seeded voice file per synthetic speaker (vocal-tract scaling, pitch, breathiness...).

Ranges are deliberately moderate ("closer voices", measured with corpora/baseline.py, docs/corpora.md): with wide
ranges a mean log-mel
logistic regression identifies clean synthetic speakers almost perfectly, which makes the speaker probe trivial.
"""
from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Voice:
    name: str
    gender: str  # "male" | "female"
    pitch_base: int  # Hz, eSpeak `pitch` base
    pitch_top: int  # Hz, eSpeak `pitch` top of range
    tract: float  # global formant-frequency scale in percent (vocal-tract length)
    formants: tuple[tuple[int, int, int], ...]  # per formant 0..8: (frequency %, height %, width %)
    breath: tuple[int, ...]  # per formant 1..8 breathiness amplitude
    roughness: int
    flutter: int
    voicing: int
    consonants: int
    rate_wpm: int  # speaker's base speaking rate (words per minute)


def sample_voice(name: str, r: random.Random) -> Voice:
    """A random speaker; everything derives from `r` so one seed gives one voice."""
    gender = r.choice(("male", "female"))
    if gender == "male":
        base = r.randint(90, 115)
        tract = r.gauss(97.0, 1.5)
    else:
        base = r.randint(170, 200)
        tract = r.gauss(108.0, 2.0)
    top = base + r.randint(30, 60)
    formants = tuple(
        (round(tract * r.uniform(0.985, 1.015)) if k <= 5 else 100, r.randint(95, 105), r.randint(92, 110))
        for k in range(9))
    strength = r.choice((0, 0, 1, 2))  # most voices modal, some breathy
    breath = tuple(r.randint(0, 6 * strength) for _ in range(8))
    return Voice(name=name, gender=gender, pitch_base=base, pitch_top=top, tract=round(tract, 2), formants=formants,
                 breath=breath, roughness=r.randint(0, 4), flutter=r.randint(5, 15), voicing=r.randint(92, 108),
                 consonants=r.randint(92, 108), rate_wpm=r.randint(160, 185))


def voice_file_text(v: Voice) -> str:
    """Text of an eSpeak voice file (loaded with espeak_SetVoiceByFile) for `v`."""
    lines = ["language en-us", f"name {v.name}", f"gender {v.gender}", "",
             f"pitch {v.pitch_base} {v.pitch_top}", f"flutter {v.flutter}", f"roughness {v.roughness}",
             f"voicing {v.voicing}", f"consonants {v.consonants}", ""]
    lines += [f"formant {k} {f} {h} {w}" for k, (f, h, w) in enumerate(v.formants)]
    lines.append("breath " + " ".join(str(b) for b in v.breath))
    return "\n".join(lines) + "\n"
