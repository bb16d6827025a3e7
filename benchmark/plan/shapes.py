"""An upstream as the plan sees it before anything is built: its shape (hidden states, width, frame rule), front-end
and weights' identity, read from its planned checkpoint (or preset). What sharding (benchmark.plan.shards), the
feature cache's size (benchmark.plan.cachesize), --dry-run and `prepare` plan with."""
from __future__ import annotations

from dataclasses import dataclass

from benchmark.inputs.upstream import awaits_pretraining, control_architecture, planned_checkpoint
from benchmark.plan.config import BenchmarkConfig
from pretrain import default_budget
from pretrain.train import model_configs
from upstream.features import FeatureConfig
from upstream.interface import UpstreamShape
from upstream.registry import family_of


@dataclass(frozen=True)
class PlannedUpstream:
    """An upstream as this plan will build it, known without building it: the shape its model will have (the one
    shape type, upstream.interface.UpstreamShape) and what the plan needs besides to find and size its cache."""

    shape: UpstreamShape
    feature: FeatureConfig | None  # the log-mel front-end; None for upstreams of other toolkits (Family.front_end)
    ckpt_hash: str | None  # the planned weights' identity hash; None for mel / toolkit random-init controls
    fresh: bool  # its checkpoint is still to be pretrained: nothing cached can be for it yet


def planned_upstream(spec: str, cfg: BenchmarkConfig) -> PlannedUpstream:
    """As benchmark.inputs.upstream will build `spec`: its weights' config (--ckpt, the shipped reference, or a
    --pretrain checkpoint), the recipe's before a --pretrain checkpoint exists, a random control's model's, else its
    preset's."""
    fam, preset = family_of(spec)
    if fam.architecture_from is not None:  # a random-init control shaped like its model's checkpoint
        feature, encoder = control_architecture(spec, cfg.ckpts, cfg.runs_dir, cfg.quick, cfg.pretrain)
        return PlannedUpstream(UpstreamShape(encoder.num_layers + 1, encoder.hidden_size, feature.frame_rule), feature,
                               None, fresh=False)
    ckpt = planned_checkpoint(spec, cfg.ckpts, cfg.runs_dir, cfg.quick, cfg.pretrain)
    if awaits_pretraining(fam, ckpt):  # the recipe's front-end and encoder
        _, feature, encoder = model_configs(f"{fam.name}:{preset}", default_budget(cfg.quick))
        return PlannedUpstream(UpstreamShape(encoder.num_layers + 1, encoder.hidden_size, feature.frame_rule), feature,
                               None, fresh=True)
    ident = fam.identity_hash(preset, ckpt)  # None for mel: its identity hashes the corpus statistics
    return PlannedUpstream(fam.shape(preset, ckpt), fam.front_end(preset, ckpt), None if ident is None else ident[:16],
                           fresh=False)
