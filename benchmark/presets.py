"""The two packaged jobs: the default benchmark (<= 30 min on 2 CPU cores) and `--quick` (<= 5 min)."""
from __future__ import annotations

from benchmark.plan import BenchmarkConfig
from downstream.train import ProbeConfig


def main_job() -> BenchmarkConfig:
    """All four probes x {last, weighted_sum} x default fractions x 3 seeds x 5 upstreams, plus fine-tuning
    of Mockingjay and AALBERT at the smallest and largest fraction (1 seed). Budgets: docs/benchmark.md."""
    return BenchmarkConfig(probe=ProbeConfig(max_steps=600, eval_every=100),
                           finetune_probe=ProbeConfig(max_steps=60, eval_every=20, batch_size=16),
                           seeds=3, finetune_seeds=1, report=True)


def quick_job() -> BenchmarkConfig:
    """The smoke version the tests run: same pipeline, tiny budgets."""
    return BenchmarkConfig(probe=ProbeConfig(max_steps=60, eval_every=30),
                           finetune_probe=ProbeConfig(max_steps=6, eval_every=3, batch_size=8),
                           seeds=2, finetune_seeds=1, quick=True, report=True)
