"""Each upstream of a plan: the checkpoint it will use (planned before anything is built), and the model itself,
built from --ckpt, the shipped reference or a --pretrain checkpoint (pretrained here if missing), or with corpus
statistics for the weight-free log-mel upstreams."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.inputs.corpus import normalisation_split
from corpora.manifest import Corpus
from pretrain import default_budget, ensure_pretrained
from pretrain.stats import normalized_feature_config
from pretrain.train import model_configs
from upstream.checkpoint import META_FILE, read_meta
from upstream.family import Family
from upstream.features import FeatureConfig
from upstream.interface import Upstream
from upstream.reference import SHIPPED_CHECKPOINTS, reference_for, verify_reference
from upstream.registry import build_upstream, family, family_of, parse_spec, upstream_identity
from upstream.transformer import EncoderConfig, count_parameters


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
        model_configs(spec, default_budget(quick))  # a preset that pins its frame rate refuses the job's recipe here
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


def control_architecture(spec: str, ckpts: dict[str, str], runs_dir: Path, quick: bool, pretrain: bool
                         ) -> tuple[FeatureConfig, EncoderConfig]:
    """Front-end and encoder of a random-init control of a pretrainable family (`architecture_from`): those of the
    checkpoint that family uses in this job, its input normalisation included (so the control differs from its twin
    in the weights only: with the probe corpus's own statistics a control would read better-normalised input than
    its twin on any corpus but the twin's pretraining corpus), or, before a `--pretrain` checkpoint exists, those the
    job's pretraining recipe will give it (statistics: none yet, the corpus's pretraining split's, as the recipe's)."""
    fam, preset = family_of(spec)
    if fam.architecture_from is None:
        raise ValueError(f"--upstream {spec}: not a random-init control of a pretrainable upstream")
    model = family(fam.architecture_from)
    model_spec = f"{model.name}:{preset}"
    ckpt = planned_checkpoint(model_spec, ckpts, runs_dir, quick, pretrain)
    if ckpt is not None and not awaits_pretraining(model, ckpt):
        return model.architecture(preset, ckpt)
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
            log(f"{spec}: pretraining from scratch into {ckpt} (reused when complete and matching)")
            ckpt = Path(ensure_pretrained(f"{fam.name}:{preset}", corpus, ckpt, default_budget(quick), device=device,
                                          show_progress=progress))
        elif not given and ref is not None:
            ckpt = verify_reference(ref)
            log(f"{spec}: reference checkpoint {ckpt}")
        model = build_upstream(spec, ckpt=ckpt)
        meta = read_meta(ckpt)
    elif fam.takes_front_end:  # weight-free on the log-mel front-end: mel normalised with this corpus's statistics,
        feature, encoder = fam.front_end(preset), None  # a control with its twin's
        if fam.architecture_from is not None:
            feature, encoder = control_architecture(spec, ckpts, runs_dir, quick, pretrain)
        if not feature.norm_mean:
            feature = normalized_feature_config(corpus, feature, split=normalisation_split(corpus), progress=progress)
        model = build_upstream(spec, feature=feature, encoder=encoder)
    else:  # another toolkit's model: its weights file, or a seeded initialisation
        model = build_upstream(spec, ckpt=ckpt)
    model.eval()
    return ResolvedUpstream(spec=spec, model=model, ckpt=ckpt, identity=upstream_identity(spec, ckpt, model),
                            params=count_parameters(model), pretrain_frames=int(meta.get("pretrain_frames", 0)),
                            pretrain_seconds=float(meta.get("pretrain_seconds", 0.0)),
                            pretrain_recipe=meta.get("pretrain_config", {}).get("recipe", "-") if meta else "-")
