"""The toolkit's own kinds of upstream, all on its log-mel front-end (upstream.features): the log-mel baseline,
the Transformers it pretrains (Mockingjay, AALBERT; one class, parameterised by presets) and their random-init
controls. Their presets are in upstream/registry.py.

A weight-free upstream (the baseline, a control) takes its front-end from the caller, who computes the corpus
normalisation statistics; its identity is then the hash of that front-end, the encoder and the seed, known once
it is built. A pretrained Transformer brings front-end, statistics and encoder in its checkpoint directory, whose
config wins over the preset, and is identified by its weights' hash.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from core.io import sha256_json
from upstream.checkpoint import (META_FILE, CheckpointError, checkpoint_hash, load_checkpoint, read_meta,
                                 verify_checkpoint)
from upstream.family import Family
from upstream.features import FeatureConfig
from upstream.interface import (RANDOM_INIT_SEED, LogMelUpstream, MelUpstream, TransformerUpstream, Upstream,
                                UpstreamShape)
from upstream.transformer import EncoderConfig


@dataclass(frozen=True)
class TransformerPreset:
    feature: FeatureConfig
    encoder: EncoderConfig
    # frames stacked per step that every checkpoint of this preset has (None: whatever the pretraining recipe
    # stacks); a recipe stacking otherwise is refused (pretrain.train.model_configs)
    stacking: int | None = None


def seeded_identity(model: Upstream) -> str:
    """The identity of a weight-free log-mel upstream: its front-end (with statistics), encoder and seed."""
    assert isinstance(model, LogMelUpstream), f"a weight-free toolkit upstream, got {type(model).__name__}"
    cfg = {"feature": model.feature_cfg.to_dict(), "seed": RANDOM_INIT_SEED,
           "encoder": model.encoder_cfg.to_dict() if isinstance(model, TransformerUpstream) else None}
    return sha256_json(cfg)


@dataclass(frozen=True)
class LogMelFamily(Family):
    """Log-mel features as the one hidden state (the baseline). A variant is one more preset, or one more
    LogMelFamily under its own name."""

    name: str
    presets: Mapping[str, FeatureConfig]
    default_preset: str = "default"
    description = "log-mel baseline"
    takes_front_end = True

    def front_end(self, preset: str, ckpt: Path | None = None) -> FeatureConfig:
        self._no_weights(ckpt)
        return self.presets[preset]

    def shape(self, preset: str, ckpt: Path | None) -> UpstreamShape:
        feature = self.front_end(preset, ckpt)
        return UpstreamShape(1, feature.feature_dim, feature.frame_rule)

    def identity_hash(self, preset: str, ckpt: Path | None, model: Upstream | None = None) -> str | None:
        return None if model is None else seeded_identity(model)

    def build(self, preset: str, ckpt: Path | None = None, feature: FeatureConfig | None = None,
              encoder: EncoderConfig | None = None) -> MelUpstream:
        if ckpt is not None:
            raise ValueError(f"upstream {self.name!r} has no weights: --ckpt is only for pretrained upstreams")
        if encoder is not None:
            raise ValueError(f"upstream {self.name!r} has no encoder")
        return MelUpstream(feature or self.presets[preset])


@dataclass(frozen=True)
class TransformerFamily(Family):
    """A Transformer encoder over log-mel frames that this toolkit pretrains (`python -m pretrain`), built from a
    toolkit checkpoint directory; its random-init control is `control`."""

    name: str
    presets: Mapping[str, TransformerPreset]
    default_preset: str = "small"
    control: str | None = None
    description = "Transformer this toolkit pretrains"
    takes_weights = True
    pretrainable = True

    def architecture(self, preset: str, ckpt: Path | None = None) -> tuple[FeatureConfig, EncoderConfig]:
        if ckpt is None:
            p = self.presets[preset]
            return p.feature, p.encoder
        meta = read_meta(ckpt)
        return FeatureConfig.from_dict(meta["feature"]), EncoderConfig.from_dict(meta["encoder"])

    def front_end(self, preset: str, ckpt: Path | None = None) -> FeatureConfig:
        return self.architecture(preset, ckpt)[0]

    def random_control(self) -> TransformerControl:
        if self.control is None:
            raise ValueError(f"upstream {self.name!r} has no random-init control")
        return TransformerControl(self)

    def shape(self, preset: str, ckpt: Path | None) -> UpstreamShape:
        feature, enc = self.architecture(preset, ckpt)
        return UpstreamShape(enc.num_layers + 1, enc.hidden_size, feature.frame_rule)

    def check_ckpt(self, key: str, path: Path) -> None:
        if not (path / META_FILE).is_file():
            raise ValueError(f"--ckpt '{key}={path}': {path} is not a checkpoint directory (no {META_FILE})")
        verify_checkpoint(path, family=self.name)

    def identity_hash(self, preset: str, ckpt: Path | None, model: Upstream | None = None) -> str | None:
        return None if ckpt is None else checkpoint_hash(ckpt)

    def build(self, preset: str, ckpt: Path | None = None, feature: FeatureConfig | None = None,
              encoder: EncoderConfig | None = None) -> TransformerUpstream:
        self._own_front_end(feature, encoder)
        if ckpt is None:
            raise ValueError(f"upstream {self.name!r} needs a checkpoint (--ckpt {self.name}=PATH, or pretrain one "
                             f"with `python -m pretrain --upstream {self.name}:{preset}`)")
        return load_upstream(ckpt, expect_family=self.name)


@dataclass(frozen=True)
class TransformerControl(Family):
    """The random-init control of a pretrainable Transformer: the same architecture, never trained, seeded (so its
    cached features are reused). Its presets are its model's; the planner hands it the architecture of the checkpoint
    its model uses in the same job (benchmark.inputs.upstream.control_architecture)."""

    model: TransformerFamily
    takes_front_end = True

    @property
    def name(self) -> str:  # type: ignore[override]
        assert self.model.control is not None
        return self.model.control

    @property
    def presets(self) -> Mapping[str, TransformerPreset]:  # type: ignore[override]
        return self.model.presets

    @property
    def default_preset(self) -> str:  # type: ignore[override]
        return self.model.default_preset

    @property
    def architecture_from(self) -> str:  # type: ignore[override]
        return self.model.name

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"random-init control of {self.model.name}"

    def architecture(self, preset: str, ckpt: Path | None = None) -> tuple[FeatureConfig, EncoderConfig]:
        self._no_weights(ckpt)
        return self.model.architecture(preset)

    def front_end(self, preset: str, ckpt: Path | None = None) -> FeatureConfig:
        return self.architecture(preset, ckpt)[0]

    def shape(self, preset: str, ckpt: Path | None) -> UpstreamShape:
        feature, enc = self.architecture(preset, ckpt)
        return UpstreamShape(enc.num_layers + 1, enc.hidden_size, feature.frame_rule)

    def identity_hash(self, preset: str, ckpt: Path | None, model: Upstream | None = None) -> str | None:
        return None if model is None else seeded_identity(model)

    def build(self, preset: str, ckpt: Path | None = None, feature: FeatureConfig | None = None,
              encoder: EncoderConfig | None = None) -> TransformerUpstream:
        """Seeded weights of `encoder` (default: the preset's), its input_dim following `feature`."""
        self._no_weights(ckpt)
        base_feature, base_encoder = self.architecture(preset)
        feat = feature or base_feature
        torch.manual_seed(RANDOM_INIT_SEED)
        return TransformerUpstream(feat, replace(encoder or base_encoder, input_dim=feat.feature_dim))


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
