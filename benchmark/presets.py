"""The two packaged jobs: the default benchmark (<= 30 min on 2 CPU cores) and `--quick` (<= 5 min).

Every frozen probe trains until dev stops improving (downstream.train): the budget is set by the data, not
by the clock. The per-task settings below only change how fast a probe gets there (measured on the built-in
corpus, docs/benchmark.md): frame-level probes take large minibatches of standardised frames, the mean-pooled
speaker probe (1,200 examples at 100 % of the labels) small ones.
"""
from __future__ import annotations

from dataclasses import replace

from benchmark.plan import BenchmarkConfig
from downstream.train import ProbeConfig

FRAME_PROBE = ProbeConfig(lr=3e-3, batch_size=4096, patience=8)
MAIN_TASK_PROBES = {
    "phone_1hidden": replace(FRAME_PROBE, lr=1e-3, batch_size=2048),
    "speaker_utterance": ProbeConfig(lr=1e-2, batch_size=32, patience=20),
}
# fine-tuning starts from the converged frozen last-layer probe and moves the upstream gently; dev is
# evaluated live (the upstream over all of dev) every 25 steps, so patience counts fewer, costlier evaluations
MAIN_FINETUNE = ProbeConfig(lr=1e-3, upstream_lr=5e-5, batch_size=8, patience=3, eval_every=25, max_steps=400)
QUICK_FINETUNE = replace(MAIN_FINETUNE, patience=2, eval_every=4, max_steps=12)


def main_job() -> BenchmarkConfig:
    """All four probes x {last, weighted_sum} x default fractions x 3 seeds x 5 upstreams, plus fine-tuning
    of Mockingjay and AALBERT (phone_linear, speaker_utterance) at the smallest and largest fraction, 1 seed."""
    return BenchmarkConfig(probe=FRAME_PROBE, task_probes=MAIN_TASK_PROBES, finetune_probe=MAIN_FINETUNE, seeds=3,
                           finetune_seeds=1, report=True)


def quick_job() -> BenchmarkConfig:
    """The smoke version the tests run: same pipeline and stopping rule on the small corpus (data/synth_quick),
    two fractions (12.5 % and 100 %), two seeds and a short fine-tuning cap."""
    return BenchmarkConfig(probe=FRAME_PROBE, task_probes=MAIN_TASK_PROBES, finetune_probe=QUICK_FINETUNE,
                           fractions=(0.125, 1.0), seeds=2, finetune_seeds=1, quick=True, report=True)
