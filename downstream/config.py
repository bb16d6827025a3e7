"""How a probe trains: one typed config per trainer, nothing marked "only for".

    ProbeConfig(trainer, patience, min_delta, max_steps, fixed_steps)   # the stopping rule every probe shares
      trainer = Minibatch(optimizer, batch_size, grad_clip, eval_every, min_eval_steps, lr_decay)
                  optimizer = SGD(lr, momentum, weight_decay)            # frozen probes
                            | NaturalSGD(lr, momentum, damping, fisher_decay, fisher_rows, mix_lr)  # linear probes
                            | AdamW(lr, weight_decay)                    # frozen probes
                            | FinetuneAdamW(lr, upstream_lr, weight_decay)  # fine-tuning: head and upstream
              | L2Path(l2_grid, rtol, precondition)                      # full-batch L-BFGS, strongest L2 first

Every probe trains until dev stops improving (downstream.stopping): `patience` evaluations without a gain of
`min_delta`, or the `max_steps` cap. A minibatch trainer evaluates dev after every pass over its training subset
(`eval_every` 0) or every `eval_every` steps; the L2 path after each point of its grid.

The papers train probes with AdamW at lr 2e-4, batch 32, for 300k+ steps and report test at the best dev step
(s3prl legacy downstream configs). Here frame features are whitened, so SGD with a large step converges in a few
epochs, and utterance means are few enough for a full-batch solver; the stopping rule, not a step count, decides
when a probe is done (docs/benchmark.md).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, get_args


def _names(obj: Any) -> set[str]:
    return {f.name for f in fields(obj)}


def _positive(cfg: Any, name: str) -> None:
    if getattr(cfg, name) <= 0:
        raise ValueError(f"{type(cfg).__name__}.{name} must be > 0, got {getattr(cfg, name)}")


def _at_least_one(cfg: Any, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) < 1:
            raise ValueError(f"{type(cfg).__name__}.{name} must be >= 1, got {getattr(cfg, name)}")


@dataclass(frozen=True)
class SGD:
    """Minibatch SGD with Nesterov momentum. On whitened features it converges as fast as AdamW, and early-stopped
    gradient descent is regularised like an L2 (ridge) penalty: with a dozen training utterances AdamW, which moves
    every weight by ~lr per step whatever its gradient, overfits before the first dev evaluation."""

    lr: float = 0.5
    momentum: float = 0.9
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _positive(self, "lr")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"SGD.momentum must be in [0, 1), got {self.momentum}")


@dataclass(frozen=True)
class NaturalSGD:
    """SGD with Nesterov momentum on the natural gradient of a linear softmax head: K-FAC (Martens & Grosse 2015,
    "Optimizing Neural Networks with Kronecker-factored Approximate Curvature", ICML) for one layer whose inputs are
    whitened. K-FAC approximates the Fisher of a linear layer as E[x x^T] (x) E[g g^T], g the loss gradient at the
    logits; the whitening makes the first factor the identity, so the natural gradient is the gradient times the
    inverse of the second, the softmax's C x C covariance E[diag(p) - p p^T] under the model's own predictions.
    That factor is what plain SGD is slow along: with many classes and spread predictions (one of 100 speakers per
    frame) its eigenvalues are ~1/C, and SGD's step that is stable on near-chance features crawls on informative
    ones (docs/benchmark.md). The factor is a running average over minibatches (`fisher_decay`, bias-corrected as
    Adam's moments) of estimates on `fisher_rows` rows of each minibatch (on all 4,096 the estimate cost as much as
    the rest of a step), damped by `damping` x its mean diagonal before it is inverted. The mix weights of a weighted
    sum are not part of the layer: they take a plain SGD step at `mix_lr`."""

    lr: float = 0.01
    momentum: float = 0.9
    damping: float = 1e-3
    fisher_decay: float = 0.95
    fisher_rows: int = 512  # rows of each minibatch (its first, in its shuffled order) the factor is estimated on
    mix_lr: float = 0.5

    def __post_init__(self) -> None:
        _positive(self, "lr")
        _positive(self, "damping")
        _positive(self, "mix_lr")
        _at_least_one(self, "fisher_rows")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"NaturalSGD.momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.fisher_decay < 1:
            raise ValueError(f"NaturalSGD.fisher_decay must be in [0, 1), got {self.fisher_decay}")


@dataclass(frozen=True)
class AdamW:
    """Minibatch AdamW (torch's defaults for betas and eps): the MLP head and the whole-utterance tasks."""

    lr: float = 1e-3
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _positive(self, "lr")


@dataclass(frozen=True)
class FinetuneAdamW:
    """AdamW over a probe's head (`lr`) and the upstream under it (`upstream_lr`: the pretrained upstream moves more
    gently than the head)."""

    lr: float = 1e-3
    upstream_lr: float = 5e-5
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _positive(self, "lr")
        _positive(self, "upstream_lr")


@dataclass(frozen=True)
class Minibatch:
    """Minibatch training in the loop every such probe shares (downstream.loop)."""

    optimizer: SGD | NaturalSGD | AdamW | FinetuneAdamW = AdamW()
    batch_size: int = 1024  # examples per step: frames (frame-level tasks) or utterances (utterance-level)
    grad_clip: float = 1.0
    eval_every: int = 0  # steps between dev evaluations; 0 = one pass over the training subset
    min_eval_steps: int = 20  # ... but never more often than this (tiny subsets have 1-step passes)
    lr_decay: float = 0.5  # lr multiplier after patience // 2 evaluations without improvement

    def __post_init__(self) -> None:
        _at_least_one(self, "batch_size", "min_eval_steps")
        if self.eval_every < 0:
            raise ValueError(f"Minibatch.eval_every must be >= 0 (0 = every pass), got {self.eval_every}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"Minibatch.lr_decay must be in (0, 1], got {self.lr_decay}")


Precondition = Literal["fixed_input", "finish", "none"]  # L2Path.precondition (its comment there)
PRECONDITIONS: tuple[str, ...] = get_args(Precondition)


@dataclass(frozen=True)
class L2Path:
    """The L2 regularisation path with full-batch L-BFGS (linear heads, few examples: mean-pooled utterances),
    strongest first; one step is one L-BFGS iteration. The objective is mean cross-entropy + l2 / 2 * |head
    weights|^2. One strength per decade: the 300 dev utterances of the built-in corpus cannot tell half-decades
    apart. One point is solved when |grad| <= rtol * l2 * |W| (within rtol x |W| of its optimum, downstream.solver):
    0.1 moved 0-1 of 300 dev predictions against 0.01, at a third of the cost (docs/benchmark.md)."""

    l2_grid: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
    rtol: float = 0.1
    # "fixed_input": where the head reads one hidden state (a convex problem, one optimum), L-BFGS in the variables of
    # its Kronecker curvature (downstream.solver.Kronecker): the same optimum and tolerance, a fraction of the
    # iterations at weak L2 on many examples. A weighted sum's mix makes the objective non-convex and the path decides
    # which optimum it reaches: solved in the curvature, the 1x Mockingjay's weighted sum settled on its last layer (dev
    # 14.0 %) where the path in the weights had found its input block (dev 24.0), so "fixed_input" solves a weighted
    # sum in the weights (docs/benchmark.md). "finish" (the default): as "fixed_input", and a weighted sum's points
    # finish in the curvature: each point's float32 phase, in the weights, takes the mix where the path in the weights
    # takes it, and its float64 phase, which closes the relative tolerance (at weak L2 on many examples, thousands of
    # iterations in the weights), runs in the curvature at the current mix. The full job's 84 Transformer weighted-sum
    # rows kept their mix (within 0.007) and 74 their test score (the other 10 one or two test examples apart); on 16x
    # the built-in corpus's utterances the weighted-sum path took 63 s against 387 (docs/benchmark.md). "none": every
    # path in the weights.
    precondition: Precondition = "finish"

    def __post_init__(self) -> None:
        if not self.l2_grid or any(v <= 0 for v in self.l2_grid):
            raise ValueError(f"L2Path.l2_grid must hold L2 strengths > 0 (the solver's tolerance is relative to the "
                             f"L2 strength), got {self.l2_grid}")
        _positive(self, "rtol")
        if self.precondition not in PRECONDITIONS:
            raise ValueError(f"L2Path.precondition must be one of {', '.join(PRECONDITIONS)}, got "
                             f"{self.precondition!r}")


@dataclass(frozen=True)
class ProbeConfig:
    """A probe's trainer and the stopping rule. Defaults: minibatch AdamW (the presets of the main job are
    benchmark.plan.presets)."""

    trainer: Minibatch | L2Path = Minibatch()
    patience: int = 8  # dev evaluations without an improvement of min_delta before the run stops (converged)
    min_delta: float = 1e-3  # 0.1 point of accuracy: smaller gains do not reset the patience
    max_steps: int = 100_000  # the cap: a run stopped here is recorded as NOT converged
    fixed_steps: bool = False  # train exactly max_steps, best dev point still chosen (the --steps approximation)

    def __post_init__(self) -> None:
        _at_least_one(self, "patience", "max_steps")

    @property
    def budget(self) -> str:
        """The row's `budget` column: 'converge' (early stopping) or 'steps=N' (a fixed, approximate budget)."""
        return f"steps={self.max_steps}" if self.fixed_steps else "converge"

    @property
    def minibatch(self) -> Minibatch:
        """The minibatch trainer; a clear error where the probe solves an L2 path instead."""
        if not isinstance(self.trainer, Minibatch):
            raise ValueError(f"this probe trains by {type(self.trainer).__name__}, not by minibatches")
        return self.trainer

    def with_steps(self, steps: int) -> "ProbeConfig":
        """A fixed budget of `steps` (no early stopping; dev still picks the reported point)."""
        trainer = self.trainer
        if isinstance(trainer, Minibatch):
            trainer = replace(trainer, eval_every=min(trainer.eval_every or steps, steps),
                              min_eval_steps=min(trainer.min_eval_steps, steps))
        return replace(self, trainer=trainer, max_steps=steps, fixed_steps=True)

    def with_fields(self, **values: Any) -> "ProbeConfig":
        """This config with fields replaced by name wherever they live (`patience`, `batch_size`, `lr`, ...);
        `optimizer="sgd"|"adamw"` first switches the minibatch optimiser to that kind's defaults."""
        cfg = self
        if "optimizer" in values:
            kind = values.pop("optimizer")
            if kind not in OPTIMIZERS:
                raise ValueError(f"optimizer {kind!r}: one of {', '.join(OPTIMIZERS)}")
            cfg = replace(cfg, trainer=replace(cfg.minibatch, optimizer=OPTIMIZERS[kind]()))
        for name, value in values.items():
            trainer = cfg.trainer
            if name in _names(cfg):
                cfg = replace(cfg, **{name: value})
            elif name in _names(trainer):
                cfg = replace(cfg, trainer=replace(trainer, **{name: value}))
            elif isinstance(trainer, Minibatch) and name in _names(trainer.optimizer):
                cfg = replace(cfg, trainer=replace(trainer, optimizer=replace(trainer.optimizer, **{name: value})))
            else:
                raise ValueError(f"{name!r} is not a setting of this probe; it has {', '.join(settable(cfg))}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON (part of every run id), each trainer and optimiser named by its kind."""
        trainer = {"kind": type(self.trainer).__name__, **asdict(self.trainer)}
        if isinstance(self.trainer, Minibatch):
            trainer["optimizer"] = {"kind": type(self.trainer.optimizer).__name__, **asdict(self.trainer.optimizer)}
        return {**asdict(self), "trainer": trainer}


# the minibatch optimisers by name (perf/probe_settings.py's --set optimizer=...)
OPTIMIZERS: dict[str, type] = {"sgd": SGD, "ngd": NaturalSGD, "adamw": AdamW}


def settable(cfg: ProbeConfig) -> dict[str, Any]:
    """The settings `ProbeConfig.with_fields` takes for `cfg`, with their values (the optimiser by its kind)."""
    out = {k: v for k, v in vars(cfg).items() if k != "trainer"}
    out.update({k: v for k, v in vars(cfg.trainer).items() if k != "optimizer"})
    if isinstance(cfg.trainer, Minibatch):
        opt = cfg.trainer.optimizer
        out.update(vars(opt), optimizer=next((k for k, t in OPTIMIZERS.items() if isinstance(opt, t)), type(opt).__name__))
    return dict(sorted(out.items()))
