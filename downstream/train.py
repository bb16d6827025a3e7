"""Frozen probes, trained until dev stops improving: the entry point of downstream/.

Frozen probes of one task and mode (every label fraction and seed of a sweep) train together, by their config's
trainer (downstream.config):
* Minibatch (SGD with Nesterov momentum, or AdamW): as ONE batched model (downstream.groups: stacked heads over the
  cached hidden states read in blocks, resident when the group's rows fit the memory budget and streamed from the
  cache when not, the same rows either way), in the loop of every minibatch probe (downstream.loop); dev after
  every pass over the data (at least `min_eval_steps` steps apart) or every `eval_every` steps; each probe stops on
  its own (downstream.stopping): `patience` evaluations without a gain of `min_delta` (converged), or the
  `max_steps` cap;
* L2Path, for linear heads on few examples (mean-pooled utterances): the L2 regularisation path (downstream.path).
That is the "stacked" engine of classification tasks; a task's spec names its engine (`TaskSpec.engine`), and
sequence tasks train in the "ctc" engine (downstream.ctc) and speaker verification in the "verification" engine
(downstream.verification), under the same loop and stopping rule. Test is
evaluated once, at each probe's best dev point. Fine-tuning is downstream.finetune.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable

import torch

from downstream.data import SplitLabels, Targets
from corpora.manifest import PROBE_SPLITS
from downstream.ctc import fit_ctc
from downstream.groups import fit_group
from downstream.modes import LayerMode
from downstream.path import fit_paths
from downstream.config import L2Path, ProbeConfig
from downstream.probe import ProbeResult, ProbeSpec
from downstream.sources import ArraySource, FeatureSource, PooledSource
from downstream.tasks import TaskSpec
from downstream.verification import fit_verification


def train_probe(task: TaskSpec, mode: LayerMode, source: FeatureSource, labels: dict[str, SplitLabels],
                train_idx: list[int], n_classes: int, cfg: ProbeConfig, seed: int,
                device: torch.device | str = "cpu", progress: bool = False, memory: int | None = None) -> ProbeResult:
    """One frozen probe: `train_probes` with a group of one (the same result it gets in any group)."""
    return train_probes(task, mode, source, labels, [ProbeSpec(tuple(train_idx), seed)], n_classes, cfg, device,
                        progress, memory)[0]


def train_probes(task: TaskSpec, mode: LayerMode, source: FeatureSource, labels: dict[str, SplitLabels],
                 probes: list[ProbeSpec], n_classes: int, cfg: ProbeConfig, device: torch.device | str = "cpu",
                 progress: bool = False, memory: int | None = None) -> list[ProbeResult]:
    """Train every probe of `probes` (one task, mode and config; each its own subset and seed) until dev stops
    improving; report test at each one's best dev point, in the task's engine (`ENGINES[task.engine]`).

    `source`: an ArraySource (the cached frames) or a PooledSource (tasks whose examples are utterance means,
    `TaskSpec.pooled`: one mean per utterance). `memory`: bytes the group's rows may hold resident (None: the device's
    downstream.groups.resident_budget); the rows are the same either way, so the results are too."""
    if not mode.frozen:
        raise ValueError("train_probes trains frozen probes; fine-tuning is finetune_probe")
    if not probes:
        return []
    t0 = time.perf_counter()
    device = torch.device(device)
    fits = ENGINES[task.engine](task, mode, source, labels, probes, n_classes, cfg, device, memory, progress)
    share = (time.perf_counter() - t0) / len(probes)  # the group's wall time, shared equally
    frame_lengths = source.lengths("train")
    return [replace(f, train_utts=len(p.train_idx), train_frames=int(frame_lengths[list(p.train_idx)].sum()),
                    wall_seconds=share) for f, p in zip(fits, probes)]


def fit_stacked(task: TaskSpec, mode: LayerMode, source: FeatureSource, labels: dict[str, SplitLabels],
                probes: list[ProbeSpec], n_classes: int, cfg: ProbeConfig, device: torch.device, memory: int | None,
                progress: bool) -> list[ProbeResult]:
    """Classifiers of rows (frames, or utterance means for pooled tasks): one batched model (downstream.groups), or
    the L2 path (downstream.path) where the probe is configured with one (L2Path)."""
    layers = mode.layers_read(source.num_hidden_states)
    if isinstance(source, PooledSource):
        rows, whiten = source.rows(), source.whitening()
    else:
        assert isinstance(source, ArraySource), f"frozen probes read cached features, got {type(source).__name__}"
        rows, whiten = source, source.whitening()
    whiten = [whiten[source.position(k)] for k in layers]
    targets = {s: Targets(task, labels[s], source.lengths(s), s) for s in PROBE_SPLITS}
    per_row = {s: t.rows for s, t in targets.items()}
    if isinstance(cfg.trainer, L2Path):
        return fit_paths(task, mode, rows, whiten, layers, per_row, probes, n_classes, cfg, device)
    return fit_group(task, mode, rows, whiten, layers, per_row, targets, probes, n_classes, cfg, device, memory,
                     progress)


# the trainers a task's spec names (TaskSpec.engine): each maps (task, mode, source, labels, probes, classes, config,
# device, memory budget, progress) to one ProbeResult per probe, in order
ENGINES: dict[str, Callable[..., list[ProbeResult]]] = {"stacked": fit_stacked, "ctc": fit_ctc,
                                                       "verification": fit_verification}
