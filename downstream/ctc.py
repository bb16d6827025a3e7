"""The sequence engine: a CTC head over the frozen hidden states of whole utterances (SUPERB's phoneme recognition).

Each probe (a label fraction and seed) is one `Probe` (layer choice or weighted sum -> whitening -> head with a
blank output) trained in the loop of every minibatch probe (downstream.loop): minibatches of whole utterances,
padded, the task's CTC loss, dev decoded greedily and scored by the task's metric after every pass (a
lower-is-better phone error rate: downstream.stopping keeps the minimum), test at the best dev point.
The frames are the cached hidden states, whitened per hidden state as the frame probes' are (downstream.sources).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

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

EVAL_UTTS = 64  # utterances per evaluation forward


def _padded(seqs: list[np.ndarray], idx: list[int]) -> tuple[Tensor, Tensor]:
    """(B, S) targets shifted to 1..C (0 is the blank), zero-padded, and their lengths (B,)."""
    ys = [torch.from_numpy(seqs[i] + 1) for i in idx]
    lengths = torch.tensor([len(y) for y in ys], dtype=torch.long)
    if int(lengths.max()) == 0:
        return torch.zeros(len(idx), 1, dtype=torch.long), lengths
    return pad_sequence(ys, batch_first=True), lengths


def log_probs(probe: Probe, hidden: Tensor, lengths: Tensor) -> Tensor:
    """Flat hidden states (L, sum of lengths, D) -> (B, T, outputs) padded log-probabilities."""
    out = probe(hidden)  # (sum of lengths, outputs)
    return pad_sequence(list(torch.split(out, lengths.tolist())), batch_first=True).log_softmax(-1)


@torch.no_grad()
def score_split(probe: Probe, frames: UtteranceFrames, refs: list[np.ndarray], device: torch.device) -> float:
    """The task's metric of the greedy transcriptions of every utterance of the split."""
    probe.eval()
    task = probe.task
    hyps: list[list[int]] = []
    for a in range(0, len(refs), EVAL_UTTS):
        idx = list(range(a, min(len(refs), a + EVAL_UTTS)))
        hidden, lengths = frames.batch(idx)
        hyps += task.decode(log_probs(probe, hidden.to(device), lengths), lengths)
    return task.metric(hyps, [r.tolist() for r in refs])


class CtcModel:
    """The loop's view of one CTC probe."""

    def __init__(self, probe: Probe, train: UtteranceFrames, dev: UtteranceFrames, labels: dict[str, SplitLabels],
                 device: torch.device) -> None:
        self.probe, self.train, self.dev, self.labels, self.device = probe, train, dev, labels, device
        self.ids = torch.zeros(1, dtype=torch.long)
        self.best = copy.deepcopy(probe.state_dict())

    def loss(self, batch: Batch) -> Tensor:
        self.probe.train()
        idx = batch.data
        hidden, lengths = self.train.batch(idx)
        lp = log_probs(self.probe, hidden.to(self.device), lengths)  # (B, T, C + 1)
        assert self.labels["train"].seqs is not None
        y, y_len = _padded(self.labels["train"].seqs, idx)
        return self.probe.task.loss(lp.transpose(0, 1), y.to(self.device), lengths, y_len).mean()

    def zero_grad(self) -> None:
        self.probe.zero_grad(set_to_none=True)

    def clip(self, max_norm: float) -> None:
        torch.nn.utils.clip_grad_norm_(self.probe.parameters(), max_norm)

    def score(self, positions: Tensor) -> list[float]:
        assert self.labels["dev"].seqs is not None
        return [score_split(self.probe, self.dev, self.labels["dev"].seqs, self.device)]

    def snapshot(self, position: int) -> None:
        self.best = copy.deepcopy(self.probe.state_dict())

    def keep(self, positions: Tensor) -> None:
        self.ids = self.ids[positions]


def fit_ctc(task: TaskSpec, mode: LayerMode, source: ArraySource | PooledSource, labels: dict[str, SplitLabels],
            probes: list[ProbeSpec], n_classes: int, cfg: ProbeConfig, device: torch.device, memory: int | None,
            progress: bool) -> list[ProbeResult]:
    """Train every probe of `probes` on its own (its subset, its seed) until dev stops improving; test at each one's
    best dev point. A probe's result does not depend on the others."""
    frames = source.frames if isinstance(source, PooledSource) else source
    budget = resident_budget(device) if memory is None else memory
    layers = mode.layers_read(frames.num_hidden_states)
    whiten = [frames.whitening()[frames.position(k)] for k in layers]
    split_frames = {s: UtteranceFrames(frames, s, layers, whiten, budget // 3) for s in PROBE_SPLITS}
    for s in PROBE_SPLITS:
        seqs = labels[s].seqs
        if seqs is None or len(seqs) != len(split_frames[s].lengths):
            raise ValueError(f"task {task.name}: {s} needs one label sequence per utterance")
    bar = progress_bar(len(probes), progress, f"{task.name}/{mode.label} x{len(probes)}")
    out = []
    try:
        for spec in probes:
            with INIT_LOCK:
                seed_everything(spec.seed)
                probe = Probe(task, mode, frames.num_hidden_states, frames.hidden_size, task.outputs(n_classes))
            probe.to(device)
            model = CtcModel(probe, split_frames["train"], split_frames["dev"], labels, device)
            stop = Stopping(1, cfg, task.metric)
            train_loop(model, UtteranceFeed(list(spec.train_idx), cfg.batch_size, spec.seed),
                       TorchOptimizer(optimizer(probe, cfg)), stop, cfg.grad_clip, cfg.lr_decay)
            probe.load_state_dict(model.best)
            assert labels["test"].seqs is not None
            test = score_split(probe, split_frames["test"], labels["test"].seqs, device)
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
