"""The two packaged jobs: the default benchmark (<= 30 min on 2 CPU cores) and `--quick` (<= 5 min)."""
from __future__ import annotations

from benchmark.plan import BenchmarkConfig
from downstream.train import ProbeConfig

# Probe budget, chosen by measurement on the built-in corpus (docs/benchmark.md): at 150-300 steps
# REFERENCE's lr 2e-4 leaves the probes far from converged (mel phone_linear 0.21 vs 0.57 frame accuracy at
# lr 1e-2; speaker_utterance 0.02 vs 0.35), so the CPU budget uses lr 1e-2 with AdamW, batch 32, clip 1.
# 432 frozen runs must share ~10 of the 30 minutes (corpus, pretraining and extraction take the rest), hence
# 150 steps (mel phone_linear: same accuracy as 300 steps; speaker_utterance 0.25 vs 0.35) and 2048 frames per step.
MAIN_PROBE = ProbeConfig(lr=1e-2, batch_size=32, max_steps=150, eval_every=50, frames_per_step=2048)
MAIN_FINETUNE = ProbeConfig(lr=1e-2, upstream_lr=5e-5, batch_size=16, max_steps=30, eval_every=15)
QUICK_PROBE = ProbeConfig(lr=1e-2, batch_size=32, max_steps=40, eval_every=20, frames_per_step=2048)
QUICK_FINETUNE = ProbeConfig(lr=1e-2, upstream_lr=5e-5, batch_size=8, max_steps=4, eval_every=2)


def main_job() -> BenchmarkConfig:
    """All four probes x {last, weighted_sum} x default fractions x 3 seeds x 5 upstreams, plus fine-tuning
    of Mockingjay and AALBERT (phone_linear, speaker_utterance) at the smallest and largest fraction, 1 seed."""
    return BenchmarkConfig(probe=MAIN_PROBE, finetune_probe=MAIN_FINETUNE, seeds=3, finetune_seeds=1, report=True)


def quick_job() -> BenchmarkConfig:
    """The smoke version the tests run: same pipeline on the small corpus (data/synth_quick) with tiny budgets,
    two fractions (12.5 % and 100 %) and two seeds."""
    return BenchmarkConfig(probe=QUICK_PROBE, finetune_probe=QUICK_FINETUNE, fractions=(0.125, 1.0), seeds=2,
                           finetune_seeds=1, quick=True, report=True)
