"""Probe training: AdamW, length-bucketed batches, dev evaluation during training, test at the best dev point."""
from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.config import config_from_dict, config_to_dict
from core.repro import seed_everything
from downstream.data import SplitLabels, Targets, frame_batches, length_batches
from downstream.heads import ProbeHead, segment_mean
from downstream.modes import Featurizer, LayerMode
from downstream.sources import FeatureSource
from downstream.tasks import TaskSpec


# evaluation reads at most this many frames per batch: ~4 MiB per hidden state at 256 dims, small enough for
# the allocator to reuse buffers (measured: 38k-frame eval batches spent most of their time in page faults)
EVAL_FRAMES = 4096
_INIT_LOCK = threading.Lock()


@dataclass(frozen=True)
class ProbeConfig:
    """REFERENCE section 4 optimiser (AdamW 2e-4, batch 32, clip 1, no schedule) with a CPU-sized step budget."""

    lr: float = 2e-4
    upstream_lr: float = 5e-5  # finetune only: the pretrained upstream moves more gently than the fresh head
    batch_size: int = 32
    grad_clip: float = 1.0
    weight_decay: float = 0.01
    max_steps: int = 600  # s3prl trains 300k-1M steps; chosen by measurement to fit the 30-minute main job
    eval_every: int = 100  # dev evaluations at every eval_every steps and at the end; model selection on dev
    # frame-level tasks: train each step on at most this many frames drawn at random from the batch's valid
    # frames (an unbiased estimate of the full-batch loss at a fraction of the cost); None = all frames
    frames_per_step: int | None = None

    def __post_init__(self) -> None:
        if self.frames_per_step is not None and self.frames_per_step < 1:
            raise ValueError(f"ProbeConfig.frames_per_step must be >= 1 or None, got {self.frames_per_step}")
        for name in ("batch_size", "max_steps", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"ProbeConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.upstream_lr <= 0:
            raise ValueError("ProbeConfig learning rates must be > 0")

    def with_steps(self, steps: int) -> "ProbeConfig":
        """The same probe with a `steps` budget (dev evaluations no sparser than the budget)."""
        return replace(self, max_steps=steps, eval_every=min(self.eval_every, steps))

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ProbeConfig":
        return config_from_dict(cls, d, "probe config")


@dataclass(frozen=True)
class ProbeResult:
    dev_metric: float
    test_metric: float
    test_utt_metric: float | None  # speaker_frame: utterance accuracy from averaged frame logits
    best_step: int
    steps: int
    layer_weights: list[float] | None
    train_utts: int
    train_frames: int
    wall_seconds: float


class Probe(nn.Module):
    def __init__(self, task: TaskSpec, mode: LayerMode, num_hidden_states: int, hidden_size: int, n_classes: int) -> None:
        super().__init__()
        self.featurizer = Featurizer(mode, num_hidden_states)
        self.head = ProbeHead(task, hidden_size, n_classes)

    def forward(self, hidden: Tensor, lengths: Tensor) -> Tensor:
        return self.head(self.featurizer(hidden), lengths)


def _loss(logits: Tensor, target: Tensor) -> Tensor:
    # batches are flat (valid frames only), so padding never enters the loss (s3prl's speaker_frame bug)
    return F.cross_entropy(logits, target)


@torch.no_grad()
def evaluate(probe: Probe, task: TaskSpec, source: FeatureSource, split: str, targets: Targets,
             layers: list[int], device: torch.device) -> tuple[float, float | None]:
    """(metric, utterance accuracy from averaged frame logits or None) over ALL utterances of `split`."""
    probe.eval()
    lengths_all = source.lengths(split)
    correct = total = utt_correct = 0
    for idx in frame_batches(lengths_all, EVAL_FRAMES):
        hidden, lengths = source.batch(split, idx, layers)
        logits = probe(hidden.to(device), lengths.to(device)).float().cpu()
        target = targets.batch(idx)
        correct += int((logits.argmax(-1) == target).sum())
        total += len(target)
        if task.utt_metric:  # utterance decision from frame logits averaged over its valid frames
            utt_target = targets.utterances(idx)
            utt_correct += int((segment_mean(logits, lengths).argmax(-1) == utt_target).sum())
    if total == 0:
        raise ValueError(f"split {split!r} has no labelled frames to evaluate on")
    return correct / total, (utt_correct / len(lengths_all) if task.utt_metric else None)


def train_probe(task: TaskSpec, mode: LayerMode, source: FeatureSource, labels: dict[str, SplitLabels],
                train_idx: list[int], n_classes: int, cfg: ProbeConfig, seed: int,
                upstream: nn.Module | None = None, device: torch.device | str = "cpu",
                progress: bool = False) -> ProbeResult:
    """Train one probe on `train_idx` of the train split; select on dev; report test at the best dev step.

    Finetune mode needs `upstream` (the module behind a LiveSource), which is trained with its own learning
    rate and restored to its initial weights afterwards so later runs start from the same checkpoint.
    """
    t0 = time.perf_counter()
    device = torch.device(device)
    if mode.kind == "finetune" and upstream is None:
        raise ValueError("finetune mode needs the upstream module (and a live feature source)")
    L = source.num_hidden_states
    layers = mode.layers_read(L) if mode.frozen else list(range(L))
    with _INIT_LOCK:  # the global RNGs: runs trained in parallel threads must not interleave here
        seed_everything(seed)
        probe = Probe(task, mode, L, source.hidden_size, n_classes).to(device)
    groups = [{"params": list(probe.parameters()), "lr": cfg.lr}]
    initial_upstream = None
    if mode.kind == "finetune":
        assert upstream is not None
        initial_upstream = copy.deepcopy(upstream.state_dict())
        groups.append({"params": [p for p in upstream.parameters() if p.requires_grad], "lr": cfg.upstream_lr})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    params = [p for g in groups for p in g["params"]]

    lengths = source.lengths("train")
    targets = {s: Targets(task, labels[s], source.lengths(s), s) for s in ("train", "dev", "test")}
    rng = np.random.default_rng([seed, 1])
    best = (-1.0, 0, None, None)  # (dev metric, step, probe state, upstream state)
    step = 0
    bar = _bar(cfg.max_steps, progress, f"{task.name}/{mode.label}")
    try:
        while step < cfg.max_steps:
            for idx in length_batches(lengths, train_idx, cfg.batch_size, rng):
                probe.train()
                if upstream is not None:
                    upstream.train(mode.kind == "finetune")
                n_frames = int(lengths[idx].sum())
                sel = None  # frame-level tasks: a random subset of the batch's frames, chosen BEFORE reading them
                if task.level == "frame" and cfg.frames_per_step is not None and n_frames > cfg.frames_per_step:
                    sel = np.sort(rng.choice(n_frames, cfg.frames_per_step, replace=False))
                hidden, lens = source.batch("train", idx, layers, grad=mode.kind == "finetune", select=sel)
                target = targets["train"].batch(idx, sel)
                logits = probe(hidden.to(device), lens.to(device))
                loss = _loss(logits, target.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                step += 1
                if bar is not None:
                    bar.update(1)
                if step % cfg.eval_every == 0 or step == cfg.max_steps:
                    if upstream is not None:
                        upstream.eval()
                    dev, _ = evaluate(probe, task, source, "dev", targets["dev"], layers, device)
                    if dev > best[0]:
                        best = (dev, step, copy.deepcopy(probe.state_dict()),
                                copy.deepcopy(upstream.state_dict()) if mode.kind == "finetune" else None)
                    if bar is not None:
                        bar.set_postfix(dev=f"{dev:.3f}", best=f"{best[0]:.3f}@{best[1]}")
                if step >= cfg.max_steps:
                    break
        probe.load_state_dict(best[2])
        if best[3] is not None:
            upstream.load_state_dict(best[3])  # type: ignore[union-attr]
        if upstream is not None:
            upstream.eval()
        test, test_utt = evaluate(probe, task, source, "test", targets["test"], layers, device)
    finally:
        if bar is not None:
            bar.close()
        if initial_upstream is not None:
            upstream.load_state_dict(initial_upstream)  # type: ignore[union-attr]
            upstream.eval()  # type: ignore[union-attr]
    return ProbeResult(dev_metric=best[0], test_metric=test, test_utt_metric=test_utt, best_step=best[1], steps=step,
                       layer_weights=probe.featurizer.layer_weights(), train_utts=len(train_idx),
                       train_frames=int(lengths[list(train_idx)].sum()), wall_seconds=time.perf_counter() - t0)


def _bar(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)
