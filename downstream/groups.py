"""A group of frozen minibatch probes (one task and mode; every fraction and seed) trained as one batched model.

The model is the probes' heads stacked (downstream.stacked), the feed the chunks of cached rows
(downstream.feeds), the loop downstream.loop; each probe's best weights are kept by probe id and scored on test at
the end, all at once.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from core.repro import fast_bfloat16, seed_everything
from corpora.manifest import PROBE_SPLITS
from downstream.data import Targets
from downstream.feeds import EVAL_ROWS, ChunkFeed, RowStore, stored_bytes
from downstream.heads import Whitening
from downstream.loop import Batch, progress_bar, train_loop
from downstream.metrics import UTT_ACC
from downstream.modes import LayerMode
from downstream.config import ProbeConfig
from downstream.probe import INIT_LOCK, ProbeResult, ProbeSpec
from downstream.sources import ArraySource
from downstream.stacked import StackedHeads, StackedOptimizer, clip_per_probe, probes_of
from downstream.stopping import Stopping
from downstream.tasks import TaskSpec, cross_entropy

# bytes a group of frozen probes may hold resident (its rows as stored) in host memory; larger groups stream from the
# cache. Every group of the main job fits (the largest, a 4 x 256 weighted sum on 30-ms frames, holds 378 MB), and
# a streamed group holds about a chunk (docs/scale.md). On a GPU the budget is half of the device memory free when
# the group starts (`resident_budget`).
MEMORY = 512 << 20


def resident_budget(device: torch.device) -> int:
    """Bytes a probe group may hold resident by default: MEMORY of host memory, or on a GPU half of the device
    memory free now (features for a GPU probe live on the GPU: nothing is copied per batch)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return MEMORY


class StackedModel:
    """The loop's view of a group: stacked heads, the dev rows they are scored on, each probe's best weights."""

    def __init__(self, heads: StackedHeads, dev: RowStore, task: TaskSpec, opt: StackedOptimizer) -> None:
        self.heads, self.dev, self.task, self.opt = heads, dev, task, opt
        self.ids = torch.arange(heads.size)
        self.best = [p.detach().clone() for p in heads.params]  # every probe's weights at its best dev point

    def loss(self, batch: Batch) -> Tensor:
        x, y, ok, pos = batch.data
        sub = [probes_of(p, pos) for p in self.heads.params]
        logits = self.heads.forward(x, sub)  # (A', B, C)
        if self.opt.wants_curvature:
            self.opt.observe(logits, ok)
        A, B = y.shape
        per_row = self.task.loss(logits.reshape(A * B, -1), y.reshape(-1)).view(A, B)
        w = ok.float()
        return ((per_row * w).sum(1) / w.sum(1).clamp_min(1)).sum()

    def zero_grad(self) -> None:
        for p in self.heads.params:
            p.grad = None

    def clip(self, max_norm: float) -> None:
        clip_per_probe(self.heads.params, max_norm)

    @torch.no_grad()
    def score(self, positions: Tensor) -> list[float]:
        sub = [probes_of(p.detach(), positions) for p in self.heads.params]
        num, den = tally(self.task, self.heads, sub, self.dev)[0]
        return self.task.metric.reduce(num, den).tolist()  # an integer tally: float32 scores

    def snapshot(self, position: int) -> None:
        i = int(self.ids[position])
        for b, p in zip(self.best, self.heads.params):
            b[i].copy_(p.detach()[position])

    def keep(self, positions: Tensor) -> None:
        self.ids = self.ids[positions]
        self.heads.keep(positions.to(self.heads.params[0].device))


Units = tuple[Tensor, Tensor]  # (numerators (Q, n_utts), denominators (n_utts,)) of a metric per utterance


@torch.no_grad()
def tally(task: TaskSpec, heads: StackedHeads, params: list[Tensor], store: RowStore, keep_utt: bool = False,
          keep_units: bool = False) -> tuple[tuple[Tensor, Tensor], Tensor | None, Units | None]:
    """The metric's tally (numerator (Q,), denominator) of every probe of `params` over all rows of `store`, the
    rows' predictions decoded by the task; with `keep_utt` the per-utterance sums of their logits (Q, n_utts, C)
    for an utterance score from frame logits; with `keep_units` the tally per utterance (`Metric.units` of its rows
    summed). The task's metric must be additive (`Metric.tally`)."""
    metric = task.metric
    if metric.tally is None:
        raise ValueError(f"task {task.name}: the stacked engine streams its rows and needs an additive metric "
                         f"(Metric.tally); {metric.name} has none")
    Q = len(params[0])
    n_utts = len(store.offsets) - 1
    num = torch.zeros(Q, dtype=torch.long, device=store.device)
    den = torch.zeros((), dtype=torch.long)
    sums = None
    units = (torch.zeros(Q, n_utts, dtype=torch.long), torch.zeros(n_utts, dtype=torch.long)) if keep_units else None
    if units is not None and metric.units is None:
        raise ValueError(f"task {task.name}: metric {metric.name} has no per-example units")
    for blocks in store.chunks():
        ch = store.chunk(blocks)
        for a in range(0, len(ch.y), EVAL_ROWS):
            # (Q, n, C); float32 where logits are summed, else the compute dtype (the task decodes an argmax)
            logits = heads.forward(ch.rows(a, a + EVAL_ROWS), params, float32=keep_utt)
            pred, y = task.decode(logits), ch.y[a: a + EVAL_ROWS]
            n, d = metric.tally(pred, y)
            num += n
            den += d.cpu()
            utt = ch.utt[a: a + EVAL_ROWS]
            if keep_utt:
                if sums is None:
                    sums = torch.zeros(Q, n_utts, logits.shape[-1], device=store.device)
                sums.index_add_(1, utt.to(store.device), logits)
            if units is not None:
                un, ud = metric.units(pred, y)
                units[0].index_add_(1, utt.cpu(), un.cpu())
                units[1].index_add_(0, utt.cpu(), ud.cpu())
        del ch  # freed before the next is read: one chunk in memory at a time
    return (num.cpu(), den), sums, units


def fit_group(task: TaskSpec, mode: LayerMode, rows: ArraySource, whiten: list[Whitening], layers: list[int],
              per_row: dict[str, np.ndarray], targets: dict[str, Targets], probes: list[ProbeSpec], n_classes: int,
              cfg: ProbeConfig, device: torch.device, memory: int | None, progress: bool) -> list[ProbeResult]:
    """Train `probes` (SGD, natural-gradient SGD or AdamW: cfg's Minibatch trainer) as one batched model until each
    has stopped; test at each one's best dev point. Their rows stay resident when they fit `memory` bytes (None: `resident_budget`)."""
    P = len(probes)
    member = torch.zeros(P, len(rows.lengths("train")), dtype=torch.bool)
    for p, spec in enumerate(probes):
        member[p, list(spec.train_idx)] = True
    union = member.any(0).numpy()
    train_rows = np.diff(rows.splits["train"].offsets)
    need = int(train_rows[union].sum()) + sum(int(rows.splits[s].offsets[-1]) for s in ("dev", "test"))
    resident = stored_bytes(rows, layers, need) <= (resident_budget(device) if memory is None else memory)
    # bfloat16 where the hardware multiplies it natively (the rows are float16 in the cache: a bfloat16 row keeps 8
    # of their 11 significant bits, far below the minibatch noise); weights, gradients and optimiser stay float32
    compute = torch.bfloat16 if fast_bfloat16(device) else torch.float32
    held = compute if compute != torch.float32 else None  # float32 models read float16 rows, converted per batch
    # the training rows in scattered blocks: a chunk holds pieces of most utterances, so its minibatches carry most
    # classes (speakers) in proportion; dev and test are read in order
    stores = {s: RowStore(rows, s, layers, whiten, per_row[s], union if s == "train" else None, resident, device,
                          held, scattered=s == "train") for s in PROBE_SPLITS}
    with INIT_LOCK:
        heads = []
        for spec in probes:
            seed_everything(spec.seed)
            heads.append(task.head(rows.hidden_size, n_classes))
    stacked = StackedHeads(heads, len(layers), mode.kind == "weighted_sum", device, compute)
    mb = cfg.minibatch
    opt = StackedOptimizer.of(mb.optimizer, stacked)
    if opt.wants_curvature and task.loss is not cross_entropy:
        raise ValueError(f"task {task.name}: natural-gradient SGD preconditions a softmax cross-entropy head; this "
                         "task's loss is another")
    model = StackedModel(stacked, stores["dev"], task, opt)
    gens = [torch.Generator().manual_seed(spec.seed * 1_000_003 + 1) for spec in probes]
    feed = ChunkFeed(stores["train"], member, gens, mb.batch_size, compute)
    stop = Stopping(P, cfg, task.metric)
    bar = progress_bar(P, progress, f"{task.name}/{mode.label} x{P}")
    try:
        train_loop(model, feed, opt, stop, mb.grad_clip, mb.lr_decay, bar)
    finally:
        if bar is not None:
            bar.close()
    best = [b.to(device) for b in model.best]
    (test_num, test_den), utt_sums, units = tally(task, stacked, best, stores["test"], keep_utt=task.utt_metric,
                                                  keep_units=task.metric.units is not None)
    test = task.metric.reduce(test_num.double(), test_den)  # test in float64
    results = []
    for i in range(P):
        test_utt = None
        if task.utt_metric:
            assert utt_sums is not None and targets["test"].utt is not None
            test_utt = float(UTT_ACC.reduce(*UTT_ACC.tally(utt_sums[i].argmax(-1).cpu(),
                                                           torch.from_numpy(targets["test"].utt))))
        results.append(ProbeResult(
            dev_metric=stop.best[i], test_metric=float(test[i]), test_utt_metric=test_utt,
            best_step=int(stop.best_step[i]), steps=int(stop.steps[i]), converged=bool(stop.converged[i]),
            layer_weights=stacked.layer_weights(best, i), train_utts=0, train_frames=0, wall_seconds=0.0,
            state=stacked.state_of(best, i),
            test_units=None if units is None else (units[0][i].numpy(), units[1].numpy())))
    return results
