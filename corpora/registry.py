"""The corpus registry: one preparation function per corpus name (an explicit dict, no discovery)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from corpora.build import ConfigMismatch, existing
from corpora.librispeech import prepare_librispeech
from corpora.manifest import Corpus
from corpora.speech_commands import prepare_speech_commands
from corpora.synth.build import SynthConfig, prepare_synth, prepare_synth_config, quick_config, synth_config_dict
from corpora.synth.keywords import SynthKeywordsConfig, prepare_synth_keywords, synth_keywords_config_dict
from corpora.timit import prepare_timit
from corpora.usermanifest import prepare_manifest
from corpora.verify import default_workers

__all__ = ["BUILT_IN", "PREPARERS", "default_workers", "ensure_builtin", "ensure_default_corpus", "prepare_corpus"]

PREPARERS: dict[str, Callable[..., Corpus]] = {
    "synth": prepare_synth,
    "librispeech": prepare_librispeech,
    "timit": prepare_timit,
    "manifest": prepare_manifest,
    "speech_commands": prepare_speech_commands,
    "synth_keywords": prepare_synth_keywords,
}


def prepare_corpus(name: str, out_dir: str | Path, **options: Any) -> Corpus:
    """Prepare corpus `name` into `out_dir` (idempotent: same options on a prepared dir just load it)."""
    if name not in PREPARERS:
        raise ValueError(f"unknown corpus {name!r}; valid names: {sorted(PREPARERS)}")
    return PREPARERS[name](out_dir, **options)


# corpora the toolkit builds itself, in its own folder under the data directory, when a plan asks for them: the
# built-in speech corpus and the built-in keyword corpus (no one else's data; rebuilt when an older generator made them)
BUILT_IN = ("synth", "synth_keywords")


def builtin_dir(name: str, data_dir: str | Path, quick: bool = False) -> Path:
    """Where built-in corpus `name` lives under data_dir (the built-in speech corpus's small version in synth_quick/;
    the keyword corpus is small already and has one version)."""
    if name not in BUILT_IN:
        raise ValueError(f"{name!r} is not a built-in corpus; built-in: {', '.join(BUILT_IN)}")
    return Path(data_dir) / ("synth_quick" if name == "synth" and quick else name)


def _builtin_config(name: str, quick: bool) -> dict[str, Any]:
    if name == "synth":
        return synth_config_dict(quick_config() if quick else SynthConfig())
    return synth_keywords_config_dict(SynthKeywordsConfig())


def current_builtin(name: str, data_dir: str | Path, quick: bool = False) -> Corpus | None:
    """Built-in corpus `name` in data_dir as this generator makes it; None when it is missing or was left by an older
    generator version (ensure_builtin rebuilds it)."""
    try:
        return existing(builtin_dir(name, data_dir, quick), name, _builtin_config(name, quick), force=False)
    except ConfigMismatch:
        return None


def ensure_builtin(name: str, data_dir: str | Path, quick: bool = False, progress: bool = True) -> Corpus:
    """Built-in corpus `name` in its folder under data_dir (builtin_dir): built when missing, else loaded.

    A corpus left there by an older generator version (different config hash) is rebuilt: these folders
    belong to the toolkit, so replacing them loses nothing the user made.
    """
    out = builtin_dir(name, data_dir, quick)

    def build(force: bool) -> Corpus:
        if name == "synth":
            return prepare_synth_config(out, quick_config() if quick else SynthConfig(), workers=default_workers(),
                                        progress=progress, force=force)
        return prepare_synth_keywords(out, workers=default_workers(), progress=progress, force=force)

    try:
        return build(False)
    except ConfigMismatch:
        return build(True)


def ensure_default_corpus(data_dir: str | Path, quick: bool = False, progress: bool = True) -> Corpus:
    """The built-in speech corpus in data_dir/"synth" (or the small data_dir/"synth_quick"): ensure_builtin."""
    return ensure_builtin("synth", data_dir, quick, progress)
