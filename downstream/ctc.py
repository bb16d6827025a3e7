"""The sequence engine: a CTC head over the frozen hidden states of whole utterances (SUPERB's phoneme recognition).

Each probe (a label fraction and seed) is one `Probe` (layer choice or weighted sum -> whitening -> head with a
blank output); the probes of a sweep train as one group (downstream.utterances) in the loop of every minibatch probe
(downstream.loop): minibatches of whole utterances,
padded, the task's CTC loss, dev decoded greedily and scored by the task's metric after every pass (a
lower-is-better phone error rate: downstream.stopping keeps the minimum), test at the best dev point.
The frames are the cached hidden states, whitened per hidden state as the frame probes' are (downstream.sources).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from downstream.data import SplitLabels
from downstream.modes import LayerMode
from downstream.config import ProbeConfig
from downstream.probe import Probe, ProbeResult, ProbeSpec
from downstream.sources import ArraySource, PooledSource
from downstream.tasks import TaskSpec
from downstream.utterances import UtteranceEngine, UtteranceFrames, fit_utterance_probes, split_batches


def _padded(seqs: list[np.ndarray], idx: list[int]) -> tuple[Tensor, Tensor]:
    """(B, S) targets shifted to 1..C (0 is the blank), zero-padded, and their lengths (B,)."""
    ys = [torch.from_numpy(seqs[i] + 1) for i in idx]
    lengths = torch.tensor([len(y) for y in ys], dtype=torch.long)
    if int(lengths.max()) == 0:
        return torch.zeros(len(idx), 1, dtype=torch.long), lengths
    return pad_sequence(ys, batch_first=True), lengths


def padded(rows: Tensor, lengths: Tensor) -> Tensor:
    """(sum of lengths, C) rows of consecutive utterances -> (B, T, C), zeros past each utterance's end. One gather,
    so its backward is one scatter: pad_sequence writes each utterance into a zero tensor in place, and autograd
    then copied the whole gradient once per utterance (what costs most on long 10-ms utterances)."""
    lengths = lengths.to(rows.device)
    starts = torch.cumsum(lengths, 0) - lengths
    frames = torch.arange(int(lengths.max()), device=rows.device)
    idx = torch.where(frames < lengths[:, None], starts[:, None] + frames, len(rows))  # past the end: the zero row
    return torch.cat([rows, rows.new_zeros(1, rows.shape[1])])[idx]


def log_probs(probe: Probe, hidden: Tensor, lengths: Tensor) -> Tensor:
    """Flat hidden states (L, sum of lengths, D) -> (B, T, outputs) padded log-probabilities (zeros past the ends)."""
    return padded(probe(hidden).log_softmax(-1), lengths)  # log-softmax of each frame: (sum of lengths, outputs)


def _sequences(labels: SplitLabels) -> list[np.ndarray]:
    if labels.seqs is None:
        raise ValueError("a CTC probe needs one label sequence per utterance")
    return labels.seqs


def _loss(probe: Probe, hidden: Tensor, lengths: Tensor, idx: list[int], train: SplitLabels) -> Tensor:
    lp = log_probs(probe, hidden, lengths)  # (B, T, C + 1)
    y, y_len = _padded(_sequences(train), idx)
    return probe.task.loss(lp.transpose(0, 1), y.to(hidden.device), lengths, y_len).mean()


@torch.no_grad()
def transcribe(probes: list[Probe], frames: UtteranceFrames, labels: SplitLabels,
               device: torch.device) -> list[tuple[list[list[int]], list[list[int]]]]:
    """Each probe's greedy transcriptions of every utterance of the split and the references they are scored against
    (each batch read once for all the probes)."""
    refs = [r.tolist() for r in _sequences(labels)]
    hyps: list[list[list[int]]] = [[] for _ in probes]
    for _, hidden, lengths in split_batches(frames, device):
        for probe, out in zip(probes, hyps):
            probe.eval()
            out += probe.task.decode(log_probs(probe, hidden, lengths), lengths)
    return [(h, refs) for h in hyps]


def _check(labels: dict[str, SplitLabels], utts: dict[str, int]) -> None:
    for s, n in utts.items():
        seqs = labels[s].seqs
        if seqs is None or len(seqs) != n:
            raise ValueError(f"a CTC probe's {s} split needs one label sequence per utterance ({n})")


CTC = UtteranceEngine(_loss, transcribe, _check)


def fit_ctc(task: TaskSpec, mode: LayerMode, source: ArraySource | PooledSource, labels: dict[str, SplitLabels],
            probes: list[ProbeSpec], n_classes: int, cfg: ProbeConfig, device: torch.device, memory: int | None,
            progress: bool) -> list[ProbeResult]:
    """The probes of `probes` trained as one group (downstream.utterances.fit_utterance_probes) with the CTC loss,
    scored on greedy transcriptions."""
    return fit_utterance_probes(CTC, task, mode, source, labels, probes, n_classes, cfg, device, memory, progress)
