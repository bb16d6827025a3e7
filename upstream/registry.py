"""Upstream registry: names -> presets (explicit dict literals) and the one factory that builds them.

Names: `mel` (log-mel baseline), `mockingjay`, `aalbert`, and the random-init controls
`mockingjay_random` / `aalbert_random` (same architecture, never trained); from torchaudio.models `wav2vec2_base`,
`hubert_base`, `wavlm_base` (weights from a local .pth) and their random-init controls `*_random`; `s3prl:NAME`, an
s3prl hub upstream from a local checkpoint. A spec is `name` or `name:preset` (e.g. `mockingjay:base`,
`wav2vec2_base:tiny`; for s3prl the preset is the hub name); without a preset the name's default is used.
Upstreams whose model code lives in another toolkit are one module each (an `ExternalFamily`) plus one line in
EXTERNAL.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch

from upstream.checkpoint import CheckpointError, checkpoint_hash, load_checkpoint
from upstream.features import FeatureConfig
from upstream.interface import RANDOM_INIT_SEED, MelUpstream, TransformerUpstream, Upstream, UpstreamShape
from upstream.s3prl_hub import S3prlFamily
from upstream.torchaudio_models import TorchaudioFamily
from upstream.transformer import EncoderConfig


@dataclass(frozen=True)
class Preset:
    feature: FeatureConfig
    encoder: EncoderConfig | None = None  # None: the log-mel baseline


def _base(layers: int, share: bool) -> EncoderConfig:
    return EncoderConfig(num_layers=layers, share_layers=share)  # 768 hidden, 12 heads, FFN 3072


def _small(layers: int, share: bool) -> EncoderConfig:
    # Sized so that 2 CPU cores pretrain it in minutes: 256 hidden, 4 heads of 64, FFN 1024.
    return EncoderConfig(num_layers=layers, share_layers=share, hidden_size=256, num_heads=4, intermediate_size=1024)


MEL, MEL_DELTA = FeatureConfig(), FeatureConfig(deltas=True)
# log-mel on the stacked models' 30-ms frames (3 frames stacked, 240-d): the input those models see, probed on the
# same frames and labels, so a gap between mel and a stacked Transformer is not the frame rate or the 30-ms context
MEL_STACK3 = FeatureConfig(downsample=3)

UPSTREAMS: dict[str, dict[str, Preset]] = {
    "mel": {"default": Preset(MEL), "delta": Preset(MEL_DELTA), "stack3": Preset(MEL_STACK3)},
    "mockingjay": {
        "small": Preset(MEL, _small(3, False)),
        "base": Preset(MEL, _base(3, False)),  # hub mockingjay_960hr: 21,327,360 parameters
        "large": Preset(MEL, _base(12, False)),  # hub mockingjay: 85,118,208 parameters
    },
    "aalbert": {
        "small": Preset(MEL, _small(3, True)),
        "base": Preset(MEL, _base(3, True)),  # hub audio_albert: 7,151,616 parameters at any depth
        "base6": Preset(MEL, _base(6, True)),
    },
}
RANDOM_CONTROLS: dict[str, str] = {"mockingjay_random": "mockingjay", "aalbert_random": "aalbert"}
DEFAULT_PRESET: dict[str, str] = {"mel": "default", "mockingjay": "small", "aalbert": "small"}


class ExternalFamily(Protocol):
    """A registry entry whose model code lives elsewhere (upstream/torchaudio_models.py, upstream/s3prl_hub.py)."""

    weights: bool  # True: built from --ckpt NAME=PATH; False: a seeded random-init control
    default_preset: str
    ckpt_per_preset: bool  # True: one weights file per preset, --ckpt NAME:PRESET=PATH (s3prl hub entries)

    @property
    def presets(self) -> Mapping[str, Any]: ...
    def shape(self, preset: str, ckpt: Path | None) -> UpstreamShape: ...
    def check_ckpt(self, name: str, path: Path) -> None: ...
    def identity_hash(self, preset: str, ckpt: Path | None) -> str: ...
    def build(self, name: str, preset: str, ckpt: Path | None) -> Upstream: ...


EXTERNAL: dict[str, ExternalFamily] = {
    "wav2vec2_base": TorchaudioFamily("wav2vec2", weights=True),
    "hubert_base": TorchaudioFamily("hubert", weights=True),
    "wavlm_base": TorchaudioFamily("wavlm", weights=True),
    "wav2vec2_base_random": TorchaudioFamily("wav2vec2", weights=False),
    "hubert_base_random": TorchaudioFamily("hubert", weights=False),
    "wavlm_base_random": TorchaudioFamily("wavlm", weights=False),
    "s3prl": S3prlFamily(),
}


def upstream_names() -> list[str]:
    return [*UPSTREAMS, *RANDOM_CONTROLS, *EXTERNAL]


def parse_spec(spec: str) -> tuple[str, str]:
    """'mockingjay:base' -> ('mockingjay', 'base'); unknown names raise listing the valid ones."""
    name, _, preset = spec.partition(":")
    if name in EXTERNAL:
        ext = EXTERNAL[name]
        preset = preset or ext.default_preset
        if preset not in ext.presets:
            raise ValueError(f"unknown preset {preset!r} for upstream {name!r}; valid: {', '.join(ext.presets)}")
        return name, preset
    family = RANDOM_CONTROLS.get(name, name)
    if family not in UPSTREAMS:
        raise ValueError(f"unknown upstream {name!r}; valid: {', '.join(upstream_names())}")
    preset = preset or DEFAULT_PRESET[family]
    if preset not in UPSTREAMS[family]:
        raise ValueError(f"unknown preset {preset!r} for upstream {name!r}; valid: {', '.join(UPSTREAMS[family])}")
    return name, preset


def get_preset(name: str, preset: str) -> Preset:
    """The log-mel/Transformer preset of a toolkit upstream (names in UPSTREAMS or RANDOM_CONTROLS)."""
    return UPSTREAMS[RANDOM_CONTROLS.get(name, name)][preset]


def is_external(name: str) -> bool:
    return name in EXTERNAL


def is_pretrained(name: str) -> bool:
    """True for upstreams whose weights must come from a checkpoint (not mel, not the random controls)."""
    if name in EXTERNAL:
        return EXTERNAL[name].weights
    return name in UPSTREAMS and get_preset(name, DEFAULT_PRESET[name]).encoder is not None


def ckpt_key(spec: str) -> str:
    """The NAME of --ckpt NAME=PATH for `spec`: the upstream's name, or `s3prl:HUBNAME` (one file per hub entry)."""
    name, preset = parse_spec(spec)
    return f"{name}:{preset}" if name in EXTERNAL and EXTERNAL[name].ckpt_per_preset else name


def static_shape(spec: str, ckpt: Path | None) -> UpstreamShape:
    """Hidden states, width and frame rule of `spec` with `ckpt`, without building the model."""
    name, preset = parse_spec(spec)
    if name in EXTERNAL:
        return EXTERNAL[name].shape(preset, ckpt)
    if ckpt is not None:
        from upstream.checkpoint import read_meta

        meta = read_meta(ckpt)
        enc = EncoderConfig.from_dict(meta["encoder"])
        return UpstreamShape(enc.num_layers + 1, enc.hidden_size, FeatureConfig.from_dict(meta["feature"]).frame_rule)
    p = get_preset(name, preset)
    if p.encoder is None:
        return UpstreamShape(1, p.feature.feature_dim, p.feature.frame_rule)
    return UpstreamShape(p.encoder.num_layers + 1, p.encoder.hidden_size, p.feature.frame_rule)


def check_ckpt(key: str, path: Path) -> None:
    """Planning-time check of --ckpt KEY=PATH: a toolkit checkpoint directory or the external family's file;
    ValueError/CheckpointError naming the flag."""
    name = key.partition(":")[0]
    if name in EXTERNAL:
        return EXTERNAL[name].check_ckpt(key, path)
    if ":" in key or not is_pretrained(name):
        valid = [n for n in upstream_names() if is_pretrained(n) and n != "s3prl"] + ["s3prl:NAME"]
        raise ValueError(f"--ckpt '{key}={path}': {key!r} is not a pretrained upstream (it has no weights to load); "
                         f"valid: {', '.join(valid)}")
    if not (path / "checkpoint.json").is_file():
        raise ValueError(f"--ckpt '{key}={path}': {path} is not a checkpoint directory (no checkpoint.json)")
    from upstream.checkpoint import verify_checkpoint

    verify_checkpoint(path, family=name)


def build_upstream(spec: str, ckpt: str | Path | None = None, feature: FeatureConfig | None = None,
                   encoder: EncoderConfig | None = None) -> Upstream:
    """Build an upstream by spec. Pretrained transformers need `ckpt`; its JSON config wins over the preset.

    `feature` overrides the preset's front-end (e.g. one carrying corpus normalisation statistics)
    for `mel` and the random-init controls, `encoder` the random-init control's encoder (to match the checkpoint it
    controls for; its input_dim follows `feature`); checkpoints always bring their own.
    """
    name, preset_name = parse_spec(spec)
    if name in EXTERNAL:
        return EXTERNAL[name].build(name, preset_name, None if ckpt is None else Path(ckpt))
    preset = get_preset(name, preset_name)
    if ckpt is not None:
        if preset.encoder is None:
            raise ValueError(f"upstream {name!r} has no weights: --ckpt is only for transformer upstreams")
        return load_upstream(ckpt, expect_family=RANDOM_CONTROLS.get(name, name))
    feat = feature or preset.feature
    if preset.encoder is None:
        return MelUpstream(feat)
    if is_pretrained(name):
        raise ValueError(f"upstream {name!r} needs a checkpoint (--ckpt {name}=PATH, or pretrain one with "
                         f"`python -m pretrain --upstream {name}:{preset_name}`)")
    torch.manual_seed(RANDOM_INIT_SEED)
    enc = replace(encoder or preset.encoder, input_dim=feat.feature_dim)
    return TransformerUpstream(feat, enc)


def load_upstream(ckpt: str | Path, expect_family: str | None = None) -> TransformerUpstream:
    """Load a TransformerUpstream from a toolkit checkpoint directory, checking it matches its config."""
    meta, tensors = load_checkpoint(ckpt)
    try:
        feature = FeatureConfig.from_dict(meta["feature"])
        encoder = EncoderConfig.from_dict(meta["encoder"])
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {ckpt}: bad or missing model/feature config: {e}") from e
    if expect_family is not None and meta.get("upstream") not in (None, expect_family):
        raise CheckpointError(f"checkpoint {ckpt} holds a {meta.get('upstream')!r} model, expected {expect_family!r}")
    model = TransformerUpstream(feature, encoder)
    state = {k.removeprefix("encoder."): v for k, v in tensors["model"].items() if k.startswith("encoder.")}
    try:
        missing, unexpected = model.encoder.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches raise even when strict=False
        raise CheckpointError(f"checkpoint {ckpt}: weights do not match its encoder config: {e}") from e
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {ckpt} does not match its encoder config: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    return model


def upstream_identity(spec: str, ckpt: str | Path | None, model: Upstream) -> dict[str, str]:
    """What identifies an upstream's outputs (for cache keys and result rows)."""
    from core.io import sha256_json

    name, preset = parse_spec(spec)
    if name in EXTERNAL:
        h = EXTERNAL[name].identity_hash(preset, None if ckpt is None else Path(ckpt))
    elif ckpt is not None:
        h = checkpoint_hash(ckpt)
    else:
        cfg = {"feature": model.feature_cfg.to_dict(), "seed": RANDOM_INIT_SEED,
               "encoder": model.encoder_cfg.to_dict() if isinstance(model, TransformerUpstream) else None}
        h = sha256_json(cfg)
    return {"upstream": name, "preset": preset, "ckpt_hash": h[:16]}
