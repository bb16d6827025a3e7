"""What one invocation of the harness does: `BenchmarkConfig` (the CLI builds it from the flags and a preset,
benchmark.plan.presets; the runner executes it) and the `--shard I/N` it may be limited to."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from core.repro import default_device
from downstream.config import FinetuneAdamW, Minibatch, ProbeConfig
from downstream.tasks import TASKS

DEFAULT_UPSTREAMS = ("mel", "mel:stack3", "mockingjay", "aalbert", "mockingjay_random", "aalbert_random")
DEFAULT_MODES = "last,weighted_sum"


@dataclass(frozen=True)
class Shard:
    """Shard `index` (0-based, as $SLURM_ARRAY_TASK_ID) of `count` (benchmark.plan.shards: --shard I/N)."""

    index: int
    count: int

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def dir_name(self) -> str:
        return f"{self.index}-of-{self.count}"


@dataclass(frozen=True)
class BenchmarkConfig:
    """Everything one invocation of the harness does; the CLI builds it, the runner executes it."""

    corpus: str = "synth"  # a corpus preparer name or a prepared corpus directory
    # the corpus of a task where it differs from `corpus` (the main job's keyword spotting reads the built-in keyword
    # corpus: the speech corpus has no keyword labels); --corpus applies to every task
    task_corpora: dict[str, str] = field(default_factory=dict)
    upstreams: tuple[str, ...] = DEFAULT_UPSTREAMS
    tasks: tuple[str, ...] = tuple(TASKS)
    modes: str = DEFAULT_MODES
    # modes of a task where they differ from `modes` (the main job's MLP probe reads the last layer only)
    task_modes: dict[str, str] = field(default_factory=dict)
    fractions: tuple[float, ...] | None = None  # None: the paper fractions the corpus is large enough for
    # with `fractions` None, only the smallest and the largest of those (the scarce and the full end of the data-size
    # ablation: the main job); --fractions or --full runs the others
    fraction_ends: bool = False
    seeds: int = 3
    # label fractions and seeds of a task where they differ from `fractions` / `seeds` (the main job runs the
    # whole-utterance SUPERB tasks at fewer points: benchmark.plan.presets); --fractions and --seeds override them
    task_fractions: dict[str, tuple[float, ...]] = field(default_factory=dict)
    task_seeds: dict[str, int] = field(default_factory=dict)
    # main-job fine-tuning: at the smallest and largest fraction, for the upstreams fine-tuned by default
    # (upstream.family.Family.finetuned_by_default), this many seeds
    finetune_ends: bool = True
    finetune_smallest: bool = True  # also fine-tune at the smallest fraction (not only the largest)
    finetune_seeds: int = 1
    ckpts: dict[str, str] = field(default_factory=dict)  # upstream name -> checkpoint dir
    probe: ProbeConfig = ProbeConfig()
    # frozen-probe budget per task where it differs from `probe` (e.g. the mean-pooled speaker probe reads
    # one row per utterance, so it can afford many more steps)
    task_probes: dict[str, ProbeConfig] = field(default_factory=dict)
    finetune_probe: ProbeConfig = ProbeConfig(Minibatch(FinetuneAdamW(), batch_size=8, eval_every=25), patience=3,
                                              max_steps=400)
    quick: bool = False
    force: bool = False
    data_dir: Path = Path("data")
    results_dir: Path = Path("results")
    cache_dir: Path = Path("cache/features")
    # False (--no-cache): each upstream's hidden states are extracted straight into the probes' in-memory splits on
    # every invocation and nothing is written under cache_dir
    use_cache: bool = True
    runs_dir: Path = Path("runs/pretrain")
    # pretrain mockingjay/aalbert from scratch into runs_dir (pretrain.default_budget) instead of using the shipped
    # reference checkpoints (upstream/reference.py)
    pretrain: bool = False
    device: str = field(default_factory=lambda: default_device().type)  # cuda when present, else cpu
    # torch threads while training FROZEN probes: their small matmuls gain little from a second thread, and
    # measured on a shared 2-core machine a linear probe's backward went from 8 ms (1 thread) to 90-180 ms
    # (2 threads spinning against other processes). Extraction and fine-tuning keep torch's default.
    probe_threads: int | None = 1
    # groups of frozen probes trained at once, in threads sharing the feature cache (seeding and probe initialisation
    # are serialised, so every run stays deterministic)
    probe_workers: int = 2
    # bytes one group of frozen probes may hold resident (its rows as cached); larger groups stream from the cache,
    # with the same rows and results (downstream.feeds). None: 512 MiB of host memory, or half the free GPU memory
    probe_memory: int | None = None
    progress: bool = True
    report: bool = False  # build results/REPORT.md at the end (the main job does)
    command: str | None = None  # the command line, recorded in results/command.txt when the job finishes
    shard: Shard | None = None  # run only this shard's share of the plan (benchmark.plan.shards); None: all of it

    def corpus_of(self, task: str) -> str:
        return self.task_corpora.get(task, self.corpus)

    def by_corpus(self) -> list[BenchmarkConfig]:
        """One plan per corpus the tasks read, the corpus of the first task first: each with its own tasks, its corpus
        as `corpus` and no `task_corpora`. A plan whose tasks all read `corpus` is the one plan."""
        corpora = dict.fromkeys(self.corpus_of(t) for t in self.tasks) or {self.corpus: None}
        return [replace(self, corpus=c, tasks=tuple(t for t in self.tasks if self.corpus_of(t) == c), task_corpora={})
                for c in corpora]

    def fractions_of(self, task: str, fractions: list[float]) -> list[float]:
        """The label fractions of `task`: its own (task_fractions), else the plan's `fractions`."""
        return list(self.task_fractions.get(task, fractions))

    def seeds_of(self, task: str) -> int:
        return self.task_seeds.get(task, self.seeds)

    def probe_config(self, task: str, finetune: bool) -> ProbeConfig:
        return self.finetune_probe if finetune else self.task_probes.get(task, self.probe)

    def start_config(self, run) -> ProbeConfig | None:
        """The config of the frozen last-layer probe a fine-tuning `run` (a PlannedRun) starts from; None for a
        frozen run."""
        return self.probe_config(run.task, False) if run.finetune else None
