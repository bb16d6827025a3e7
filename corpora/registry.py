"""The corpus registry: one preparation function per corpus name (an explicit dict, no discovery)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from corpora.build import ConfigMismatch, existing
from corpora.librispeech import prepare_librispeech
from corpora.manifest import Corpus
from corpora.speech_commands import prepare_speech_commands
from corpora.synth.build import SynthConfig, prepare_synth, prepare_synth_config, quick_config, synth_config_dict
from corpora.synth.keywords import prepare_synth_keywords
from corpora.timit import prepare_timit
from corpora.usermanifest import prepare_manifest
from corpora.verify import default_workers

__all__ = ["PREPARERS", "default_workers", "ensure_default_corpus", "prepare_corpus"]

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


def current_default_corpus(data_dir: str | Path, quick: bool = False) -> Corpus | None:
    """The built-in corpus in data_dir as this generator makes it; None when it is missing or was left by an older
    generator version (ensure_default_corpus rebuilds it)."""
    out = Path(data_dir) / ("synth_quick" if quick else "synth")
    cfg: SynthConfig = quick_config() if quick else SynthConfig()
    try:
        return existing(out, "synth", synth_config_dict(cfg), force=False)
    except ConfigMismatch:
        return None


def ensure_default_corpus(data_dir: str | Path, quick: bool = False, progress: bool = True) -> Corpus:
    """The built-in corpus in data_dir/"synth" (or the small data_dir/"synth_quick"): built when missing, else loaded.

    A corpus left there by an older generator version (different config hash) is rebuilt: these folders
    belong to the toolkit, so replacing them loses nothing the user made.
    """
    out = Path(data_dir) / ("synth_quick" if quick else "synth")
    cfg: SynthConfig = quick_config() if quick else SynthConfig()
    try:
        return prepare_synth_config(out, cfg, workers=default_workers(), progress=progress)
    except ConfigMismatch:
        return prepare_synth_config(out, cfg, workers=default_workers(), progress=progress, force=True)
