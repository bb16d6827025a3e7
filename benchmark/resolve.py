"""Resolving the benchmark's inputs: the corpus (prepared if missing) and each upstream (pretrained if missing)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corpora.manifest import SPLITS, Corpus, is_prepared, load_corpus
from upstream.checkpoint import read_meta
from upstream.interface import Upstream
from upstream.registry import build_upstream, get_preset, is_pretrained, parse_spec, upstream_identity
from upstream.transformer import count_parameters

DEFAULT_CORPUS = "synth"  # the built-in corpus: corpora.ensure_default_corpus prepares it where it belongs
# every other corpus is read from the user's copy: how to prepare it (docs/corpora.md)
PREPARE_HINTS = {"librispeech": "--root /path/to/LibriSpeech", "timit": "--root /path/to/TIMIT",
                 "manifest": "--manifest your_list.csv"}


def corpus_choices() -> list[str]:
    try:
        from corpora.registry import PREPARERS
    except ImportError:  # the corpus preparers are optional for a benchmark on an already prepared corpus
        return []
    return sorted(PREPARERS)


def default_corpus_dir(corpus: str, data_dir: Path, quick: bool) -> Path:
    """Where a corpus given by name lives under data_dir (the built-in one in synth/ or synth_quick/)."""
    if corpus == DEFAULT_CORPUS:
        return Path(data_dir) / ("synth_quick" if quick else "synth")
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
            if corpus == DEFAULT_CORPUS:
                return  # built on demand
            raise ValueError(_unprepared(corpus, path))
    c = load_corpus(path)
    for split in SPLITS:
        c.utterances(split)


def resolve_corpus(corpus: str, data_dir: Path, quick: bool, prepare: bool = True) -> Corpus | None:
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
    import corpora

    out = default_corpus_dir(corpus, data_dir, quick)
    if is_prepared(out):
        return load_corpus(out)
    if not prepare:
        return None
    if corpus == DEFAULT_CORPUS:
        return corpora.ensure_default_corpus(Path(data_dir), quick=quick)
    raise ValueError(_unprepared(corpus, out))


@dataclass
class ResolvedUpstream:
    spec: str
    model: Upstream
    ckpt: Path | None
    identity: dict[str, str]  # upstream, preset, ckpt_hash
    params: int
    pretrain_frames: int
    pretrain_seconds: float


def checkpoint_dir(runs_dir: Path, spec: str, quick: bool) -> Path:
    name, preset = parse_spec(spec)
    return Path(runs_dir) / (f"{name}-{preset}" + ("-quick" if quick else ""))


def planned_checkpoint(spec: str, ckpts: dict[str, str], runs_dir: Path, quick: bool) -> Path | None:
    """The checkpoint directory an upstream will use: --ckpt, else the default one (pretrained when missing)."""
    name, _ = parse_spec(spec)
    if name in ckpts:
        return Path(ckpts[name])
    return checkpoint_dir(runs_dir, spec, quick) if is_pretrained(name) else None


def num_hidden_states_of(spec: str, ckpt: Path | None) -> int:
    """Hidden-state count without building the model (for --dry-run and `--mode layers`)."""
    name, preset = parse_spec(spec)
    if ckpt is not None and (Path(ckpt) / "checkpoint.json").is_file():
        return int(read_meta(ckpt)["encoder"]["num_layers"]) + 1
    enc = get_preset(name, preset).encoder
    return 1 if enc is None else enc.num_layers + 1


def normalisation_split(corpus: Corpus) -> str:
    """Statistics come from the pretraining audio when the corpus has it (as for the models), else train."""
    return "pretrain" if corpus.utterances("pretrain") else "train"


def resolve_upstream(spec: str, corpus: Corpus, ckpts: dict[str, str], runs_dir: Path, quick: bool,
                     log=print, device: str | None = None, progress: bool = True) -> ResolvedUpstream:
    """Build `spec`: from --ckpt, from the reused/trained default checkpoint, or (mel, random) with corpus stats."""
    name, preset = parse_spec(spec)
    ckpt: Path | None = None
    if is_pretrained(name):
        if name in ckpts:
            ckpt = Path(ckpts[name])
        else:
            from pretrain import default_budget, ensure_pretrained

            ckpt = checkpoint_dir(runs_dir, spec, quick)
            log(f"{spec}: using checkpoint {ckpt} (pretraining it first if missing or incomplete)")
            ckpt = Path(ensure_pretrained(f"{name}:{preset}", corpus, ckpt, default_budget(quick), device=device,
                                          show_progress=progress))
        model = build_upstream(spec, ckpt=ckpt)
        meta: dict[str, Any] = read_meta(ckpt)
    else:
        from pretrain.stats import normalized_feature_config

        feature = normalized_feature_config(corpus, get_preset(name, preset).feature, split=normalisation_split(corpus),
                                            progress=progress)
        model = build_upstream(spec, feature=feature)
        meta = {}
    model.eval()
    return ResolvedUpstream(spec=spec, model=model, ckpt=ckpt, identity=upstream_identity(spec, ckpt, model),
                            params=count_parameters(model), pretrain_frames=int(meta.get("pretrain_frames", 0)),
                            pretrain_seconds=float(meta.get("pretrain_seconds", 0.0)))
