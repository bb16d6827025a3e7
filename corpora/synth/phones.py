"""eSpeak NG (en-us) phoneme mnemonics -> the 39 TIMIT folded phone classes (Lee & Hon 1989).

Why TIMIT-39: it is the usual ~40-class English set, so the built-in corpus and TIMIT share one label
inventory. Stress marks (' ,) and length/unstressed marks (% =) are stripped first. Every pause phoneme
(names starting with '_') and every run of digital silence >= 15 ms is `sil`, which also matches TIMIT's
fold of stop closures into `sil` (eSpeak renders closures as silence).
R-coloured and centring diphthongs that eSpeak emits as one phoneme map to their vowel nucleus.
"""
from __future__ import annotations

SIL = "sil"
CLASSES: tuple[str, ...] = ("aa", "ae", "ah", "aw", "ay", "b", "ch", "d", "dh", "dx", "eh", "er", "ey", "f", "g",
                            "hh", "ih", "iy", "jh", "k", "l", "m", "n", "ng", "ow", "oy", "p", "r", "s", "sh",
                            "sil", "t", "th", "uh", "uw", "v", "w", "y", "z")

ESPEAK_TO_CLASS: dict[str, str] = {
    # vowels
    "a": "ae", "aa": "ae", "a#": "ah", "A:": "aa", "A@": "aa", "0": "aa", "O": "aa", "O:": "aa", "O@": "aa",
    "o@": "aa", "V": "ah", "@": "ah", "@2": "ah", "@5": "ah", "@L": "l", "3": "er", "3:": "er", "E": "eh",
    "e@": "eh", "I": "ih", "I2": "ih", "I#": "ih", "i": "iy", "i:": "iy", "i@": "ih", "i@3": "ih", "U": "uh",
    "U@": "uh", "u:": "uw", "aI": "ay", "aI@": "ay", "aI3": "ay", "aU": "aw", "aU@": "aw", "eI": "ey",
    "oU": "ow", "OI": "oy",
    # consonants
    "p": "p", "b": "b", "t": "t", "d": "d", "k": "k", "g": "g", "f": "f", "v": "v", "T": "th", "D": "dh",
    "s": "s", "z": "z", "S": "sh", "Z": "sh", "h": "hh", "tS": "ch", "dZ": "jh", "m": "m", "n": "n", "N": "ng",
    "l": "l", "r": "r", "r-": "r", "j": "y", ";": "y", "w": "w", "t#": "dx", "d#": "dx", "?": "t", "n-": "n",
    "m-": "m", "l/": "l", "x": "k", "z#": "z",
}
_MARKS = "',%=!"


def to_class(mnemonic: str) -> str:
    """Class of one eSpeak phoneme event; KeyError (with the mnemonic) when it is not mapped."""
    if mnemonic.startswith("_"):
        return SIL
    name = mnemonic.lstrip(_MARKS)
    if name not in ESPEAK_TO_CLASS:
        raise KeyError(f"eSpeak phoneme {mnemonic!r} has no class in corpora.synth.phones.ESPEAK_TO_CLASS")
    return ESPEAK_TO_CLASS[name]
