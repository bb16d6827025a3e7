"""Probe training until dev stops improving: frozen probes as batched groups, fine-tuning from a frozen probe.

Frozen probes of one task and mode (every label fraction and seed of a sweep) train together as ONE batched model
(downstream.stacked) over the cached hidden states as stored, read in blocks (downstream.feeds): resident when
the group's rows fit the memory budget, streamed from the cache when not, the same rows either way. The
whitening fitted on the train split is part of each probe. Each probe keeps its own subset, seed, stopping and
result. Two optimisers, one stopping rule:

* minibatch SGD (Nesterov) or AdamW over passes of the data; dev is evaluated after every pass (at least
  `min_eval_steps` steps apart) or every `eval_every` steps; a probe stops when its dev metric has not improved
  by `min_delta` for `patience` evaluations (`converged`), or at the `max_steps` cap (not converged);
* for linear heads on few examples (mean-pooled utterances): a regularisation path, full-batch L-BFGS solved
  to a relative gradient tolerance (downstream.solver) at each L2 strength of `l2_grid`, strongest first, each
  warm-starting the next; dev is evaluated at each point and `patience` points without gain stop it.

Test is evaluated once, at each probe's best dev point.
A fine-tuning run starts from the converged frozen probe of its upstream, task, fraction and seed (last
layer), so its step-0 dev score IS the frozen one, and then trains the upstream too with the same rule.
"""
from __future__ import annotations

import copy
import itertools
import math
import threading
import time
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.config import config_from_dict, config_to_dict
from core.repro import seed_everything
from downstream.data import SplitLabels, Targets, frame_batches, length_batches
from downstream.feeds import EVAL_ROWS, RowStore, pass_order, stored_bytes
from downstream.heads import Whitening, segment_mean
from downstream.modes import Featurizer, LayerMode
from downstream.solver import solve_l2
from downstream.sources import ArraySource, FeatureSource, PooledSource
from downstream.stacked import StackedHeads, StackedOptimizer, clip_per_probe
from downstream.tasks import TaskSpec

SPLITS = ("train", "dev", "test")
# bytes a group of frozen probes may hold resident (its rows as stored); larger groups stream from the cache
MEMORY = 1 << 30
# the engine's version is part of every run id: rows of another engine are never mixed in silently
ENGINE_VERSION = 2
EVAL_FRAMES = 4096  # live (fine-tuning) evaluation: frames of audio per upstream forward
_INIT_LOCK = threading.Lock()


@dataclass(frozen=True)
class ProbeConfig:
    """How a probe trains. Defaults: the frozen-probe rule of the main job (measured: docs/benchmark.md).

    The papers train probes with AdamW at lr 2e-4, batch 32, for 300k+ steps and report test at the best dev
    step (s3prl legacy downstream configs). Here frame features are whitened, so SGD with a large step converges
    in a few epochs, and utterance means are few enough for a full-batch solver; the stopping rule, not a step
    count, decides when a probe is done.
    """

    lr: float = 1e-3
    upstream_lr: float = 5e-5  # finetune only: the pretrained upstream moves more gently than the head
    batch_size: int = 1024  # examples per step: frames (frame-level tasks) or utterances (utterance-level)
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    patience: int = 8  # dev evaluations without an improvement of min_delta before the run stops (converged)
    min_delta: float = 1e-3  # 0.1 point of accuracy: smaller gains do not reset the patience
    max_steps: int = 100_000  # the cap: a run stopped here is recorded as NOT converged
    eval_every: int = 0  # steps between dev evaluations; 0 = one epoch of the training subset
    min_eval_steps: int = 20  # ... but never more often than this (tiny subsets have 1-step epochs)
    lr_decay: float = 0.5  # lr multiplier after patience // 2 evaluations without improvement
    fixed_steps: bool = False  # train exactly max_steps, best dev point still chosen (the --steps approximation)
    # "sgd": minibatch SGD with Nesterov momentum `momentum`. On whitened features (downstream.sources) it
    # converges as fast as AdamW, and early-stopped gradient descent is regularised like an L2 (ridge) penalty:
    # with a dozen training utterances AdamW, which moves every weight by ~lr per step whatever its gradient,
    # overfits before the first dev evaluation (docs/benchmark.md). "adamw": minibatch AdamW (the MLP head,
    # fine-tuning). "lbfgs": the L2 regularisation path with full-batch L-BFGS (linear heads, few examples).
    optimizer: Literal["sgd", "adamw", "lbfgs"] = "adamw"
    momentum: float = 0.9  # sgd only
    # lbfgs only: the path's L2 strengths (mean cross-entropy + l2 / 2 * |head weights|^2), strongest first, one
    # per decade: the 300 dev utterances of the built-in corpus cannot tell half-decades apart (docs/benchmark.md)
    l2_grid: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
    # lbfgs only: one L2 point is solved when |grad| <= rtol * l2 * |W| (within rtol x |W| of its optimum,
    # downstream.solver); 0.1 moved 0-1 of 300 dev predictions against 0.01 at a third of the cost (docs/benchmark.md)
    rtol: float = 0.1

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_steps", "patience", "min_eval_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"ProbeConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0:
            raise ValueError(f"ProbeConfig.eval_every must be >= 0 (0 = every epoch), got {self.eval_every}")
        if self.lr <= 0 or self.upstream_lr <= 0:
            raise ValueError("ProbeConfig learning rates must be > 0")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"ProbeConfig.lr_decay must be in (0, 1], got {self.lr_decay}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"ProbeConfig.momentum must be in [0, 1), got {self.momentum}")
        if self.optimizer == "lbfgs" and (not self.l2_grid or any(v <= 0 for v in self.l2_grid)):
            raise ValueError(f"ProbeConfig.l2_grid must hold L2 strengths > 0 (the solver's tolerance is relative "
                             f"to the L2 strength), got {self.l2_grid}")
        if self.rtol <= 0:
            raise ValueError(f"ProbeConfig.rtol must be > 0, got {self.rtol}")

    @property
    def budget(self) -> str:
        """The row's `budget` column: 'converge' (early stopping) or 'steps=N' (a fixed, approximate budget)."""
        return f"steps={self.max_steps}" if self.fixed_steps else "converge"

    def with_steps(self, steps: int) -> "ProbeConfig":
        """A fixed budget of `steps` (no early stopping; dev still picks the reported point)."""
        return replace(self, max_steps=steps, fixed_steps=True,
                       eval_every=min(self.eval_every or steps, steps), min_eval_steps=min(self.min_eval_steps, steps))

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ProbeConfig":
        return config_from_dict(cls, d, "probe config")


@dataclass(frozen=True)
class ProbeResult:
    dev_metric: float
    test_metric: float
    test_utt_metric: float | None  # tasks with utt_metric: utterance accuracy from averaged frame logits
    best_step: int
    steps: int
    converged: bool  # stopped by patience (True) or by the max_steps cap / a fixed budget (False)
    layer_weights: list[float] | None
    train_utts: int
    train_frames: int
    wall_seconds: float
    state: dict | None = None  # the probe's weights at the best dev point (fine-tuning starts from them)


class Probe(nn.Module):
    """Fixed layer or weighted sum -> (mean-pool) -> (whiten) -> head.

    Frozen probes read examples that their source has already whitened (downstream.sources), so `whiten` is
    None; a fine-tuning probe reads the upstream live and applies the frozen probe's whitening itself.
    """

    def __init__(self, task: TaskSpec, mode: LayerMode, num_hidden_states: int, hidden_size: int, n_classes: int,
                 whiten: Whitening | None = None) -> None:
        super().__init__()
        self.task = task
        self.featurizer = Featurizer(mode, num_hidden_states)
        self.whiten = whiten
        self.head = task.head(hidden_size, n_classes)

    def forward(self, hidden: Tensor, lengths: Tensor | None = None) -> Tensor:
        """hidden (layers, n, D) -> logits (n, C); with `lengths`, frames are mean-pooled per utterance
        first for utterance-level tasks (live fine-tuning; cached utterance examples are already means)."""
        x = self.featurizer(hidden)
        if lengths is not None and self.task.level == "utterance":
            x = segment_mean(x, lengths)
        if self.whiten is not None:
            x = self.whiten(x)
        return self.head(x)


class EarlyStopping:
    """Keeps the best dev point (metric, step, weights) and says when `patience` evaluations brought no gain."""

    def __init__(self, cfg: ProbeConfig) -> None:
        self.cfg = cfg
        self.best, self.best_step, self.states = -math.inf, 0, None
        self.since = 0  # evaluations since the last improvement of at least min_delta

    def update(self, metric: float, step: int, *modules: nn.Module) -> None:
        if metric > self.best:
            if metric >= self.best + self.cfg.min_delta:
                self.since = 0
            else:
                self.since += 1
            self.best, self.best_step = metric, step
            self.states = [copy.deepcopy(m.state_dict()) for m in modules]
        else:
            self.since += 1

    @property
    def stop(self) -> bool:
        return not self.cfg.fixed_steps and self.since >= self.cfg.patience

    def restore(self, *modules: nn.Module) -> None:
        assert self.states is not None, "restore() before any evaluation"
        for m, s in zip(modules, self.states):
            m.load_state_dict(s)


def _decay_lr(opt: torch.optim.Optimizer, stopper: EarlyStopping, cfg: ProbeConfig) -> None:
    """Scale the step by lr_decay after every patience // 2 evaluations without gain: the probe settles into its
    optimum instead of hovering around it (called once after each evaluation)."""
    half = max(1, cfg.patience // 2)
    if cfg.lr_decay < 1 and stopper.since and stopper.since % half == 0:
        for g in opt.param_groups:
            g["lr"] *= cfg.lr_decay


@dataclass(frozen=True)
class ProbeSpec:
    """One probe of a batched group: its training utterances (positions in the train split) and its seed."""

    train_idx: tuple[int, ...]
    seed: int


def train_probe(task: TaskSpec, mode: LayerMode, source: FeatureSource, labels: dict[str, SplitLabels],
                train_idx: list[int], n_classes: int, cfg: ProbeConfig, seed: int,
                device: torch.device | str = "cpu", progress: bool = False, memory: int = MEMORY) -> ProbeResult:
    """One frozen probe: `train_probes` with a group of one (the same result it gets in any group)."""
    return train_probes(task, mode, source, labels, [ProbeSpec(tuple(train_idx), seed)], n_classes, cfg, device,
                        progress, memory)[0]


def train_probes(task: TaskSpec, mode: LayerMode, source: FeatureSource, labels: dict[str, SplitLabels],
                 probes: list[ProbeSpec], n_classes: int, cfg: ProbeConfig, device: torch.device | str = "cpu",
                 progress: bool = False, memory: int = MEMORY) -> list[ProbeResult]:
    """Train every probe of `probes` (one task, mode and config; each its own subset and seed) until dev stops
    improving, as ONE batched model; report test at each one's best dev point.

    `source`: an ArraySource (frame-level tasks: the cached frames) or a PooledSource (utterance-level tasks: one
    mean per utterance). `memory`: bytes the group's rows may hold resident (downstream.feeds); the rows are the
    same either way, so the results are too."""
    if not mode.frozen:
        raise ValueError("train_probes trains frozen probes; fine-tuning is finetune_probe")
    if not probes:
        return []
    t0 = time.perf_counter()
    device = torch.device(device)
    layers = mode.layers_read(source.num_hidden_states)
    frame_lengths = source.lengths("train")
    if isinstance(source, PooledSource):
        rows, whiten = source.rows(), source.whitening()
    else:
        assert isinstance(source, ArraySource), f"frozen probes read cached features, got {type(source).__name__}"
        rows, whiten = source, source.whitening()
    whiten = [whiten[source.position(k)] for k in layers]
    targets = {s: Targets(task, labels[s], source.lengths(s), s) for s in SPLITS}
    per_row = {s: (t.frames if task.level == "frame" else t.utt) for s, t in targets.items()}
    if cfg.optimizer == "lbfgs":
        # a path is deterministic given its examples and starting weights: probes that share both (every seed at
        # 100 % of the labels, where heads and mixes start at zero) share one solve
        solved: dict[tuple, ProbeResult] = {}
        fits = []
        for p in probes:
            key = (tuple(sorted(p.train_idx)), _initial_state(task, mode, rows, n_classes, p.seed))
            if key not in solved:
                solved[key] = _fit_path(task, mode, rows, whiten, layers, per_row, p, n_classes, cfg, device)
            fits.append(solved[key])
    else:
        fits = _fit_stacked(task, mode, rows, whiten, layers, per_row, targets, probes, n_classes, cfg, device,
                            memory, progress)
    share = (time.perf_counter() - t0) / len(probes)  # the group's wall time, shared equally
    return [replace(f, train_utts=len(p.train_idx), train_frames=int(frame_lengths[list(p.train_idx)].sum()),
                    wall_seconds=share) for f, p in zip(fits, probes)]


def _fit_stacked(task: TaskSpec, mode: LayerMode, rows: ArraySource, whiten: list[Whitening], layers: list[int],
                 per_row: dict[str, np.ndarray], targets: dict[str, Targets], probes: list[ProbeSpec],
                 n_classes: int, cfg: ProbeConfig, device: torch.device, memory: int,
                 progress: bool) -> list[ProbeResult]:
    """The minibatch trainer (SGD or AdamW) of a group of probes stacked into one model (downstream.stacked),
    reading blocks of rows in the order of downstream.feeds; dev after every pass over the data (at least
    `min_eval_steps` steps apart) or every `eval_every` steps; each probe stops on its own."""
    P = len(probes)
    n_utts = len(rows.lengths("train"))
    member = torch.zeros(P, n_utts, dtype=torch.bool)
    for p, spec in enumerate(probes):
        member[p, list(spec.train_idx)] = True
    union = member.any(0).numpy()
    offsets = rows.splits["train"].offsets
    need = int((offsets[1:] - offsets[:-1])[union].sum()) + sum(int(rows.splits[s].offsets[-1]) for s in ("dev", "test"))
    resident = stored_bytes(rows, layers, need) <= memory
    stores = {s: RowStore(rows, s, layers, whiten, per_row[s], union if s == "train" else None, resident, device)
              for s in SPLITS}
    with _INIT_LOCK:  # the global RNGs: groups trained in parallel threads must not interleave here
        heads = []
        for spec in probes:
            seed_everything(spec.seed)
            heads.append(task.head(rows.hidden_size, n_classes))
    model = StackedHeads(heads, len(layers), mode.kind == "weighted_sum", device)
    opt = StackedOptimizer(cfg.optimizer, model.params, cfg.lr, cfg.momentum, cfg.weight_decay)
    gens = [torch.Generator().manual_seed(spec.seed * 1_000_003 + 1) for spec in probes]
    best = [p.detach().clone() for p in model.params]  # every probe's weights at its best dev point, by probe id
    state = _Stopping(P, cfg)
    alive = torch.arange(P)  # probe id of every position of the stack
    B = cfg.batch_size
    bar = _bar(P, progress, f"{task.name}/{mode.label} x{P}", unit="probe")

    def evaluate(due: Tensor) -> Tensor | None:
        """Score dev for the stack positions `due`, update their stopping state, drop finished probes; returns the
        positions kept when some left the stack (None when none did)."""
        nonlocal alive
        if not bool(due.any()):
            return None
        pos = due.nonzero().squeeze(1)
        ids = alive[pos]
        with torch.no_grad():
            dev = _correct(model, [p.detach().index_select(0, pos.to(device)) for p in model.params], stores["dev"])[0]
        dev = dev / stores["dev"].n_rows
        for j, (q, i) in enumerate(zip(pos.tolist(), ids.tolist())):
            if state.update(i, float(dev[j])):
                for b, p in zip(best, model.params):
                    b[i].copy_(p.detach()[q])
            if state.decay(i):
                opt.lr[q] *= cfg.lr_decay
        finished = torch.tensor([state.finished(i) for i in alive.tolist()])
        if bool(finished.any()):
            keep = (~finished).nonzero().squeeze(1)
            if bar is not None:
                bar.update(int(finished.sum()))
            alive = alive[keep]
            model.keep(keep.to(device))
            opt.keep(keep.to(device))
            return keep
        return None

    train = stores["train"]
    buffers = _Buffers()
    for k in itertools.count():
        for blocks in pass_order(train.n_blocks, k):
            wanted = member[alive].any(0).numpy()
            blocks = [b for b in blocks if train.has_rows(b, wanted)]
            if not blocks:
                continue
            chunk = train.chunk(blocks)
            batches, valid = _chunk_batches(member, alive, chunk.utt, gens, B)  # (A, S, B) each
            for s in range(batches.shape[1]):
                if len(alive) == 0:
                    break
                act = valid[:, s].any(1)
                act_pos = act.nonzero().squeeze(1)
                if len(act_pos) == 0:
                    continue
                idx, ok = batches[act_pos, s].to(device), valid[act_pos, s].to(device)
                A = len(act_pos)
                x = buffers.gather(chunk.x, idx.reshape(-1)).view(A, B, len(layers), -1)
                sub = [p.index_select(0, act_pos.to(device)) for p in model.params]
                logits = model.forward(x, sub)  # (A, B, C)
                ce = F.cross_entropy(logits.reshape(A * B, -1), chunk.y[idx.reshape(-1)], reduction="none").view(A, B)
                w = ok.float()
                loss = ((ce * w).sum(1) / w.sum(1).clamp_min(1)).sum()
                for p in model.params:
                    p.grad = None
                loss.backward()
                clip_per_probe(model.params, cfg.grad_clip)
                opt.step(model.params, act.to(device))
                ids = alive[act_pos]
                state.steps[ids] += 1
                due = torch.zeros(len(alive), dtype=torch.bool)
                due[act_pos] = state.due_by_steps(ids)
                keep = evaluate(due)
                if keep is not None:  # finished probes left the stack: so do their batches
                    batches, valid = batches[keep], valid[keep]
            if len(alive) == 0:
                break
        if len(alive) == 0:
            break
        evaluate(state.due_at_pass_end(alive))
        if len(alive) == 0:
            break
    if bar is not None:
        bar.close()
    with torch.no_grad():
        test_correct, utt_sums = _correct(model, [b.to(device) for b in best], stores["test"], keep_utt=task.utt_metric)
    results = []
    for i in range(P):
        test_utt = None
        if task.utt_metric:
            assert utt_sums is not None and targets["test"].utt is not None
            test_utt = float((utt_sums[i].argmax(-1).cpu() == torch.from_numpy(targets["test"].utt)).float().mean())
        results.append(ProbeResult(
            dev_metric=state.best[i], test_metric=float(test_correct[i]) / stores["test"].n_rows, test_utt_metric=test_utt,
            best_step=int(state.best_step[i]), steps=int(state.steps[i]), converged=bool(state.converged[i]),
            layer_weights=model.layer_weights(best, i), train_utts=0, train_frames=0, wall_seconds=0.0,
            state=model.state_of(best, i)))
    return results


class _Buffers:
    """One float16 and one float32 minibatch buffer reused by every step: a fresh (probes x batch x layers x D)
    tensor per step costs more in page faults than the gather itself."""

    def __init__(self) -> None:
        self.stored: Tensor | None = None
        self.f32: Tensor | None = None

    def gather(self, x: Tensor, idx: Tensor) -> Tensor:
        """x[idx] as float32, (len(idx), *x.shape[1:]), in the reused buffers."""
        shape = (len(idx), *x.shape[1:])
        n = int(np.prod(shape))
        if self.stored is None or self.stored.numel() < n or self.stored.dtype != x.dtype or self.stored.device != x.device:
            self.stored = torch.empty(n, dtype=x.dtype, device=x.device)
            self.f32 = torch.empty(n, dtype=torch.float32, device=x.device)
        assert self.f32 is not None
        stored = self.stored[:n].view(shape)
        torch.index_select(x, 0, idx, out=stored)
        return self.f32[:n].view(shape).copy_(stored)


class _Stopping:
    """The stopping rule of every probe of a group, by probe id: the best dev point, evaluations without a gain
    of `min_delta` (patience, learning-rate decay), the `max_steps` cap, and the evaluation schedule."""

    def __init__(self, P: int, cfg: ProbeConfig) -> None:
        self.cfg = cfg
        self.best = [-math.inf] * P
        self.best_step = [0] * P
        self.since = [0] * P  # evaluations since the last improvement of at least min_delta
        self.steps = torch.zeros(P, dtype=torch.long)
        self.last_eval = torch.zeros(P, dtype=torch.long)
        self.converged = [False] * P
        self.done = [False] * P

    def update(self, i: int, metric: float) -> bool:
        """Record probe i's dev metric at its current step; True when it is the new best (keep its weights)."""
        cfg, step = self.cfg, int(self.steps[i])
        self.last_eval[i] = step
        improved = metric > self.best[i]
        if improved:
            self.since[i] = 0 if metric >= self.best[i] + cfg.min_delta else self.since[i] + 1
            self.best[i], self.best_step[i] = metric, step
        else:
            self.since[i] += 1
        if not cfg.fixed_steps and self.since[i] >= cfg.patience:
            self.done[i], self.converged[i] = True, True
        elif step >= cfg.max_steps:
            self.done[i] = True
        return improved

    def decay(self, i: int) -> bool:
        """Scale the step by lr_decay after every patience // 2 evaluations without gain: the probe settles into
        its optimum instead of hovering around it."""
        half = max(1, self.cfg.patience // 2)
        return self.cfg.lr_decay < 1 and self.since[i] > 0 and self.since[i] % half == 0 and not self.done[i]

    def finished(self, i: int) -> bool:
        return self.done[i]

    def due_by_steps(self, ids: Tensor) -> Tensor:
        steps = self.steps[ids]
        due = steps >= self.cfg.max_steps
        if self.cfg.eval_every:
            due |= steps % self.cfg.eval_every == 0
        return due

    def due_at_pass_end(self, alive: Tensor) -> Tensor:
        if self.cfg.eval_every:
            return torch.zeros(len(alive), dtype=torch.bool)
        return (self.steps[alive] - self.last_eval[alive]) >= self.cfg.min_eval_steps


def _chunk_batches(member: Tensor, alive: Tensor, utt: Tensor, gens: list[torch.Generator],
                   batch_size: int) -> tuple[Tensor, Tensor]:
    """Each probe's rows of a chunk (those of its utterances), shuffled by its own generator, cut into minibatches:
    (A, S, B) positions in the chunk and (A, S, B) validity (a probe's last batch may be short, and a probe with
    fewer rows than another idles for the rest of the chunk)."""
    mask = member[alive][:, utt]  # (A, n)
    picks = []
    for a, i in enumerate(alive.tolist()):
        idx = mask[a].nonzero().squeeze(1)
        picks.append(idx[torch.randperm(len(idx), generator=gens[i])])
    S = max(1, max(math.ceil(len(p) / batch_size) for p in picks))
    batches = torch.zeros(len(picks), S * batch_size, dtype=torch.long)
    valid = torch.zeros(len(picks), S * batch_size, dtype=torch.bool)
    for a, p in enumerate(picks):
        batches[a, :len(p)] = p
        valid[a, :len(p)] = True
    return batches.view(len(picks), S, batch_size), valid.view(len(picks), S, batch_size)


def _correct(model: StackedHeads, params: list[Tensor], store: RowStore,
             keep_utt: bool = False) -> tuple[Tensor, Tensor | None]:
    """Correct predictions of every probe of `params` over all rows of `store` (Q,), and with `keep_utt` the
    per-utterance sums of their logits (Q, n_utts, C) for an utterance accuracy from frame logits."""
    Q = len(params[0])
    correct = torch.zeros(Q, dtype=torch.long, device=store.device)
    sums = None
    for blocks in store.chunks():
        ch = store.chunk(blocks)
        for a in range(0, len(ch.x), EVAL_ROWS):
            logits = model.forward(ch.x[a: a + EVAL_ROWS], params)  # (Q, n, C)
            correct += (logits.argmax(-1) == ch.y[a: a + EVAL_ROWS]).sum(1)
            if keep_utt:
                if sums is None:
                    sums = torch.zeros(Q, len(store.offsets) - 1, logits.shape[-1], device=store.device)
                sums.index_add_(1, ch.utt[a: a + EVAL_ROWS].to(store.device), logits)
    return correct.cpu(), sums


def _fit_path(task: TaskSpec, mode: LayerMode, rows: ArraySource, whiten: list[Whitening], layers: list[int],
              per_row: dict[str, np.ndarray], spec: ProbeSpec, n_classes: int, cfg: ProbeConfig,
              device: torch.device) -> ProbeResult:
    """The L2 regularisation path of one probe (few examples: mean-pooled utterances): for each strength of
    `l2_grid`, strongest first and warm-started from the previous point, full-batch L-BFGS in float64 until within
    `rtol` x |W| of that strength's unique optimum (downstream.solver), then dev. The path plays the part of
    training time (weak L2 = a long run): `steps` counts L-BFGS iterations, `patience` points without gain stop
    it, and the run is converged when every point it visited was solved within `max_steps`."""
    x = {s: torch.stack([w(rows.read(s, k, 0, int(rows.splits[s].offsets[-1])).float()) for w, k in zip(whiten, layers)])
         for s in SPLITS}  # (L, n, D) standardised rows, resident: a few thousand at most
    y = {s: torch.from_numpy(per_row[s]) for s in SPLITS}
    with _INIT_LOCK:
        seed_everything(spec.seed)
        probe = Probe(task, mode, rows.num_hidden_states, rows.hidden_size, n_classes)
    probe.to(device)
    stopper = EarlyStopping(cfg)
    idx = torch.as_tensor(list(spec.train_idx), dtype=torch.long)
    work = copy.deepcopy(probe).double()  # float32 gradients floor above the relative tolerance at weak L2
    xt, yt = x["train"].index_select(1, idx).to(device, torch.float64), y["train"].index_select(0, idx).to(device)
    params = list(work.parameters())
    penalised = [p for name, p in work.head.named_parameters() if name.endswith("weight")]  # not biases, not the mix
    step, solved = 0, True
    for l2 in cfg.l2_grid:
        budget = cfg.max_steps - step
        if budget <= 0:
            solved = False
            break
        work.train()
        iters, ok = solve_l2(params, lambda: F.cross_entropy(work(xt), yt), penalised, l2, cfg.rtol, budget)
        solved &= ok
        step += iters
        probe.load_state_dict(work.state_dict())  # copied into the float32 probe that is scored and kept
        stopper.update(_accuracy(probe, x["dev"], y["dev"], device), step, probe)
        if stopper.stop:
            break
    stopper.restore(probe)
    return ProbeResult(dev_metric=stopper.best, test_metric=_accuracy(probe, x["test"], y["test"], device),
                       test_utt_metric=None, best_step=stopper.best_step, steps=step,
                       converged=solved and not cfg.fixed_steps, layer_weights=probe.featurizer.layer_weights(),
                       train_utts=0, train_frames=0, wall_seconds=0.0,
                       state={k: v.cpu() for k, v in probe.state_dict().items()})


def _initial_state(task: TaskSpec, mode: LayerMode, rows: ArraySource, n_classes: int, seed: int) -> bytes:
    """The bytes of the weights a probe of `seed` starts from (the key of identical paths)."""
    with _INIT_LOCK:
        seed_everything(seed)
        probe = Probe(task, mode, rows.num_hidden_states, rows.hidden_size, n_classes)
    return b"".join(v.numpy().tobytes() for v in probe.state_dict().values())


@torch.no_grad()
def _accuracy(probe: "Probe", x: Tensor, y: Tensor, device: torch.device) -> float:
    probe.eval()
    if len(y) == 0:
        raise ValueError("no labelled examples to evaluate on")
    return float((probe(x.to(device)).argmax(-1).cpu() == y).float().mean())


@torch.no_grad()
def score_live(probe: Probe, task: TaskSpec, source: FeatureSource, split: str, targets: Targets,
               device: torch.device) -> tuple[float, float | None]:
    """Like `score`, running the upstream on the audio of every utterance of `split` (fine-tuning)."""
    probe.eval()
    lengths_all = source.lengths(split)
    L = source.num_hidden_states
    correct = total = utt_correct = 0
    for idx in frame_batches(lengths_all, EVAL_FRAMES):
        hidden, lengths = source.batch(split, idx, list(range(L)))
        logits = probe(hidden.to(device), lengths.to(device)).float().cpu()
        target = targets.batch(idx)
        correct += int((logits.argmax(-1) == target).sum())
        total += len(target)
        if task.utt_metric:
            utt_correct += int((segment_mean(logits, lengths).argmax(-1) == targets.utterances(idx)).sum())
    if total == 0:
        raise ValueError(f"split {split!r} has no labelled frames to evaluate on")
    return correct / total, (utt_correct / len(lengths_all) if task.utt_metric else None)


def finetune_probe(task: TaskSpec, frozen: ProbeResult, whiten: Whitening, live: FeatureSource, upstream: nn.Module,
                   labels: dict[str, SplitLabels], train_idx: list[int], n_classes: int, cfg: ProbeConfig,
                   seed: int, device: torch.device | str = "cpu", progress: bool = False) -> ProbeResult:
    """Fine-tune `upstream` with the head of `frozen` (a converged last-layer probe of the same task, fraction and
    seed) until dev stops improving. `whiten` is the frozen probe's whitening of the last hidden state (fixed).
    Step 0 is the frozen probe, so dev can only match or beat it (up to the float16 storage of the cached
    features it was trained on); test is reported at the best dev point. The upstream is restored afterwards."""
    t0 = time.perf_counter()
    device = torch.device(device)
    assert frozen.state is not None, "fine-tuning starts from a frozen probe's weights"
    L = live.num_hidden_states
    mode = LayerMode("finetune")
    with _INIT_LOCK:
        seed_everything(seed)
        probe = Probe(task, mode, L, live.hidden_size, n_classes, whiten=copy.deepcopy(whiten))
    probe.head.load_state_dict({k.removeprefix("head."): v for k, v in frozen.state.items() if k.startswith("head.")})
    probe.to(device)
    initial = copy.deepcopy(upstream.state_dict())
    trainable = [p for p in upstream.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": list(probe.parameters()), "lr": cfg.lr},
                             {"params": trainable, "lr": cfg.upstream_lr}], weight_decay=cfg.weight_decay)
    params = list(probe.parameters()) + trainable
    lengths = live.lengths("train")
    targets = {s: Targets(task, labels[s], live.lengths(s), s) for s in ("train", "dev", "test")}
    rng = np.random.default_rng([seed, 1])
    stopper = EarlyStopping(cfg)
    upstream.eval()
    stopper.update(score_live(probe, task, live, "dev", targets["dev"], device)[0], 0, probe, upstream)
    eval_every = cfg.eval_every or cfg.min_eval_steps
    step = 0
    bar = _bar(cfg.max_steps, progress, f"{task.name}/finetune")
    try:
        while step < cfg.max_steps and not stopper.stop:
            for idx in length_batches(lengths, train_idx, cfg.batch_size, rng):
                probe.train()
                upstream.train()
                hidden, lens = live.batch("train", idx, list(range(L)), grad=True)
                loss = F.cross_entropy(probe(hidden.to(device), lens.to(device)), targets["train"].batch(idx).to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                step += 1
                if bar is not None:
                    bar.update(1)
                if step % eval_every == 0 or step == cfg.max_steps:
                    upstream.eval()
                    stopper.update(score_live(probe, task, live, "dev", targets["dev"], device)[0], step, probe, upstream)
                    _decay_lr(opt, stopper, cfg)
                    if bar is not None:
                        bar.set_postfix(dev=f"{stopper.best:.3f}@{stopper.best_step}")
                if step >= cfg.max_steps or stopper.stop:
                    break
        stopper.restore(probe, upstream)
        upstream.eval()
        test, test_utt = score_live(probe, task, live, "test", targets["test"], device)
    finally:
        if bar is not None:
            bar.close()
        upstream.load_state_dict(initial)
        upstream.eval()
    return ProbeResult(dev_metric=stopper.best, test_metric=test, test_utt_metric=test_utt,
                       best_step=stopper.best_step, steps=step, converged=stopper.stop, layer_weights=None,
                       train_utts=len(train_idx), train_frames=int(lengths[list(train_idx)].sum()),
                       wall_seconds=time.perf_counter() - t0)


def _bar(total: int, enabled: bool, desc: str, unit: str = "step"):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
