"""The two packaged jobs: the default benchmark (<= 30 min on 2 CPU cores) and `--quick` (<= 5 min)."""
from __future__ import annotations

from dataclasses import replace

from benchmark.plan import BenchmarkConfig
from downstream.train import ProbeConfig

# Probe budget, chosen by measurement on the built-in corpus (docs/benchmark.md): at 150-300 steps
# REFERENCE's lr 2e-4 leaves the probes far from converged (mel phone_linear 0.21 vs 0.57 frame accuracy at
# lr 1e-2), so the CPU budget uses lr 1e-2 with AdamW, batch 32, clip 1: 150 steps of 2048 frames, dev
# evaluated at steps 75 and 150. Per task where it pays:
# - phone_1hidden: its Linear(D, 768) makes it compute-bound (~2/3 of all probe time at 2048 frames), so
#   1024 frames per step (mockingjay weighted_sum test 0.531 vs 0.559 at 2048);
# - speaker_utterance: reads one mean-pooled row per utterance (exact, see downstream.sources.PooledSource),
#   so 600 steps cost ~1 s (mel test 0.080 at 150 steps, 0.19 at 1000; 600 is the budget's compromise).
# Fine-tuning runs the upstream forward+backward every step and evaluates it live on dev: ~45 s a run.
MAIN_PROBE = ProbeConfig(lr=1e-2, batch_size=32, max_steps=150, eval_every=75, frames_per_step=2048)
MAIN_TASK_PROBES = {
    "phone_1hidden": replace(MAIN_PROBE, frames_per_step=1024),
    "speaker_utterance": replace(MAIN_PROBE, max_steps=600, eval_every=100, frames_per_step=None),
}
MAIN_FINETUNE = ProbeConfig(lr=1e-2, upstream_lr=5e-5, batch_size=8, max_steps=40, eval_every=20)
QUICK_PROBE = ProbeConfig(lr=1e-2, batch_size=32, max_steps=40, eval_every=20, frames_per_step=2048)
QUICK_TASK_PROBES = {"speaker_utterance": replace(QUICK_PROBE, max_steps=200, eval_every=50, frames_per_step=None)}
QUICK_FINETUNE = ProbeConfig(lr=1e-2, upstream_lr=5e-5, batch_size=8, max_steps=4, eval_every=2)


def main_job() -> BenchmarkConfig:
    """All four probes x {last, weighted_sum} x default fractions x 3 seeds x 5 upstreams, plus fine-tuning
    of Mockingjay and AALBERT (phone_linear, speaker_utterance) at the smallest and largest fraction, 1 seed."""
    return BenchmarkConfig(probe=MAIN_PROBE, task_probes=MAIN_TASK_PROBES, finetune_probe=MAIN_FINETUNE, seeds=3,
                           finetune_seeds=1, report=True)


def quick_job() -> BenchmarkConfig:
    """The smoke version the tests run: same pipeline on the small corpus (data/synth_quick) with tiny budgets,
    two fractions (12.5 % and 100 %) and two seeds."""
    return BenchmarkConfig(probe=QUICK_PROBE, task_probes=QUICK_TASK_PROBES, finetune_probe=QUICK_FINETUNE,
                           fractions=(0.125, 1.0), seeds=2, finetune_seeds=1, quick=True, report=True)
