"""An upstream's planned shape (hidden states, width, front-end, frame rule, weights' identity), read from its
planned checkpoint (or preset) without building it: what sharding (benchmark.plan.shards), the feature cache's size
(benchmark.plan.cachesize), --dry-run and `prepare` plan with."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from benchmark.inputs.upstream import awaits_pretraining, control_architecture, planned_checkpoint
from core.frames import FrameRule
from upstream.features import FeatureConfig
from upstream.registry import family_of

if TYPE_CHECKING:
    from benchmark.plan.config import BenchmarkConfig


@dataclass(frozen=True)
class Shape:
    """What an upstream's cache holds per frame, read from its planned checkpoint (or preset) without building it."""

    hidden_states: int
    hidden_size: int
    feature: FeatureConfig | None  # the log-mel front-end; None for upstreams of other toolkits (Family.front_end)
    ckpt_hash: str | None  # the planned weights' identity hash; None for mel / toolkit random-init controls
    fresh: bool  # its checkpoint is still to be pretrained: nothing cached can be for it yet
    frame_rule: FrameRule


def planned_shape(spec: str, cfg: BenchmarkConfig) -> Shape:
    """As benchmark.inputs.upstream will build `spec`: its weights' config (--ckpt, the shipped reference, or a
    --pretrain checkpoint), the recipe's before a --pretrain checkpoint exists, a random control's model's, else its
    preset's."""
    fam, preset = family_of(spec)
    if fam.architecture_from is not None:  # a random-init control shaped like its model's checkpoint
        feature, encoder = control_architecture(spec, cfg.ckpts, cfg.runs_dir, cfg.quick, cfg.pretrain)
        return Shape(encoder.num_layers + 1, encoder.hidden_size, feature, None, fresh=False,
                     frame_rule=feature.frame_rule)
    ckpt = planned_checkpoint(spec, cfg.ckpts, cfg.runs_dir, cfg.quick, cfg.pretrain)
    if awaits_pretraining(fam, ckpt):
        from pretrain import default_budget  # the recipe: loaded only to plan a checkpoint still to pretrain
        from pretrain.train import model_configs  # idem

        _, feature, encoder = model_configs(f"{fam.name}:{preset}", default_budget(cfg.quick))
        return Shape(encoder.num_layers + 1, encoder.hidden_size, feature, None, fresh=True,
                     frame_rule=feature.frame_rule)
    shape = fam.shape(preset, ckpt)
    ident = fam.identity_hash(preset, ckpt)  # None for mel: its identity hashes the corpus statistics
    return Shape(shape.num_hidden_states, shape.hidden_size, fam.front_end(preset, ckpt),
                 None if ident is None else ident[:16], fresh=False, frame_rule=shape.frame_rule)
