"""What one kind of upstream is: a `Family`, the one object every caller asks instead of telling kinds apart by name.

The planner needs an upstream's outputs (hidden states, width, frame rule) before any model exists, the benchmark
needs to know where its weights come from and whether it computes corpus statistics for it, `python -m pretrain`
needs to know whether this toolkit can train it, and every caller needs to build it. A family answers all of these
for every preset of one registry name (upstream.registry.FAMILIES). The kinds: the log-mel baseline, the toolkit's
pretrainable Transformers and their random-init controls (upstream/toolkit.py), torchaudio models
(upstream/torchaudio_models.py) and s3prl hub models (upstream/s3prl_hub.py).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from upstream.features import FeatureConfig
from upstream.interface import Upstream, UpstreamShape
from upstream.transformer import EncoderConfig


class Family(ABC):
    """One kind of upstream under one registry name. Subclasses are frozen dataclasses; the class attributes below
    are the defaults of a weight-free upstream that brings its own input pipeline."""

    name: str  # its key in upstream.registry.FAMILIES
    default_preset: str
    presets: Mapping[str, Any]  # preset name -> what the family builds from it
    description: str  # one phrase for `run_benchmark.py --list` and errors: what kind of upstream it is
    # Built from weights: --ckpt KEY=PATH, else (pretrainable families) a shipped reference or a --pretrain checkpoint.
    takes_weights: bool = False
    # `python -m pretrain` trains it; its weights are toolkit checkpoint directories (upstream.checkpoint).
    pretrainable: bool = False
    # build() takes its log-mel front-end from the caller, who fills in corpus normalisation statistics
    # (benchmark.inputs.upstream, the cost table, the HEAR API): a weight-free upstream on the toolkit's features.
    takes_front_end: bool = False
    # One weights file per preset, --ckpt NAME:PRESET=PATH (s3prl hub entries); otherwise --ckpt NAME=PATH.
    ckpt_per_preset: bool = False
    # The registry name of its random-init control (same architecture, never trained), if it has one.
    control: str | None = None
    # A random-init control whose architecture is that of the checkpoint this pretrainable family uses in the same
    # job (its config can differ from the preset: recipes stack frames), so the two differ in the weights only.
    architecture_from: str | None = None

    @property
    def finetuned_by_default(self) -> bool:
        """Whether the benchmark fine-tunes it at the end label fractions unless told not to (--no-finetune): the
        upstreams this toolkit pretrains, as their papers do. `--mode finetune` fine-tunes any upstream."""
        return self.pretrainable

    def ckpt_key(self, preset: str) -> str:
        """The NAME of --ckpt NAME=PATH for this preset."""
        return f"{self.name}:{preset}" if self.ckpt_per_preset else self.name

    def front_end(self, preset: str, ckpt: Path | None = None) -> FeatureConfig | None:
        """The toolkit log-mel front-end it runs (a checkpoint's carries that checkpoint's statistics); None when
        the model brings its own input pipeline (another toolkit's model)."""
        return None

    def architecture(self, preset: str, ckpt: Path | None = None) -> tuple[FeatureConfig, EncoderConfig]:
        """(front-end, encoder) of a toolkit Transformer: the checkpoint's config when given, else the preset's."""
        raise ValueError(f"upstream {self.name!r} is not a Transformer of this toolkit ({self.description})")

    def random_control(self) -> Family:
        """The family of its random-init control (registered under `control`)."""
        raise ValueError(f"upstream {self.name!r} has no random-init control")

    @abstractmethod
    def shape(self, preset: str, ckpt: Path | None) -> UpstreamShape:
        """Hidden states, width and frame rule with these weights (None: weight-free), without building the model."""

    def check_ckpt(self, key: str, path: Path) -> None:
        """Planning-time check of --ckpt KEY=PATH; ValueError naming the flag."""
        raise ValueError(f"--ckpt '{key}={path}': {key!r} is not a pretrained upstream (it takes no weights)")

    @abstractmethod
    def identity_hash(self, preset: str, ckpt: Path | None, model: Upstream | None = None) -> str | None:
        """What identifies its outputs (result rows and cache keys hash it): the weights' hash, or the seeded
        architecture's. None when that needs the built `model` (corpus statistics) and none is given."""

    @abstractmethod
    def build(self, preset: str, ckpt: Path | None = None, feature: FeatureConfig | None = None,
              encoder: EncoderConfig | None = None) -> Upstream:
        """The model. `feature` and `encoder` are for families that take their front-end (`takes_front_end`):
        the front-end with corpus statistics, and a control's encoder copied from its model's checkpoint."""

    def _no_weights(self, ckpt: Path | None) -> None:
        if ckpt is not None:
            raise ValueError(f"upstream {self.name!r} takes no weights ({self.description}); got checkpoint {ckpt}")

    def _own_front_end(self, feature: FeatureConfig | None, encoder: EncoderConfig | None) -> None:
        if feature is not None or encoder is not None:
            raise ValueError(f"upstream {self.name!r} brings its own front-end and encoder ({self.description}); "
                             f"only weight-free log-mel upstreams take them")
