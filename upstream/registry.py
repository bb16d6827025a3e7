"""Upstream registry: every upstream name -> its family object (upstream.family.Family), and the spec-level helpers.

Names: `mel` (log-mel baseline), `mockingjay`, `aalbert`, and the random-init controls
`mockingjay_random` / `aalbert_random` (same architecture, never trained); from torchaudio.models `wav2vec2_base`,
`hubert_base`, `wavlm_base` (weights from a local .pth) and their random-init controls `*_random`; `s3prl:NAME`, an
s3prl hub upstream from a local checkpoint. A spec is `name` or `name:preset` (e.g. `mockingjay:base`,
`wav2vec2_base:tiny`; for s3prl the preset is the hub name); without a preset the family's default is used.

Callers ask the family (`family_of(spec)`) what kind of upstream a name is: whether it takes weights, whether this
toolkit pretrains it, its shape before it is built, its random-init control. Adding one is a family object plus one
line in FAMILIES: a log-mel variant is a preset of `mel` (or a LogMelFamily under its own name), a torchaudio model a
TorchaudioFamily over its presets, a pretrainable Transformer a TransformerFamily; a model's random-init control is
one more line, `MODEL.random_control()`.
"""
from __future__ import annotations

from pathlib import Path

from upstream.family import Family
from upstream.features import FeatureConfig
from upstream.interface import Upstream, UpstreamShape
from upstream.s3prl_hub import S3prlFamily
from upstream.toolkit import LogMelFamily, TransformerFamily, TransformerPreset, load_upstream
from upstream.torchaudio_models import PRESETS as TORCHAUDIO_PRESETS, TorchaudioFamily
from upstream.transformer import EncoderConfig

__all__ = ["FAMILIES", "build_upstream", "check_ckpt", "ckpt_key", "family", "family_of", "load_upstream",
           "parse_spec", "pretrainable_family", "pretrainable_names", "static_shape", "upstream_identity",
           "upstream_names"]


def _base(layers: int, share: bool) -> EncoderConfig:
    return EncoderConfig(num_layers=layers, share_layers=share)  # 768 hidden, 12 heads, FFN 3072


def _small(layers: int, share: bool) -> EncoderConfig:
    # Sized so that 2 CPU cores pretrain it in minutes: 256 hidden, 4 heads of 64, FFN 1024.
    return EncoderConfig(num_layers=layers, share_layers=share, hidden_size=256, num_heads=4, intermediate_size=1024)


MEL, MEL_DELTA = FeatureConfig(), FeatureConfig(deltas=True)
# log-mel on the stacked models' 30-ms frames (3 frames stacked, 240-d): the input those models see, probed on the
# same frames and labels, so a gap between mel and a stacked Transformer is not the frame rate or the 30-ms context
MEL_STACK3 = FeatureConfig(downsample=3)

# `small-r1`: the small encoder on 10-ms frames (R = 1, no stacking), the frame rate of Mockingjay BASE; its reference
# checkpoint is pretrained with the `preln` recipe (upstream/reference.py, docs/pretraining.md)
MOCKINGJAY = TransformerFamily("mockingjay", {
    "small": TransformerPreset(MEL, _small(3, False)),
    "small-r1": TransformerPreset(MEL, _small(3, False), stacking=1),
    "base": TransformerPreset(MEL, _base(3, False)),  # hub mockingjay_960hr: 21,327,360 parameters
    "large": TransformerPreset(MEL, _base(12, False)),  # hub mockingjay: 85,118,208 parameters
}, control="mockingjay_random")
AALBERT = TransformerFamily("aalbert", {
    "small": TransformerPreset(MEL, _small(3, True)),
    "small-r1": TransformerPreset(MEL, _small(3, True), stacking=1),
    "base": TransformerPreset(MEL, _base(3, True)),  # hub audio_albert: 7,151,616 parameters at any depth
    "base6": TransformerPreset(MEL, _base(6, True)),
}, control="aalbert_random")
WAV2VEC2 = TorchaudioFamily("wav2vec2_base", TORCHAUDIO_PRESETS["wav2vec2"], control="wav2vec2_base_random")
HUBERT = TorchaudioFamily("hubert_base", TORCHAUDIO_PRESETS["hubert"], control="hubert_base_random")
WAVLM = TorchaudioFamily("wavlm_base", TORCHAUDIO_PRESETS["wavlm"], control="wavlm_base_random")

FAMILIES: dict[str, Family] = {  # name -> family; each family's `name` is its key (tests/test_upstream_families.py)
    "mel": LogMelFamily("mel", {"default": MEL, "delta": MEL_DELTA, "stack3": MEL_STACK3}),
    "mockingjay": MOCKINGJAY,
    "aalbert": AALBERT,
    "mockingjay_random": MOCKINGJAY.random_control(),
    "aalbert_random": AALBERT.random_control(),
    "wav2vec2_base": WAV2VEC2,
    "hubert_base": HUBERT,
    "wavlm_base": WAVLM,
    "wav2vec2_base_random": WAV2VEC2.random_control(),
    "hubert_base_random": HUBERT.random_control(),
    "wavlm_base_random": WAVLM.random_control(),
    "s3prl": S3prlFamily(),
}


def upstream_names() -> list[str]:
    return list(FAMILIES)


def pretrainable_names() -> list[str]:
    return [n for n, f in FAMILIES.items() if f.pretrainable]


def controlled_model(name: str) -> str | None:
    """The model `name` is the random-init control of (None: not a control, or not registered)."""
    return next((n for n, f in FAMILIES.items() if f.control == name), None)


def family(name: str) -> Family:
    """The family registered as `name`; unknown names raise listing the valid ones."""
    if name not in FAMILIES:
        raise ValueError(f"unknown upstream {name!r}; valid: {', '.join(upstream_names())}")
    return FAMILIES[name]


def family_of(spec: str) -> tuple[Family, str]:
    """'mockingjay:base' -> (the mockingjay family, 'base'); the family's default preset when none is given."""
    name, _, preset = spec.partition(":")
    fam = family(name)
    preset = preset or fam.default_preset
    if preset not in fam.presets:
        raise ValueError(f"unknown preset {preset!r} for upstream {name!r}; valid: {', '.join(fam.presets)}")
    return fam, preset


def parse_spec(spec: str) -> tuple[str, str]:
    """'mockingjay:base' -> ('mockingjay', 'base'); unknown names raise listing the valid ones."""
    fam, preset = family_of(spec)
    return fam.name, preset


def pretrainable_family(spec: str) -> tuple[Family, str]:
    """family_of(spec) for a spec `python -m pretrain` can train; a one-line ValueError naming the pretrainable
    upstreams otherwise."""
    fam, preset = family_of(spec)
    if not fam.pretrainable:
        raise ValueError(f"{fam.name} cannot be pretrained by this toolkit ({fam.description}); pretrainable: "
                         f"{', '.join(pretrainable_names())}")
    return fam, preset


def ckpt_key(spec: str) -> str:
    """The NAME of --ckpt NAME=PATH for `spec`: the upstream's name, or `s3prl:HUBNAME` (one file per hub entry)."""
    fam, preset = family_of(spec)
    return fam.ckpt_key(preset)


def static_shape(spec: str, ckpt: Path | None) -> UpstreamShape:
    """Hidden states, width and frame rule of `spec` with `ckpt`, without building the model."""
    fam, preset = family_of(spec)
    return fam.shape(preset, None if ckpt is None else Path(ckpt))


def check_ckpt(key: str, path: Path) -> None:
    """Planning-time check of --ckpt KEY=PATH: the weights a family takes, in its format;
    ValueError/CheckpointError naming the flag."""
    name, _, preset = key.partition(":")
    fam = FAMILIES.get(name)
    if fam is not None and fam.takes_weights and preset and not fam.ckpt_per_preset:
        raise ValueError(f"--ckpt '{key}={path}': name the upstream without a preset, --ckpt {name}=PATH (its "
                         f"weights are one file for every preset)")
    if fam is None or not fam.takes_weights:
        valid = [f"{n}:NAME" if f.ckpt_per_preset else n for n, f in FAMILIES.items() if f.takes_weights]
        raise ValueError(f"--ckpt '{key}={path}': {key!r} is not a pretrained upstream (it takes no weights); "
                         f"valid: {', '.join(valid)}")
    fam.check_ckpt(key, path)


def build_upstream(spec: str, ckpt: str | Path | None = None, feature: FeatureConfig | None = None,
                   encoder: EncoderConfig | None = None) -> Upstream:
    """Build an upstream by spec. Pretrained upstreams need `ckpt`; a toolkit checkpoint's config wins over the preset.

    `feature` overrides the preset's front-end (e.g. one carrying corpus normalisation statistics) of the
    weight-free log-mel upstreams (`mel`, the Transformers' random-init controls), `encoder` a control's encoder
    (to match the checkpoint it controls for; its input_dim follows `feature`); weights bring their own.
    """
    fam, preset = family_of(spec)
    return fam.build(preset, None if ckpt is None else Path(ckpt), feature=feature, encoder=encoder)


def upstream_identity(spec: str, ckpt: str | Path | None, model: Upstream) -> dict[str, str]:
    """What identifies an upstream's outputs (for cache keys and result rows)."""
    fam, preset = family_of(spec)
    h = fam.identity_hash(preset, None if ckpt is None else Path(ckpt), model)
    assert h is not None, f"{spec}: no identity with the built model"
    return {"upstream": fam.name, "preset": preset, "ckpt_hash": h[:16]}
