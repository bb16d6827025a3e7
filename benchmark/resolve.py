"""Resolving the benchmark's inputs: the corpus (prepared if missing) and each upstream (pretrained if missing)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corpora.manifest import Corpus, is_prepared, load_corpus
from upstream.checkpoint import read_meta
from upstream.interface import Upstream
from upstream.registry import build_upstream, get_preset, is_pretrained, parse_spec, upstream_identity
from upstream.transformer import count_parameters

DEFAULT_CORPUS = "synth"  # the built-in corpus: corpora.ensure_default_corpus prepares it where it belongs


def corpus_choices() -> list[str]:
    try:
        from corpora.registry import PREPARERS
    except ImportError:  # the corpus preparers are optional for a benchmark on an already prepared corpus
        return []
    return sorted(PREPARERS)


def resolve_corpus(corpus: str, data_dir: Path, quick: bool, prepare: bool = True) -> Corpus | None:
    """A prepared corpus directory, or a preparer name (prepared into data_dir/<name> when missing).

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

    if corpus == DEFAULT_CORPUS:
        if not prepare:
            out = Path(data_dir) / ("synth_quick" if quick else "synth")  # where ensure_default_corpus puts it
            return load_corpus(out) if is_prepared(out) else None
        return corpora.ensure_default_corpus(Path(data_dir), quick=quick)
    out = Path(data_dir) / corpus
    if is_prepared(out):
        return load_corpus(out)
    return corpora.prepare_corpus(corpus, out) if prepare else None


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

        feature = normalized_feature_config(corpus, get_preset(name, preset).feature, split=normalisation_split(corpus))
        model = build_upstream(spec, feature=feature)
        meta = {}
    model.eval()
    return ResolvedUpstream(spec=spec, model=model, ckpt=ckpt, identity=upstream_identity(spec, ckpt, model),
                            params=count_parameters(model), pretrain_frames=int(meta.get("pretrain_frames", 0)),
                            pretrain_seconds=float(meta.get("pretrain_seconds", 0.0)))
