"""Probe training until dev stops improving: frozen probes on in-memory features, fine-tuning from the frozen probe.

A frozen probe trains on its split's examples held in memory as float32 (frames for frame-level tasks, per-
utterance means for utterance-level ones), normalised per hidden state with train-split statistics
(downstream.sources). Two trainers, one stopping rule:

* minibatch SGD (or AdamW) in whole-subset epochs with reshuffling; dev is evaluated every epoch (at least
  `min_eval_steps` steps apart); training stops when the dev metric has not improved by `min_delta` for
  `patience` evaluations (`converged`), or at the `max_steps` cap (not converged);
* for linear heads on few examples (mean-pooled utterances): a regularisation path, full-batch L-BFGS solved
  to a relative gradient tolerance (downstream.solver) at each L2 strength of `l2_grid`, strongest first, each warm-starting the next. The
  path plays the part of training time (weak L2 = a long run), dev is evaluated at each point and `patience`
  points without gain stop it.

Test is evaluated once, at the best dev point.
A fine-tuning run starts from the converged frozen probe of its upstream, task, fraction and seed (last
layer), so its step-0 dev score IS the frozen one, and then trains the upstream too with the same rule.
"""
from __future__ import annotations

import copy
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
from downstream.data import SplitLabels, Targets, flat_rows, frame_batches, length_batches
from downstream.heads import Whitening, segment_mean
from downstream.modes import Featurizer, LayerMode
from downstream.solver import solve_l2
from downstream.sources import FeatureSource
from downstream.tasks import TaskSpec

# evaluation reads at most this many examples per forward pass (bounded temporary memory)
EVAL_CHUNK = 16384
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


@dataclass
class Examples:
    """One split as a frozen probe sees it: (layers, N, D) float32 examples, (N,) targets."""

    x: Tensor  # (layers read, N, D): a view of the source's resident array where the layers are contiguous
    y: Tensor  # (N,) int64
    offsets: np.ndarray | None = None  # frame-level splits: utterance i at offsets[i]:offsets[i+1] (utt metric)
    utt_y: Tensor | None = None

    def rows(self, rows: Tensor, out: Tensor | None = None) -> Tensor:
        """(layers, len(rows), D): the examples `rows` of every layer read, gathered into `out` (reused across
        epochs: a fresh multi-GB buffer per epoch costs more in page faults than the gather itself)."""
        if out is None:
            out = torch.empty(self.x.shape[0], len(rows), self.x.shape[2])
        for j in range(self.x.shape[0]):
            torch.index_select(self.x[j], 0, rows, out=out[j])
        return out


def examples(task: TaskSpec, source: FeatureSource, split: str, labels: SplitLabels, layers: list[int]) -> Examples:
    lengths = source.lengths(split)
    all_x = source.examples(split)  # the hidden states source.layers, in that order
    # a mode reads one hidden state or all of them (LayerMode.layers_read): a slice, so a view, never a copy
    pos = [source.position(k) for k in layers]
    assert pos == list(range(pos[0], pos[-1] + 1)), f"layers {layers} are not a contiguous range of {source.layers}"
    x = all_x[pos[0]: pos[-1] + 1]
    t = Targets(task, labels, lengths, split)
    y = torch.from_numpy(t.frames if task.level == "frame" else t.utt)
    utt_y = torch.from_numpy(t.utt) if task.utt_metric else None
    return Examples(x, y, t.offsets, utt_y)


@torch.no_grad()
def score(probe: Probe, task: TaskSpec, ex: Examples, device: torch.device) -> tuple[float, float | None]:
    """(accuracy over all examples, utterance accuracy from averaged frame logits or None)."""
    probe.eval()
    n = len(ex.y)
    if n == 0:
        raise ValueError("no labelled examples to evaluate on")
    keep_logits = task.utt_metric
    logits_all, correct = [], 0
    for a in range(0, n, EVAL_CHUNK):
        logits = probe(ex.x[:, a: a + EVAL_CHUNK].to(device)).float()
        correct += int((logits.argmax(-1).cpu() == ex.y[a: a + EVAL_CHUNK]).sum())
        if keep_logits:
            logits_all.append(logits.cpu())
    utt = None
    if keep_logits:
        assert ex.offsets is not None and ex.utt_y is not None
        means = segment_mean(torch.cat(logits_all), torch.from_numpy(np.diff(ex.offsets)))
        utt = float((means.argmax(-1) == ex.utt_y).float().mean())
    return correct / n, utt


def train_probe(task: TaskSpec, mode: LayerMode, source: FeatureSource, labels: dict[str, SplitLabels],
                train_idx: list[int], n_classes: int, cfg: ProbeConfig, seed: int,
                device: torch.device | str = "cpu", progress: bool = False) -> ProbeResult:
    """Train one frozen probe on utterances `train_idx` of the train split until dev stops improving; report test
    at the best dev point. `source` gives in-memory examples (`examples(split)`: frames, or utterance means)."""
    if not mode.frozen:
        raise ValueError("train_probe trains frozen probes; fine-tuning is finetune_probe")
    t0 = time.perf_counter()
    device = torch.device(device)
    L = source.num_hidden_states
    layers = mode.layers_read(L)
    data = {s: examples(task, source, s, labels[s], layers) for s in ("train", "dev", "test")}
    lengths = source.lengths("train")
    train_idx = list(train_idx)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    rows = (torch.from_numpy(flat_rows(offsets, train_idx)) if task.level == "frame"
            else torch.as_tensor(train_idx, dtype=torch.long))
    with _INIT_LOCK:  # the global RNGs: runs trained in parallel threads must not interleave here
        seed_everything(seed)
        probe = Probe(task, mode, L, source.hidden_size, n_classes)
    probe.to(device)
    stopper = EarlyStopping(cfg)
    bar = _bar(cfg.max_steps, progress, f"{task.name}/{mode.label}")
    try:
        fit = _fit_path if cfg.optimizer == "lbfgs" else _fit_minibatch
        step, converged = fit(probe, task, data, rows, cfg, seed, stopper, device, bar)
        stopper.restore(probe)
        test, test_utt = score(probe, task, data["test"], device)
    finally:
        if bar is not None:
            bar.close()
    return ProbeResult(dev_metric=stopper.best, test_metric=test, test_utt_metric=test_utt,
                       best_step=stopper.best_step, steps=step, converged=converged,
                       layer_weights=probe.featurizer.layer_weights(), train_utts=len(train_idx),
                       train_frames=int(lengths[train_idx].sum()), wall_seconds=time.perf_counter() - t0,
                       state={k: v.cpu() for k, v in probe.state_dict().items()})


def _evaluated(probe: Probe, task: TaskSpec, data: dict[str, Examples], step: int, stopper: EarlyStopping,
               device: torch.device, bar, advance: int) -> None:
    stopper.update(score(probe, task, data["dev"], device)[0], step, probe)
    if bar is not None:
        bar.update(advance)
        bar.set_postfix(dev=f"{stopper.best:.3f}@{stopper.best_step}")


def _optimizer(params, cfg: ProbeConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _fit_minibatch(probe: Probe, task: TaskSpec, data: dict[str, Examples], rows: Tensor, cfg: ProbeConfig, seed: int,
                   stopper: EarlyStopping, device: torch.device, bar) -> tuple[int, bool]:
    """Minibatch SGD / AdamW over reshuffled epochs of `rows`; dev every epoch (>= min_eval_steps).
    Returns (steps, stopped by patience)."""
    opt = _optimizer(probe.parameters(), cfg)
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + 1)
    n = len(rows)
    eval_every = cfg.eval_every or max(math.ceil(n / cfg.batch_size), cfg.min_eval_steps)
    x_epoch = None  # one buffer for every epoch's gather
    step = 0
    while step < cfg.max_steps and not stopper.stop:
        perm = rows[torch.randperm(n, generator=gen)]
        x_epoch, y_epoch = data["train"].rows(perm, x_epoch), data["train"].y.index_select(0, perm)
        for a in range(0, n, cfg.batch_size):
            probe.train()
            logits = probe(x_epoch[:, a: a + cfg.batch_size].to(device))
            loss = F.cross_entropy(logits, y_epoch[a: a + cfg.batch_size].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(probe.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            if step % eval_every == 0 or step == cfg.max_steps:
                _evaluated(probe, task, data, step, stopper, device, bar, eval_every)
                _decay_lr(opt, stopper, cfg)
            if step >= cfg.max_steps or stopper.stop:
                break
    return step, stopper.stop


def _fit_path(probe: Probe, task: TaskSpec, data: dict[str, Examples], rows: Tensor, cfg: ProbeConfig, seed: int,
              stopper: EarlyStopping, device: torch.device, bar) -> tuple[int, bool]:
    """The L2 regularisation path: for each strength of `l2_grid` (strongest first, warm-started from the previous
    point) full-batch L-BFGS in float64 until within `rtol` x |W| of that strength's unique optimum
    (downstream.solver), then dev (on the float32 probe). `steps` counts L-BFGS iterations; the run is converged
    when every point it visited was solved within the `max_steps` budget and the path either ended or stopped
    after `patience` points without gain."""
    work = copy.deepcopy(probe).double()  # float32 gradients floor above the relative tolerance at weak L2
    x = data["train"].rows(rows).to(device, torch.float64)  # (layers, n, D): the whole training subset, held once
    y = data["train"].y.index_select(0, rows).to(device)
    params = list(work.parameters())
    penalised = [p for name, p in work.head.named_parameters() if name.endswith("weight")]  # not biases, not the mix
    step, solved = 0, True
    for l2 in cfg.l2_grid:
        budget = cfg.max_steps - step
        if budget <= 0:
            solved = False
            break
        work.train()
        iters, ok = solve_l2(params, lambda: F.cross_entropy(work(x), y), penalised, l2, cfg.rtol, budget)
        solved &= ok
        step += iters
        probe.load_state_dict(work.state_dict())  # copied into the float32 probe that is scored and kept
        _evaluated(probe, task, data, step, stopper, device, bar, iters)
        if stopper.stop:
            break
    return step, solved and not cfg.fixed_steps


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


def _bar(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)
