"""The verification engine: a speaker-embedding head trained as a classifier of the train speakers, scored on trials
of held-out speakers (SUPERB's ASV).

Each probe (a label fraction and seed) is one `Probe` whose head maps an utterance's frames to an embedding and the
embedding to train-speaker logits (downstream.tasks.XVectorHead); it trains with cross-entropy on minibatches of
whole training utterances, the probes of a sweep as one group (downstream.utterances) in the loop of every minibatch
probe (downstream.loop). Dev is the equal error rate of the
dev trials (held-out speakers, cosine similarity of embeddings) after every pass; downstream.stopping keeps its
minimum; test is the EER of the test trials (other held-out speakers) at that point, and the row's second score
(`test_utt_metric`) their minDCF (p_target 0.01). The source's dev and test
splits hold the trial utterances (`TaskSpec.utterances`).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from downstream.data import SplitLabels
from downstream.modes import LayerMode
from downstream.config import ProbeConfig
from downstream.probe import Probe, ProbeResult, ProbeSpec
from downstream.sources import ArraySource, PooledSource
from downstream.tasks import TaskSpec
from downstream.utterances import UtteranceEngine, UtteranceFrames, fit_utterance_probes, split_batches


@torch.no_grad()
def embeddings(probes: list[Probe], frames: UtteranceFrames, device: torch.device) -> list[Tensor]:
    """(n_utts, E) the embedding of every utterance of the split, for each probe."""
    out: list[list[Tensor]] = [[] for _ in probes]
    for _, hidden, lengths in split_batches(frames, device):
        for probe, parts in zip(probes, out):
            probe.eval()
            parts.append(probe.head.embed(probe.featurizer(hidden), lengths).cpu())
    return [torch.cat(parts) for parts in out]


def _trials(labels: SplitLabels) -> np.ndarray:
    if labels.trials is None:
        raise ValueError("a verification probe's dev and test splits need trials")
    return labels.trials


def trial_scores(probes: list[Probe], frames: UtteranceFrames, labels: SplitLabels,
                 device: torch.device) -> list[tuple[object, np.ndarray]]:
    """Each probe's trial scores (cosine similarity of embeddings) on the split and the trials' same-speaker flags
    they are scored against (EER, and minDCF as the task's second score)."""
    trials = _trials(labels)
    return [(p.task.decode(e, trials), trials[:, 2]) for p, e in zip(probes, embeddings(probes, frames, device))]


def _loss(probe: Probe, hidden: Tensor, lengths: Tensor, idx: list[int], train: SplitLabels) -> Tensor:
    if train.utt is None:
        raise ValueError("a verification probe trains on the train split's speaker labels")
    logits = probe.head(probe.featurizer(hidden), lengths)
    y = torch.from_numpy(train.utt[idx]).to(hidden.device)
    return probe.task.loss(logits, y, reduction="mean")


def _check(labels: dict[str, SplitLabels], utts: dict[str, int]) -> None:
    if labels["train"].utt is None or any(labels[s].trials is None for s in ("dev", "test")):
        raise ValueError("speaker verification needs speaker labels for train and trials for dev and test")


VERIFICATION = UtteranceEngine(_loss, trial_scores, _check)


def fit_verification(task: TaskSpec, mode: LayerMode, source: ArraySource | PooledSource,
                     labels: dict[str, SplitLabels], probes: list[ProbeSpec], n_classes: int, cfg: ProbeConfig,
                     device: torch.device, memory: int | None, progress: bool) -> list[ProbeResult]:
    """The probes of `probes` trained as one group (downstream.utterances.fit_utterance_probes) as classifiers of the
    train speakers, scored by the EER of its embeddings on the trials of held-out speakers."""
    return fit_utterance_probes(VERIFICATION, task, mode, source, labels, probes, n_classes, cfg, device, memory,
                                progress)
