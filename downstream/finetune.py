"""Fine-tuning: an upstream and its head trained together, on audio run through the upstream live, in the loop of
every minibatch probe (downstream.loop) with one probe."""
from __future__ import annotations

import contextlib
import copy
import time

import numpy as np
import torch
from torch import Tensor, nn

from core.repro import UPSTREAM_THREADS, seed_everything, torch_threads
from corpora.manifest import PROBE_SPLITS
from downstream.data import SplitLabels, Targets, frame_batches, length_batches
from downstream.heads import Whitening, segment_mean
from downstream.loop import Batch, TorchOptimizer, progress_bar, train_loop
from downstream.metrics import UTT_ACC
from downstream.modes import LayerMode
from downstream.config import FinetuneAdamW, ProbeConfig
from downstream.probe import INIT_LOCK, Probe, ProbeResult
from downstream.sources import LiveSource
from downstream.stopping import Stopping
from downstream.tasks import TaskSpec

EVAL_FRAMES = 4096  # live evaluation: frames of audio per upstream forward


@torch.no_grad()
def score_live(probe: Probe, task: TaskSpec, source: LiveSource, split: str, targets: Targets,
               device: torch.device) -> tuple[float, float | None]:
    """The task's metric over every labelled example of `split`, the upstream run on its audio (and the utterance
    accuracy of frame logits averaged per utterance, for tasks with utt_metric), in float64."""
    probe.eval()
    lengths_all = source.lengths(split)
    L = source.num_hidden_states
    metric = task.metric
    assert metric.tally is not None, f"fine-tuning streams its evaluation: {metric.name} must be additive"
    num = den = utt_num = 0
    for idx in frame_batches(lengths_all, EVAL_FRAMES):
        hidden, lengths = source.batch(split, idx, list(range(L)))
        logits = probe(hidden.to(device), lengths.to(device)).float().cpu()
        n, d = metric.tally(task.decode(logits), targets.batch(idx))
        num, den = num + int(n), den + int(d)
        if task.utt_metric:
            utt_num += int(UTT_ACC.tally(segment_mean(logits, lengths).argmax(-1), targets.utterances(idx))[0])
    if den == 0:
        raise ValueError(f"split {split!r} has no labelled frames to evaluate on")
    return num / den, (utt_num / len(lengths_all) if task.utt_metric else None)


class LiveModel:
    """The loop's view of fine-tuning: one probe, its upstream trainable, dev scored live."""

    def __init__(self, probe: Probe, upstream: nn.Module, live: LiveSource, targets: dict[str, Targets],
                 task: TaskSpec, device: torch.device) -> None:
        self.probe, self.upstream, self.live, self.targets, self.task, self.device = probe, upstream, live, targets, task, device
        self.ids = torch.zeros(1, dtype=torch.long)
        self.params = list(probe.parameters()) + [p for p in upstream.parameters() if p.requires_grad]
        self.best: list[dict] = []

    def loss(self, batch: Batch) -> Tensor:
        self.probe.train()
        self.upstream.train()
        idx = batch.data
        hidden, lens = self.live.batch("train", idx, list(range(self.live.num_hidden_states)), grad=True)
        logits = self.probe(hidden.to(self.device), lens.to(self.device))
        return self.task.loss(logits, self.targets["train"].batch(idx).to(self.device), reduction="mean")

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def clip(self, max_norm: float) -> None:
        nn.utils.clip_grad_norm_(self.params, max_norm)

    def score(self, positions: Tensor) -> list[float]:
        self.upstream.eval()
        return [score_live(self.probe, self.task, self.live, "dev", self.targets["dev"], self.device)[0]]

    def snapshot(self, position: int) -> None:
        self.best = [copy.deepcopy(self.probe.state_dict()), copy.deepcopy(self.upstream.state_dict())]

    def keep(self, positions: Tensor) -> None:
        self.ids = self.ids[positions]


class LiveFeed:
    """Batches of training utterances of similar length, a shuffled epoch after another."""

    def __init__(self, lengths: np.ndarray, train_idx: list[int], batch_size: int, seed: int) -> None:
        self.lengths, self.train_idx, self.batch_size = lengths, train_idx, batch_size
        self.rng = np.random.default_rng([seed, 1])

    def __iter__(self):
        while True:
            for idx in length_batches(self.lengths, self.train_idx, self.batch_size, self.rng):
                yield Batch(idx, torch.ones(1, dtype=torch.bool))

    def keep(self, positions: Tensor) -> None:
        pass


def finetune_probe(task: TaskSpec, frozen: ProbeResult, whiten: Whitening, live: LiveSource, upstream: nn.Module,
                   labels: dict[str, SplitLabels], train_idx: list[int], n_classes: int, cfg: ProbeConfig,
                   seed: int, device: torch.device | str = "cpu", progress: bool = False) -> ProbeResult:
    """Fine-tune `upstream` with the head of `frozen` (a converged last-layer probe of the same task, fraction and
    seed) until dev stops improving. `whiten` is the frozen probe's whitening of the last hidden state (fixed).
    Step 0 is the frozen probe, so dev can only match or beat it (up to the float16 storage of the cached
    features it was trained on); test is reported at the best dev point. The upstream is restored afterwards."""
    if not task.finetunable:
        raise ValueError(f"task {task.name}: fine-tuning trains classifiers of frames or utterance means; this task's "
                         f"{task.engine} engine trains frozen probes only")
    device = torch.device(device)
    # on a CPU the upstream's passes run on UPSTREAM_THREADS threads, as its extraction does: rows that do not depend
    # on the machine's core count
    with torch_threads(UPSTREAM_THREADS) if device.type == "cpu" else contextlib.nullcontext():
        return _finetune(task, frozen, whiten, live, upstream, labels, train_idx, n_classes, cfg, seed, device,
                         progress)


def _finetune(task: TaskSpec, frozen: ProbeResult, whiten: Whitening, live: LiveSource, upstream: nn.Module,
              labels: dict[str, SplitLabels], train_idx: list[int], n_classes: int, cfg: ProbeConfig,
              seed: int, device: torch.device, progress: bool) -> ProbeResult:
    t0 = time.perf_counter()
    assert frozen.state is not None, "fine-tuning starts from a frozen probe's weights"
    with INIT_LOCK:
        seed_everything(seed)
        probe = Probe(task, LayerMode("finetune"), live.num_hidden_states, live.hidden_size, n_classes,
                      whiten=copy.deepcopy(whiten))
    probe.head.load_state_dict({k.removeprefix("head."): v for k, v in frozen.state.items() if k.startswith("head.")})
    probe.to(device)
    initial = copy.deepcopy(upstream.state_dict())
    trainable = [p for p in upstream.parameters() if p.requires_grad]
    mb = cfg.minibatch
    if not isinstance(mb.optimizer, FinetuneAdamW):
        raise ValueError(f"fine-tuning trains head and upstream with FinetuneAdamW, got {type(mb.optimizer).__name__}")
    rates = mb.optimizer
    opt = torch.optim.AdamW([{"params": list(probe.parameters()), "lr": rates.lr},
                             {"params": trainable, "lr": rates.upstream_lr}], weight_decay=rates.weight_decay)
    lengths = live.lengths("train")
    targets = {s: Targets(task, labels[s], live.lengths(s), s) for s in PROBE_SPLITS}
    model = LiveModel(probe, upstream, live, targets, task, device)
    stop = Stopping(1, cfg, task.metric, eval_every=mb.eval_every or mb.min_eval_steps)
    if stop.update(0, model.score(model.ids)[0]):  # step 0: the frozen probe
        model.snapshot(0)
    bar = progress_bar(1, progress, f"{task.name}/finetune")
    try:
        train_loop(model, LiveFeed(lengths, list(train_idx), mb.batch_size, seed), TorchOptimizer(opt), stop,
                   mb.grad_clip, mb.lr_decay, bar)
        probe.load_state_dict(model.best[0])
        upstream.load_state_dict(model.best[1])
        upstream.eval()
        test, test_utt = score_live(probe, task, live, "test", targets["test"], device)
    finally:
        if bar is not None:
            bar.close()
        upstream.load_state_dict(initial)
        upstream.eval()
    return ProbeResult(dev_metric=stop.best[0], test_metric=test, test_utt_metric=test_utt,
                       best_step=stop.best_step[0], steps=int(stop.steps[0]), converged=stop.converged[0],
                       layer_weights=None, train_utts=len(train_idx), train_frames=int(lengths[list(train_idx)].sum()),
                       wall_seconds=time.perf_counter() - t0)
