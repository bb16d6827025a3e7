"""Sentence source for the built-in corpus: a seeded toy grammar over an embedded English vocabulary.

Why a grammar and not a text corpus: the default path must install with pip alone and download nothing,
and a closed vocabulary makes the set of eSpeak phonemes closed too (every one is mapped and tested).
The vocabulary is chosen to cover every English phoneme class in several contexts.
"""
from __future__ import annotations

import random

NAMES = ("Anna", "Peter", "Maria", "George", "Lucy", "Thomas", "Helen", "Oscar", "Judith", "Victor", "Sophie",
         "Edward", "Irene", "Walter", "Zoe", "Charles", "Ruth", "Hugo", "Agnes", "Nathan", "Joyce", "Bob")
ADJS = ("red", "old", "young", "quiet", "cheap", "heavy", "bright", "yellow", "thin", "thick", "smooth", "rough",
        "cold", "warm", "noisy", "pleasant", "strange", "famous", "tiny", "huge", "wet", "dusty", "brown",
        "orange", "purple", "gentle", "angry", "lazy", "clever", "usual", "shiny", "wooden", "frozen", "rich")
NOUNS = ("dog", "cat", "house", "garden", "river", "teacher", "doctor", "window", "bridge", "machine", "village",
         "judge", "chair", "boat", "forest", "voice", "orange", "engine", "measure", "pleasure", "treasure",
         "church", "fish", "sheep", "thumb", "feather", "mother", "father", "brother", "shoe", "book", "wheel",
         "kitchen", "apple", "window", "island", "engineer", "farmer", "singer", "garage", "owl", "boy", "toy",
         "mouth", "tooth", "coin", "nurse", "bird", "girl", "word", "ship", "jacket", "yard", "wagon", "puzzle",
         "vision", "rhythm", "oyster", "lawyer", "player", "hour", "tower", "flower", "cloud", "storm", "queen")
VERBS_T = ("found", "watched", "painted", "pushed", "carried", "washed", "judged", "fixed", "loved", "brought",
           "caught", "thought of", "measured", "showed", "moved", "chose", "joined", "visited", "sold", "bought",
           "cleaned", "cooked", "touched", "heard", "needed", "wanted", "hated", "admired", "followed", "checked")
VERBS_I = ("slept", "laughed", "waited", "jumped", "arrived", "vanished", "shouted", "sang", "worked", "smiled",
           "escaped", "returned", "cried", "played", "appeared", "stopped", "voted", "yawned", "danced", "listened")
ADVS = ("quickly", "slowly", "quietly", "usually", "yesterday", "today", "early", "later", "again", "together",
        "happily", "nearly", "suddenly", "almost", "always", "seldom", "outside", "upstairs", "at night", "by noon")
PREPS = ("near", "under", "behind", "beside", "across", "through", "over", "inside", "without", "toward", "with")
DETS = ("the", "a", "this", "that", "my", "your", "our", "their", "every", "one")
NUMS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve", "thirty", "forty")
QWORDS = ("why", "where", "when", "how")


def _np(r: random.Random) -> str:
    if r.random() < 0.15:
        return r.choice(NAMES)
    if r.random() < 0.15:
        return f"{r.choice(NUMS)} {r.choice(NOUNS)}s"
    adj = f"{r.choice(ADJS)} " if r.random() < 0.5 else ""
    det = r.choice(DETS)
    noun = r.choice(NOUNS)
    if det == "a" and (adj or noun)[0] in "aeiou":
        det = "an"
    return f"{det} {adj}{noun}"


def _clause(r: random.Random) -> str:
    subj = _np(r)
    if r.random() < 0.55:
        s = f"{subj} {r.choice(VERBS_T)} {_np(r)}"
    else:
        s = f"{subj} {r.choice(VERBS_I)}"
    if r.random() < 0.4:
        s += f" {r.choice(PREPS)} {_np(r)}"
    if r.random() < 0.35:
        s += f" {r.choice(ADVS)}"
    return s


def sentence(r: random.Random, min_words: int = 8, max_words: int = 15) -> str:
    """One sentence of min_words..max_words words (about 2-4 s of speech at 150-190 words per minute)."""
    for _ in range(100):
        kind = r.random()
        if kind < 0.12:
            s = f"{r.choice(QWORDS)} did {_np(r)} {r.choice(('see', 'find', 'like', 'want'))} {_np(r)}?"
        elif kind < 0.3:
            s = f"{_clause(r)}, {r.choice(('and', 'but', 'so', 'because', 'while'))} {_clause(r)}."
        else:
            s = _clause(r) + "."
        n = len(s.split())
        if min_words <= n <= max_words:
            return s[0].upper() + s[1:]
    return s[0].upper() + s[1:]  # the grammar always reaches the range in practice; keep the last try


def all_words() -> list[str]:
    """Every word the grammar can produce (used to check the phone mapping is complete)."""
    words: set[str] = set()
    for group in (NAMES, ADJS, NOUNS, VERBS_T, VERBS_I, ADVS, PREPS, DETS, NUMS, QWORDS):
        for item in group:
            words.update(item.split())
    words.update(n + "s" for n in NOUNS)
    words.update(("an", "and", "but", "so", "because", "while", "did", "see", "find", "like", "want"))
    return sorted(words)
