"""Resolving the benchmark's inputs: the corpus (prepared if missing) and each upstream (pretrained if missing)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from corpora.manifest import SPLITS, Corpus, is_prepared, load_corpus
from upstream.checkpoint import META_FILE, read_meta
from upstream.family import Family
from upstream.features import FeatureConfig
from upstream.interface import Upstream
from upstream.reference import SHIPPED_CHECKPOINTS, reference_for, verify_reference
from upstream.registry import build_upstream, family, family_of, parse_spec, upstream_identity
from upstream.transformer import EncoderConfig, count_parameters

DEFAULT_CORPUS = "synth"  # the built-in corpus: corpora.ensure_default_corpus prepares it where it belongs
# every other corpus is read from the user's copy: how to prepare it (docs/corpora.md)
PREPARE_HINTS = {"librispeech": "--root /path/to/LibriSpeech", "timit": "--root /path/to/TIMIT",
                 "manifest": "--manifest your_list.csv"}


def corpus_choices() -> list[str]:
    try:
        from corpora.registry import PREPARERS  # optional: the preparers' own dependencies may be missing
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
    import corpora  # here, not at the top: its registry of preparers is optional (corpus_choices)

    out = default_corpus_dir(corpus, data_dir, quick)
    if is_prepared(out):
        return load_corpus(out)
    if not prepare:
        return None
    if corpus == DEFAULT_CORPUS:
        return corpora.ensure_default_corpus(Path(data_dir), quick=quick, progress=progress)
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
    pretrain_recipe: str  # "-" for mel and the random-init controls


def checkpoint_dir(runs_dir: Path, spec: str, quick: bool) -> Path:
    """Where the job pretrains `spec` from scratch (`--pretrain`)."""
    name, preset = parse_spec(spec)
    return Path(runs_dir) / (f"{name}-{preset}" + ("-quick" if quick else ""))


def planned_checkpoint(spec: str, ckpts: dict[str, str], runs_dir: Path, quick: bool, pretrain: bool = False
                       ) -> Path | None:
    """The checkpoint an upstream will use: --ckpt, else with --pretrain the one the job trains in runs_dir,
    else the shipped reference checkpoint (upstream/reference.py); None for weight-free upstreams (mel, the
    random-init controls). An upstream that takes weights with none of these is a ValueError naming the options."""
    fam, preset = family_of(spec)
    key = fam.ckpt_key(preset)
    if key in ckpts:
        return Path(ckpts[key])
    if not fam.takes_weights:
        return None
    if not fam.pretrainable:
        raise ValueError(f"--upstream {spec}: its weights come from a local file: pass --ckpt {key}=PATH "
                         f"(nothing is downloaded)")
    if pretrain:
        return checkpoint_dir(runs_dir, spec, quick)
    ref = reference_for(fam.name, preset)
    if ref is None:
        raise ValueError(f"--upstream {spec}: no reference checkpoint ships for {fam.name}:{preset} (only "
                         f"{', '.join(f'{r.family}:{r.preset}' for r in SHIPPED_CHECKPOINTS.values())}); pass "
                         f"--ckpt {fam.name}=PATH, or --pretrain to pretrain it inside the job")
    return ref.path


def awaits_pretraining(fam: Family, ckpt: Path | None) -> bool:
    """True for the planned checkpoint of a pretrainable family that `--pretrain` has not written yet."""
    return fam.pretrainable and ckpt is not None and not (Path(ckpt) / META_FILE).is_file()


def num_hidden_states_of(spec: str, ckpt: Path | None) -> int:
    """Hidden-state count without building the model (for --dry-run and `--mode layers`); a checkpoint still to be
    pretrained counts as its preset."""
    fam, preset = family_of(spec)
    return fam.shape(preset, None if awaits_pretraining(fam, ckpt) else ckpt).num_hidden_states


def normalisation_split(corpus: Corpus) -> str:
    """Statistics come from the pretraining audio when the corpus has it (as for the models), else train."""
    return "pretrain" if corpus.utterances("pretrain") else "train"


def control_architecture(spec: str, ckpts: dict[str, str], runs_dir: Path, quick: bool, pretrain: bool
                         ) -> tuple[FeatureConfig, EncoderConfig]:
    """Front-end (without statistics) and encoder of a random-init control of a pretrainable family
    (`architecture_from`): those of the checkpoint that family uses in this job (so the control differs from the
    model in the weights only), or, before a `--pretrain` checkpoint exists, those the job's pretraining recipe
    will give it."""
    fam, preset = family_of(spec)
    if fam.architecture_from is None:
        raise ValueError(f"--upstream {spec}: not a random-init control of a pretrainable upstream")
    model = family(fam.architecture_from)
    model_spec = f"{model.name}:{preset}"
    ckpt = planned_checkpoint(model_spec, ckpts, runs_dir, quick, pretrain)
    if ckpt is not None and not awaits_pretraining(model, ckpt):
        feature, encoder = model.architecture(preset, ckpt)
        return replace(feature, norm_mean=(), norm_std=()), encoder
    from pretrain import default_budget  # the pretraining recipe: loaded only to plan a checkpoint still to pretrain
    from pretrain.train import model_configs  # idem

    _, feature, encoder = model_configs(model_spec, default_budget(quick))
    return feature, encoder


def resolve_upstream(spec: str, corpus: Corpus, ckpts: dict[str, str], runs_dir: Path, quick: bool,
                     log=print, device: str | None = None, progress: bool = True, pretrain: bool = False
                     ) -> ResolvedUpstream:
    """Build `spec`: from --ckpt, the shipped reference, the reused/trained `--pretrain` checkpoint, or (mel, random
    controls) with corpus statistics."""
    fam, preset = family_of(spec)
    ckpt = planned_checkpoint(spec, ckpts, runs_dir, quick, pretrain)
    meta: dict[str, Any] = {}
    if fam.pretrainable:  # a toolkit checkpoint: --ckpt, the shipped reference, or pretrained here
        assert ckpt is not None
        ref = reference_for(fam.name, preset)
        given = fam.ckpt_key(preset) in ckpts
        if not given and pretrain:
            from pretrain import default_budget, ensure_pretrained  # the pretraining code: only when it must train

            log(f"{spec}: pretraining from scratch into {ckpt} (reused when complete and matching)")
            ckpt = Path(ensure_pretrained(f"{fam.name}:{preset}", corpus, ckpt, default_budget(quick), device=device,
                                          show_progress=progress))
        elif not given and ref is not None:
            ckpt = verify_reference(ref)
            log(f"{spec}: reference checkpoint {ckpt}")
        model = build_upstream(spec, ckpt=ckpt)
        meta = read_meta(ckpt)
    elif fam.takes_front_end:  # weight-free on the log-mel front-end: normalised with this corpus's statistics
        from pretrain.stats import normalized_feature_config  # the corpus statistics: only for a weight-free front-end

        feature, encoder = fam.front_end(preset), None
        if fam.architecture_from is not None:
            feature, encoder = control_architecture(spec, ckpts, runs_dir, quick, pretrain)
        feature = normalized_feature_config(corpus, feature, split=normalisation_split(corpus), progress=progress)
        model = build_upstream(spec, feature=feature, encoder=encoder)
    else:  # another toolkit's model: its weights file, or a seeded initialisation
        model = build_upstream(spec, ckpt=ckpt)
    model.eval()
    return ResolvedUpstream(spec=spec, model=model, ckpt=ckpt, identity=upstream_identity(spec, ckpt, model),
                            params=count_parameters(model), pretrain_frames=int(meta.get("pretrain_frames", 0)),
                            pretrain_seconds=float(meta.get("pretrain_seconds", 0.0)),
                            pretrain_recipe=meta.get("pretrain_config", {}).get("recipe", "-") if meta else "-")
