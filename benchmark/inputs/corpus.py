"""The corpus a plan reads: checked while planning, then read from its prepared directory (the built-in one is
prepared on demand; every other corpus from the user's copy, docs/corpora.md)."""
from __future__ import annotations

from pathlib import Path

from corpora.manifest import SPLITS, Corpus, is_prepared, load_corpus
from corpora.registry import BUILT_IN, PREPARERS, builtin_dir, current_builtin, ensure_builtin

# every other corpus is read from the user's copy: how to prepare it (docs/corpora.md)
PREPARE_HINTS = {"librispeech": "--root /path/to/LibriSpeech", "timit": "--root /path/to/TIMIT",
                 "manifest": "--manifest your_list.csv"}


def corpus_choices() -> list[str]:
    return sorted(PREPARERS)


def default_corpus_dir(corpus: str, data_dir: Path, quick: bool) -> Path:
    """Where a corpus given by name lives under data_dir (the built-in speech corpus in synth/ or synth_quick/)."""
    if corpus in BUILT_IN:
        return builtin_dir(corpus, data_dir, quick)
    return Path(data_dir) / corpus


def _unprepared(corpus: str, out: Path) -> str:
    hint = PREPARE_HINTS.get(corpus, "...")
    return (f"--corpus {corpus}: not prepared (no {out / 'corpus.json'}); it is read from your copy, so prepare it "
            f"first: python -m corpora prepare {corpus} --out {out} {hint}")


def check_corpus(corpus: str, data_dir: Path, quick: bool) -> None:
    """Planning-time check that `corpus` can be read, or built without asking for anything (the built-in one):
    a prepared directory's corpus.json and manifests are read (ValueError naming file and line), a name that
    needs the user's data must already be prepared under data_dir."""
    path = Path(corpus)
    if not is_prepared(path):
        names = corpus_choices()
        if corpus not in names:
            raise ValueError(f"--corpus {corpus!r}: neither a prepared corpus directory (with corpus.json) nor a "
                             f"known corpus; valid names: {', '.join(names) or '(no preparers installed)'}")
        path = default_corpus_dir(corpus, data_dir, quick)
        if not is_prepared(path):
            if corpus in BUILT_IN:
                return  # built on demand
            raise ValueError(_unprepared(corpus, path))
    c = load_corpus(path)
    for split in SPLITS:
        c.utterances(split)


def resolve_corpus(corpus: str, data_dir: Path, quick: bool, prepare: bool = True, progress: bool = True
                   ) -> Corpus | None:
    """A prepared corpus directory, or a preparer name (the built-in corpus is prepared into data_dir when missing).

    With prepare=False (dry runs), a corpus that is not prepared yet gives None instead of being built.
    """
    path = Path(corpus)
    if is_prepared(path):
        return load_corpus(path)
    names = corpus_choices()
    if corpus not in names:
        raise ValueError(f"--corpus {corpus!r}: neither a prepared corpus directory (with corpus.json) nor a known "
                         f"corpus; valid names: {', '.join(names) or '(no preparers installed)'}")
    out = default_corpus_dir(corpus, data_dir, quick)
    if corpus in BUILT_IN:  # the toolkit's own folder: built when missing, rebuilt when an older generator made it
        if (current := current_builtin(corpus, Path(data_dir), quick)) is not None:
            return current
        return ensure_builtin(corpus, Path(data_dir), quick=quick, progress=progress) if prepare else None
    if is_prepared(out):
        return load_corpus(out)
    if not prepare:
        return None
    raise ValueError(_unprepared(corpus, out))


def normalisation_split(corpus: Corpus) -> str:
    """Statistics come from the pretraining audio when the corpus has it (as for the models), else train."""
    return "pretrain" if corpus.utterances("pretrain") else "train"
