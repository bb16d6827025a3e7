"""Pretraining settings (Mockingjay, arXiv 1910.12638; s3prl 0.4.18 mockingjay pretraining config) as one frozen
dataclass, and the CPU budgets of the main job."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from core.config import config_from_dict, config_to_dict

Precision = Literal["auto", "float32", "bfloat16"]


@dataclass(frozen=True)
class PretrainConfig:
    """Masked acoustic model training. Optimiser, schedule and masking defaults follow s3prl's Mockingjay."""

    steps: int = 2000  # optimizer steps (each = `accumulation` micro-batches)
    batch_size: int = 8  # utterances per micro-batch (s3prl: 32 on a GPU)
    accumulation: int = 1
    crop_frames: int = 500  # random crop of longer utterances, in model frames (s3prl Base: 1500)
    min_frames: int = 50  # shorter utterances are skipped (and counted in the log)
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01  # not applied to biases and LayerNorm weights
    warmup: float = 0.07  # fraction of steps with linear warm-up, then linear decay to 0
    clip: float = 5.0
    mask_proportion: float = 0.15
    mask_span: int = 7
    mask_zero: float = 0.8  # per utterance: P(zero the spans); P(random frames) = mask_random; rest unchanged
    mask_random: float = 0.1
    # weight of the L1 on unmasked frames (pretrain.masking.reconstruction_l1): 0 = Mockingjay's masked-only loss
    unmasked_weight: float = 0.0
    # "auto": bfloat16 autocast where measured to train as well as float32 (see docs/pretraining.md), else float32.
    precision: Precision = "auto"
    # None keeps the preset's. 0.0 lets CPU attention use the fused SDPA kernel: with dropout torch falls back
    # to the unfused math kernel, and a measured training step of the small preset took 2x as long.
    attention_dropout: float | None = None
    # Model-shape options a recipe may change (None keeps the preset's; recorded in the checkpoint's configs):
    # frame stacking R (FeatureConfig.downsample; mask_span then counts stacked steps) and Pre-LN layers.
    downsample: int | None = None
    pre_layer_norm: bool | None = None
    recipe: str = "custom"  # the name of the recipe this config came from (RECIPES), "+..." when flags changed it
    val_fraction: float = 0.05  # utterances held out for the validation loss
    val_max_utterances: int = 64
    eval_interval: int = 100  # steps between validation losses (and always at the end)
    ckpt_interval: int = 200  # steps between checkpoints (and always at the end)
    log_interval: int = 10  # steps between CSV rows
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "accumulation", "crop_frames", "mask_span", "eval_interval",
                     "ckpt_interval", "log_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"PretrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.crop_frames < self.mask_span or self.min_frames < self.mask_span:
            raise ValueError(f"PretrainConfig: crop_frames and min_frames must be >= mask_span ({self.mask_span})")
        if not 0 < self.mask_proportion < 1 or not 0 <= self.warmup < 1 or not 0 <= self.val_fraction < 1:
            raise ValueError("PretrainConfig: mask_proportion in (0, 1), warmup and val_fraction in [0, 1)")
        if self.mask_zero < 0 or self.mask_random < 0 or self.mask_zero + self.mask_random > 1:
            raise ValueError("PretrainConfig: mask_zero + mask_random must be within [0, 1]")
        if not 0 <= self.unmasked_weight < 1:
            raise ValueError(f"PretrainConfig.unmasked_weight must be in [0, 1), got {self.unmasked_weight}")
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"PretrainConfig.lr must be a finite number > 0, got {self.lr}")
        if self.downsample is not None and self.downsample < 1:
            raise ValueError(f"PretrainConfig.downsample must be >= 1, got {self.downsample}")
        if self.precision not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"PretrainConfig.precision must be auto, float32 or bfloat16; got {self.precision!r}")

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainConfig":
        return config_from_dict(cls, d, "pretrain config")


def _recipe(name: str, **kw) -> PretrainConfig:
    """A named recipe at the main job's from-scratch budget (`--pretrain`): 200 steps x 16 utterances x 150-step crops
    (about 1.4M 10-ms frames with R = 3), attention dropout 0 (the fused CPU attention kernel; docs/pretraining.md),
    held-out loss every 50 steps. Studies and the reference checkpoints set their own `steps`."""
    base = dict(steps=200, batch_size=16, crop_frames=150, eval_interval=50, ckpt_interval=50,
                attention_dropout=0.0, val_max_utterances=32)
    return PretrainConfig(recipe=name, **{**base, **kw})


# The recipes of the recipe study (docs/pretraining.md, `python -m analysis.recipe_study`): the same model, data
# and masking rule, differing only in what the name says. `s3prl` is s3prl's own settings (lr 2e-4, no stacking,
# Post-LN) at our batch; stacked recipes count crops and spans in stacked steps (Mockingjay LARGE: R = 3, C = 3).
RECIPES: dict[str, PretrainConfig] = {
    "s3prl": _recipe("s3prl", lr=2e-4),
    # the main job's recipe and budget before the reference checkpoints shipped (500 steps, about 1.2M frames)
    "mainjob": _recipe("mainjob", lr=1e-3, steps=500, eval_interval=100, ckpt_interval=100),
    "stack3": _recipe("stack3", lr=1e-3, downsample=3, mask_span=3),
    "preln": _recipe("preln", lr=1e-3, pre_layer_norm=True),
    "preln_stack3": _recipe("preln_stack3", lr=1e-3, downsample=3, mask_span=3, pre_layer_norm=True),
    "preln_stack3_lr3e-3": _recipe("preln_stack3_lr3e-3", lr=3e-3, downsample=3, mask_span=3, pre_layer_norm=True),
    "preln_stack3_b32": _recipe("preln_stack3_b32", lr=1e-3, batch_size=32, downsample=3, mask_span=3,
                                pre_layer_norm=True),
}
# The recipe the recipe study chose (docs/pretraining.md): the reference checkpoints (checkpoints/) are this recipe
# at 2000 steps, 10x the frames of the main job's from-scratch budget (`default_budget`, 200 steps).
DEFAULT_RECIPE = "preln_stack3"
QUICK = PretrainConfig(recipe="quick", steps=40, batch_size=8, crop_frames=150, eval_interval=20, ckpt_interval=20,
                       warmup=0.1, lr=1e-3, attention_dropout=0.0, val_max_utterances=16, downsample=3, mask_span=3,
                       pre_layer_norm=True)


def default_budget(quick: bool = False) -> PretrainConfig:
    """The main job's from-scratch pretraining per model (`--pretrain`): the default recipe at 200 steps, about a
    minute and a half per model on 2 CPU cores (quick: a smoke run of well under a minute)."""
    return QUICK if quick else RECIPES[DEFAULT_RECIPE]


def with_overrides(cfg: PretrainConfig, **kw) -> PretrainConfig:
    """`cfg` with the given non-None fields replaced (CLI flags); a recipe changed beyond its budget (steps,
    intervals, seed) is recorded as `NAME+field,...`."""
    kw = {k: v for k, v in kw.items() if v is not None and v != getattr(cfg, k)}
    changed = sorted(set(kw) - {"steps", "eval_interval", "ckpt_interval", "log_interval", "seed", "precision"})
    label = f"{cfg.recipe}+{','.join(changed)}" if changed and cfg.recipe != "custom" else cfg.recipe
    return replace(cfg, **kw, recipe=label)
