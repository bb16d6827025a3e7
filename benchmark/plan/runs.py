"""The planned runs: the label fractions, expansion of a config into runs, and the stable run id that makes
re-runs skip."""
from __future__ import annotations

from dataclasses import dataclass

from benchmark.plan.config import BenchmarkConfig
from core.io import sha256_json
from corpora.manifest import PROBE_SPLITS, Corpus, Utterance
from downstream.fractions import MIN_DEFAULT_UTTS, default_fractions
from downstream.modes import LayerMode, parse_modes
from downstream.config import L2Path, Minibatch, ProbeConfig
from downstream.probe import ENGINE_VERSIONS, FEED_VERSION, PATH_VERSION
from downstream.tasks import TaskSpec, get_task
from upstream.registry import family_of

# fine-tuning is the expensive part (the upstream runs forward+backward every step, and dev is scored live):
# the full job fine-tunes the phone probe only (the main job fine-tunes nothing: benchmark.plan.presets)
FINETUNE_TASKS = ("phone_linear",)


@dataclass(frozen=True)
class PlannedRun:
    upstream: str  # spec as given (name or name:preset)
    task: str
    mode: LayerMode
    fraction: float
    seed: int

    @property
    def finetune(self) -> bool:
        return self.mode.kind == "finetune"


def choose_fractions(cfg: BenchmarkConfig, corpus: Corpus, log=print) -> list[float]:
    """The label fractions of the plan: cfg.fractions as given, or the paper fractions the corpus's train split is
    large enough for (downstream.fractions.default_fractions); `log` says what was dropped or raised."""
    train = corpus.utterances("train")
    n_spk = len({u.speaker for u in train})
    # subsets of closed-set speaker tasks take one utterance per speaker at least (downstream.fractions)
    speakers = any(get_task(t).labels.closed_set for t in cfg.tasks)
    if cfg.fractions is not None:
        for f in cfg.fractions:
            if speakers and round(f * len(train)) < n_spk:
                log(f"fraction {f:g}: {round(f * len(train))} of {len(train)} train utterances is fewer than the "
                    f"{n_spk} speakers; speaker tasks use one utterance per speaker ({n_spk}), phone tasks "
                    f"max(1, {round(f * len(train))}) (the row's train_utts records it)")
        return list(cfg.fractions)
    kept, dropped = default_fractions(len(train), n_spk)
    if dropped:
        log(f"default fractions {', '.join(f'{f:g}' for f in dropped)} dropped: on this corpus's train split "
            f"({len(train)} utterances) they leave fewer than {MIN_DEFAULT_UTTS} utterances; ask for them with "
            f"--fractions to run them anyway (raised to one utterance, or one per speaker for speaker tasks)")
    if cfg.fraction_ends and len(kept) > 2:
        log(f"fractions {', '.join(f'{f:g}' for f in kept[1:-1])} left out: this plan runs the smallest and the largest "
            f"({kept[0]:g}, {kept[-1]:g}); --full or --fractions runs them")
        kept = [kept[0], kept[-1]]
    for f in kept:
        if speakers and round(f * len(train)) < n_spk:
            log(f"fraction {f:g}: speaker tasks are raised to one utterance per speaker ({n_spk} instead of "
                f"{round(f * len(train))}); phone tasks use {round(f * len(train))}")
    if not kept:
        kept = [1.0]
    return kept


def expand_runs(cfg: BenchmarkConfig, spec: str, num_hidden_states: int, fractions: list[float],
                notes: list[str]) -> list[PlannedRun]:
    """The runs of one upstream: tasks x modes x fractions x seeds, plus the main job's fine-tuning runs. The whole
    plan's, whatever cfg.shard says: a shard's share of them is benchmark.plan.shards.shard_filter's."""
    runs = [PlannedRun(spec, t, m, f, s) for t in cfg.tasks
            for m in _modes(cfg.task_modes.get(t, cfg.modes), spec, num_hidden_states, notes)
            for f in cfg.fractions_of(t, fractions) for s in range(cfg.seeds_of(t))]
    explicit_ft = any(m.kind == "finetune" for m in parse_modes(cfg.modes, num_hidden_states))
    if cfg.finetune_ends and not explicit_ft and family_of(spec)[0].finetuned_by_default and fractions:
        ends = sorted({min(fractions), max(fractions)} if cfg.finetune_smallest else {max(fractions)})
        runs += [PlannedRun(spec, t, LayerMode("finetune"), f, s)
                 for t in cfg.tasks if t in FINETUNE_TASKS for f in ends for s in range(min(cfg.finetune_seeds, cfg.seeds))]
    return runs


def _modes(text: str, spec: str, num_hidden_states: int, notes: list[str]) -> list[LayerMode]:
    modes = parse_modes(text, num_hidden_states)
    if num_hidden_states == 1:
        # one hidden state: weighted_sum and layer=0 ARE the last layer, and there is nothing to fine-tune
        collapsed = [m for m in modes if m.kind in ("weighted_sum", "layer")]
        if collapsed:
            notes.append(f"{spec}: one hidden state, so {', '.join(m.label for m in collapsed)} = last (run once)")
        if any(m.kind == "finetune" for m in modes):
            notes.append(f"{spec}: has no trainable upstream; finetune skipped")
        modes = list(dict.fromkeys(LayerMode("last") if m.kind != "finetune" else None for m in modes))
        modes = [m for m in modes if m is not None]
    return modes


def planned_splits(tasks: list[TaskSpec] | tuple[TaskSpec, ...], corpus: Corpus) -> dict[str, list[Utterance]]:
    """Every feature-cache split `tasks` read, with its utterances: the probe splits first, then the tasks' own."""
    out: dict[str, list[Utterance]] = {}
    for task in tasks:
        for name, utts in task.cache_splits(corpus).values():
            out.setdefault(name, utts)
    return dict(sorted(out.items(), key=lambda kv: (kv[0] not in PROBE_SPLITS, kv[0])))


def check_tasks(tasks: list[str] | tuple[str, ...], corpus: Corpus) -> None:
    """TaskSpec.check of every planned task on `corpus`, before anything is extracted: a ValueError naming the
    task and the missing file (no phone transcriptions, no trial speakers, open-set speakers)."""
    for name in dict.fromkeys(tasks):
        get_task(name).check(corpus)


def cache_layers(runs: list[PlannedRun], num_hidden_states: int) -> tuple[int, ...]:
    """The hidden-state indices `runs` (one upstream's) read from the feature cache, sorted: the layer of last and
    layer=K, all of them for weighted_sum. A fine-tuning run reads the cache only for the frozen last-layer probe it
    starts from (the upstream itself runs live), so it needs the last hidden state."""
    return tuple(sorted({k for r in runs for k in r.mode.layers_read(num_hidden_states)}))


def check_layer_modes(modes: str, hidden_states: dict[str, int]) -> None:
    """Planning-time check of every layer=K against each upstream's hidden-state count (from its preset or
    checkpoint.json, before any model is loaded). An upstream with one hidden state reads it for every mode."""
    for spec, n in hidden_states.items():
        if n == 1:
            continue
        for m in parse_modes(modes, n):
            if m.kind == "layer" and m.layer is not None and m.layer >= n:
                raise ValueError(f"--mode {m.label}: upstream {spec} has {n} hidden states, layer=0..{n - 1} "
                                 f"(0 = the input block)")


def run_id(corpus_digest: str, identity: dict[str, str], run: PlannedRun, layer: int, probe_cfg: ProbeConfig,
           start_cfg: ProbeConfig | None = None) -> str:
    """Stable hash of what defines a run: same inputs -> same id -> skipped when already in runs.csv. A fine-tuning
    run starts from the frozen last-layer probe trained under `start_cfg`, which is part of its identity too."""
    if run.finetune and start_cfg is None:
        raise ValueError(f"run {run.task} {run.mode.label}: a fine-tuning run's id needs the config of the frozen "
                         "probe it starts from")
    start = {"start": _trainer_identity(run.task, start_cfg, frozen=True)} if run.finetune else {}
    return sha256_json({"corpus": corpus_digest, **identity, "task": run.task, "mode": run.mode.kind, "layer": layer,
                        "fraction": run.fraction, "seed": run.seed,
                        **_trainer_identity(run.task, probe_cfg, frozen=run.mode.frozen), **start})[:16]


def _trainer_identity(task: str, cfg: ProbeConfig, frozen: bool) -> dict:
    """What decides how a probe of `task` trains: its config, its engine's version and, for a frozen minibatch probe
    of the stacked engine, the version of the order its minibatches are fed in; for an L2-path probe, the version of
    the order its examples are summed in."""
    engine = get_task(task).engine
    fed = engine == "stacked" and frozen and isinstance(cfg.trainer, Minibatch)
    order = {"feed": FEED_VERSION} if fed else {"path": PATH_VERSION} if isinstance(cfg.trainer, L2Path) else {}
    return {"probe": cfg.to_dict(), "engine": ENGINE_VERSIONS[engine], **order}


def parse_fractions(text: str) -> tuple[float, ...]:
    """'0.01,0.1,1' -> (0.01, 0.1, 1.0); each must be in (0, 1] (percentages are not accepted: 5 is an error)."""
    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        try:
            f = float(item)
        except ValueError:
            raise ValueError(f"--fractions: {item!r} is not a number; give fractions in (0, 1], e.g. 0.01,0.1,1") from None
        if not 0 < f <= 1:
            raise ValueError(f"--fractions: {item} is outside (0, 1]; give fractions of the train split, e.g. 0.05 for 5%")
        out.append(f)
    if not out:
        raise ValueError("--fractions is empty; e.g. 0.01,0.1,1")
    return tuple(sorted(set(out)))
