"""An upstream's planned shape (hidden states, width, front-end, frame rule, weights' identity), read from its
planned checkpoint (or preset) without building it: what sharding (benchmark.shards), the feature cache's size
(benchmark.cachesize), --dry-run and `prepare` plan with."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from benchmark.resolve import control_architecture, planned_checkpoint
from core.frames import FrameRule
from upstream.checkpoint import read_meta
from upstream.features import FeatureConfig
from upstream.registry import EXTERNAL, RANDOM_CONTROLS, get_preset, is_external, parse_spec, static_shape

if TYPE_CHECKING:
    from benchmark.plan import BenchmarkConfig


@dataclass(frozen=True)
class Shape:
    """What an upstream's cache holds per frame, read from its planned checkpoint (or preset) without building it."""

    hidden_states: int
    hidden_size: int
    feature: FeatureConfig | None  # the log-mel front-end; None for upstreams of other toolkits (registry.EXTERNAL)
    ckpt_hash: str | None  # the planned weights' identity hash; None for mel / toolkit random-init controls
    fresh: bool  # its checkpoint is still to be pretrained: nothing cached can be for it yet
    frame_rule: FrameRule


def planned_shape(spec: str, cfg: BenchmarkConfig) -> Shape:
    """As benchmark.resolve will build `spec`: its checkpoint's config (--ckpt, the shipped reference, or a
    --pretrain checkpoint), the recipe's before that checkpoint exists, a random control's family's, mel's preset."""
    name, preset = parse_spec(spec)
    if is_external(name):
        ckpt = planned_checkpoint(spec, cfg.ckpts, cfg.runs_dir, cfg.quick, cfg.pretrain)
        ext, ident = static_shape(spec, ckpt), EXTERNAL[name].identity_hash(preset, ckpt)[:16]
        return Shape(ext.num_hidden_states, ext.hidden_size, None, ident, fresh=False, frame_rule=ext.frame_rule)
    p = get_preset(name, preset)
    if p.encoder is None:
        return Shape(1, p.feature.feature_dim, p.feature, None, fresh=False, frame_rule=p.feature.frame_rule)
    if name in RANDOM_CONTROLS:
        feature, encoder = control_architecture(spec, cfg.ckpts, cfg.runs_dir, cfg.quick, cfg.pretrain)
        return Shape(encoder.num_layers + 1, encoder.hidden_size, feature, None, fresh=False,
                     frame_rule=feature.frame_rule)
    ckpt = planned_checkpoint(spec, cfg.ckpts, cfg.runs_dir, cfg.quick, cfg.pretrain)
    assert ckpt is not None
    if (ckpt / "checkpoint.json").is_file():
        meta = read_meta(ckpt)
        feature = FeatureConfig.from_dict(meta["feature"])
        return Shape(int(meta["encoder"]["num_layers"]) + 1, int(meta["encoder"]["hidden_size"]), feature,
                     str(meta["files"]["model"]["sha256"])[:16], fresh=False, frame_rule=feature.frame_rule)
    from pretrain import default_budget  # the pretraining code: loaded only to plan a checkpoint still to pretrain
    from pretrain.train import model_configs

    _, feature, encoder = model_configs(f"{name}:{preset}", default_budget(cfg.quick))  # --pretrain, not trained yet
    return Shape(encoder.num_layers + 1, encoder.hidden_size, feature, None, fresh=True, frame_rule=feature.frame_rule)
