"""The verification engine: a speaker-embedding head trained as a classifier of the train speakers, scored on trials
of held-out speakers (SUPERB's ASV).

Each probe (a label fraction and seed) is one `Probe` whose head maps an utterance's frames to an embedding and the
embedding to train-speaker logits (downstream.tasks.XVectorHead); it trains with cross-entropy on minibatches of
whole training utterances in the loop of every minibatch probe (downstream.loop). Dev is the equal error rate of the
dev trials (held-out speakers, cosine similarity of embeddings) after every pass; downstream.stopping keeps its
minimum; test is the EER of the test trials (other held-out speakers) at that point. The source's dev and test
splits hold the trial utterances (`TaskSpec.utterances`).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor

from core.repro import seed_everything
from corpora.manifest import PROBE_SPLITS
from downstream.data import SplitLabels
from downstream.groups import resident_budget
from downstream.loop import Batch, TorchOptimizer, progress_bar, train_loop
from downstream.modes import LayerMode
from downstream.probe import INIT_LOCK, Probe, ProbeConfig, ProbeResult, ProbeSpec
from downstream.sources import ArraySource, PooledSource
from downstream.stopping import Stopping
from downstream.tasks import TaskSpec
from downstream.utterances import UtteranceFeed, UtteranceFrames, optimizer

EVAL_UTTS = 64


@torch.no_grad()
def embeddings(probe: Probe, frames: UtteranceFrames, device: torch.device) -> Tensor:
    """(n_utts, E) the embedding of every utterance of the split."""
    probe.eval()
    out = []
    n = len(frames.lengths)
    for a in range(0, n, EVAL_UTTS):
        hidden, lengths = frames.batch(list(range(a, min(n, a + EVAL_UTTS))))
        out.append(probe.head.embed(probe.featurizer(hidden.to(device)), lengths).cpu())
    return torch.cat(out)


def score_trials(probe: Probe, frames: UtteranceFrames, trials: np.ndarray, device: torch.device) -> float:
    """The task's metric (EER) of the task's trial scores (cosine similarity) of the split."""
    task = probe.task
    return task.metric(task.decode(embeddings(probe, frames, device), trials), trials[:, 2])


class VerificationModel:
    """The loop's view of one verification probe."""

    def __init__(self, probe: Probe, train: UtteranceFrames, dev: UtteranceFrames, labels: dict[str, SplitLabels],
                 device: torch.device) -> None:
        self.probe, self.train, self.dev, self.labels, self.device = probe, train, dev, labels, device
        self.ids = torch.zeros(1, dtype=torch.long)
        self.best = copy.deepcopy(probe.state_dict())

    def loss(self, batch: Batch) -> Tensor:
        self.probe.train()
        idx = batch.data
        hidden, lengths = self.train.batch(idx)
        logits = self.probe.head(self.probe.featurizer(hidden.to(self.device)), lengths)
        assert self.labels["train"].utt is not None
        y = torch.from_numpy(self.labels["train"].utt[idx]).to(self.device)
        return self.probe.task.loss(logits, y, reduction="mean")

    def zero_grad(self) -> None:
        self.probe.zero_grad(set_to_none=True)

    def clip(self, max_norm: float) -> None:
        torch.nn.utils.clip_grad_norm_(self.probe.parameters(), max_norm)

    def score(self, positions: Tensor) -> list[float]:
        assert self.labels["dev"].trials is not None
        return [score_trials(self.probe, self.dev, self.labels["dev"].trials, self.device)]

    def snapshot(self, position: int) -> None:
        self.best = copy.deepcopy(self.probe.state_dict())

    def keep(self, positions: Tensor) -> None:
        self.ids = self.ids[positions]


def fit_verification(task: TaskSpec, mode: LayerMode, source: ArraySource | PooledSource,
                     labels: dict[str, SplitLabels], probes: list[ProbeSpec], n_classes: int, cfg: ProbeConfig,
                     device: torch.device, memory: int | None, progress: bool) -> list[ProbeResult]:
    """Train every probe of `probes` on its own (its subset, its seed) until the dev EER stops improving; test EER at
    each one's best dev point."""
    frames = source.frames if isinstance(source, PooledSource) else source
    budget = resident_budget(device) if memory is None else memory
    layers = mode.layers_read(frames.num_hidden_states)
    whiten = [frames.whitening()[frames.position(k)] for k in layers]
    split_frames = {s: UtteranceFrames(frames, s, layers, whiten, budget // 3) for s in PROBE_SPLITS}
    if labels["train"].utt is None or any(labels[s].trials is None for s in ("dev", "test")):
        raise ValueError(f"task {task.name}: needs speaker labels for train and trials for dev and test")
    bar = progress_bar(len(probes), progress, f"{task.name}/{mode.label} x{len(probes)}")
    out = []
    try:
        for spec in probes:
            with INIT_LOCK:
                seed_everything(spec.seed)
                probe = Probe(task, mode, frames.num_hidden_states, frames.hidden_size, task.outputs(n_classes))
            probe.to(device)
            model = VerificationModel(probe, split_frames["train"], split_frames["dev"], labels, device)
            stop = Stopping(1, cfg, task.metric)
            train_loop(model, UtteranceFeed(list(spec.train_idx), cfg.batch_size, spec.seed),
                       TorchOptimizer(optimizer(probe, cfg)), stop, cfg.grad_clip, cfg.lr_decay)
            probe.load_state_dict(model.best)
            trials = labels["test"].trials
            assert trials is not None
            test = score_trials(probe, split_frames["test"], trials, device)
            out.append(ProbeResult(dev_metric=stop.best[0], test_metric=test, test_utt_metric=None,
                                   best_step=stop.best_step[0], steps=int(stop.steps[0]), converged=stop.converged[0],
                                   layer_weights=probe.featurizer.layer_weights(), train_utts=0, train_frames=0,
                                   wall_seconds=0.0, state={k: v.detach().cpu() for k, v in probe.state_dict().items()}))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return out
