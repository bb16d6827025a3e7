"""The L2 regularisation path: the full-batch optimiser of linear probes on few examples (mean-pooled utterances).

For each strength of `l2_grid`, strongest first and warm-started from the previous point, full-batch L-BFGS until
within `rtol` x |W| of that strength's unique optimum (downstream.solver), then dev. Each point is solved in the
solver's two phases (downstream.solver.PHASES): float32 until the gradient is near float32's floor, then float64 to
the tolerance, which the float64 phase alone decides; a weighted sum's float64 phase runs in the head's curvature at
the current mix (L2Path.precondition "finish"), a head on one hidden state is solved in its curvature throughout. The
path plays the part of training time (weak L2 = a long run): `steps` counts L-BFGS iterations of both phases,
`patience` points without gain stop it (downstream.stopping), and the run is converged when every point it visited
was solved within `max_steps`.
The examples are held once, standardised, in float32. A phase reads a path's training subset in place where it is a
contiguous run of the split in the phase's dtype (every subset at 100 % of the labels, in float32), else in copies
made once per path where they fit PATH_HELD_BYTES (the built-in corpus's 1,200 utterances are 10 MB in float64),
else made again at each evaluation of the loss PATH_ROWS examples at a time, so the solver's memory is a few chunks
whatever the number of utterances; the parts of an evaluation run side by side on PATH_THREADS threads, summed in
their order. The values are the same bits every way, so the rows are too.
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from core.allocator import release
from core.parallel import workers_for
from core.repro import flush_denormals, seed_everything
from corpora.manifest import PROBE_SPLITS
from downstream.heads import Whitening
from downstream.modes import LayerMode
from downstream.config import L2Path, ProbeConfig
from downstream.probe import INIT_LOCK, Probe, ProbeResult, ProbeSpec
from downstream.solver import PHASES, Kronecker, Preconditioned, solve_l2
from downstream.sources import ArraySource, whitened
from downstream.stacked import span
from downstream.stopping import Stopping
from downstream.tasks import TaskSpec

PATH_ROWS = 2048  # examples per forward pass of the path's loss: its activations do not grow with the corpus
# threads that evaluate a path's parts side by side; None: as many as the CPU's cores hold this process's torch threads
# (two workers of one torch thread each on 2 cores: 2, so a path that outlasts the other worker's groups has both
# cores; at 16x the built-in corpus's utterances the weighted sum's path took 306.5 s against 373.5, docs/scale.md)
PATH_THREADS: int | None = None
PATH_HELD_BYTES = 64 << 20  # a subset up to this size in a phase's dtype is copied once per path, not per evaluation


def fit_paths(task: TaskSpec, mode: LayerMode, rows: ArraySource, whiten: list[Whitening], layers: list[int],
              per_row: dict[str, np.ndarray], probes: list[ProbeSpec], n_classes: int, cfg: ProbeConfig,
              device: torch.device) -> list[ProbeResult]:
    """The path of every probe. A path is deterministic given its examples (as a set: they are summed in index order)
    and starting weights: probes that share both (every seed at 100 % of the labels, where heads and mixes start at
    zero) share one solve."""
    if not isinstance(cfg.trainer, L2Path):
        raise ValueError(f"the L2 path solves probes configured with L2Path, got {type(cfg.trainer).__name__}")
    if cfg.trainer.precondition != "none" and not task.linear:
        raise ValueError(f"task {task.name}: L2Path.precondition solves in a linear head's curvature, and this task's "
                         "head is not one Linear layer (set precondition='none')")
    x = {s: _standardised(rows, s, layers, whiten) for s in PROBE_SPLITS}
    y = {s: torch.from_numpy(per_row[s]) for s in PROBE_SPLITS}
    solved: dict[tuple, ProbeResult] = {}
    out = []
    for spec in probes:
        probe = _probe(task, mode, rows, n_classes, spec.seed)
        key = (tuple(sorted(spec.train_idx)), b"".join(v.numpy().tobytes() for v in probe.state_dict().values()))
        if key not in solved:
            solved[key] = _path(probe, x, y, spec, cfg, device)
        out.append(solved[key])
    return out


def _standardised(rows: ArraySource, split: str, layers: list[int], whiten: list[Whitening]) -> Tensor:
    """(L, n, D) float32: the split's rows (one per utterance) of hidden states `layers`, standardised in place (no
    second copy of the examples)."""
    n = int(rows.splits[split].offsets[-1])
    x = torch.empty(len(layers), n, rows.hidden_size, dtype=torch.float32)
    for j, k in enumerate(layers):
        x[j] = rows.read(split, k, 0, n)
    return whitened(x, whiten)


def _probe(task: TaskSpec, mode: LayerMode, rows: ArraySource, n_classes: int, seed: int) -> Probe:
    with INIT_LOCK:
        seed_everything(seed)
        return Probe(task, mode, rows.num_hidden_states, rows.hidden_size, n_classes)


def _path(probe: Probe, x: dict[str, Tensor], y: dict[str, Tensor], spec: ProbeSpec, cfg: ProbeConfig,
          device: torch.device) -> ProbeResult:
    probe.to(device)
    task = probe.task
    stop = Stopping(1, cfg, task.metric)
    best = copy.deepcopy(probe.state_dict())
    # the subset's examples in index order: the loss is a sum over them, and a sum's last bits depend on its order,
    # so a path is a function of its subset, whatever order the seed drew it in (downstream.probe.PATH_VERSION)
    idx = torch.as_tensor(sorted(spec.train_idx), dtype=torch.long, device=device)
    xs = x["train"].to(device)
    yt = y["train"].to(device).index_select(0, idx)
    parts = [(a, min(len(idx), a + PATH_ROWS)) for a in range(0, len(idx), PATH_ROWS)]
    run = span(idx)  # a contiguous subset (every subset at 100 % of the labels): its parts are slices of the split

    def part(a: int, b: int, dtype: torch.dtype) -> Tensor:
        t = xs[:, run.start + a:run.start + b] if run is not None else xs.index_select(1, idx[a:b])
        return t.to(dtype)  # a view where the slice is in `dtype` already

    # each phase's parts made once for every evaluation of the path where they are views or fit PATH_HELD_BYTES (the
    # conversion to float64 was a tenth of a solve's time); else made again at each evaluation, a few in memory at once
    held = {dtype: [part(a, b, dtype) for a, b in parts]
            if (run is not None and dtype == xs.dtype) or xs.shape[0] * len(idx) * xs.shape[2] * dtype.itemsize
            <= PATH_HELD_BYTES else None for dtype, _, _ in PHASES}

    def input_part(dtype: torch.dtype, k: int) -> Tensor:
        """Part k of the subset in `dtype`: held, or made now."""
        return held[dtype][k] if held[dtype] is not None else part(*parts[k], dtype)

    def inputs(dtype: torch.dtype) -> Iterator[tuple[Tensor, int, int]]:
        """The subset's parts in `dtype`, in its order (the sums, and so the rows, do not change), with their bounds."""
        for k, (a, b) in enumerate(parts):
            yield input_part(dtype, k), a, b

    # the probe in each phase's dtype; the float64 one ends every point (float32 gradients floor above the relative
    # tolerance at weak L2) and is copied into the float32 probe that is scored and kept
    work = {dtype: copy.deepcopy(probe).to(dtype) for dtype, _, _ in PHASES}

    def part_loss(dtype: torch.dtype, xt: Tensor, a: int, b: int) -> Tensor:
        """The part's share of the mean loss over the subset, its value summed in float64 (a float32 scalar near 1
        cannot show the line search the decreases it compares)."""
        return task.loss(work[dtype](xt), yt[a:b], reduction="none").sum(dtype=torch.float64) / len(idx)

    # several parts (more than PATH_ROWS examples): evaluated side by side on PATH_THREADS threads, their values and
    # gradients summed in the parts' order, so the same bits as one after another (tests/test_engine.py)
    free = workers_for(torch.get_num_threads()) if PATH_THREADS is None else PATH_THREADS
    threads = min(len(parts), free) if device.type == "cpu" else 1
    pool = ThreadPoolExecutor(threads, thread_name_prefix="path") if threads > 1 else None

    def data_loss(dtype: torch.dtype):
        def terms() -> Iterator[Tensor]:
            """The mean loss over the subset, PATH_ROWS examples at a time, each part weighted by its share."""
            if pool is None:
                for xt, a, b in inputs(dtype):
                    yield part_loss(dtype, xt, a, b)
                return
            params = list(work[dtype].parameters())

            def one(k: int) -> tuple[Tensor, tuple[Tensor, ...]]:
                with _arithmetic(dtype):  # the mode is per thread: the phase's on every thread
                    value = part_loss(dtype, input_part(dtype, k), *parts[k])
                    return value.detach(), torch.autograd.grad(value, params)
            done = list(pool.map(one, range(len(parts))))
            value, grads = done[0]
            for v, g in done[1:]:  # in the parts' order: the sums the solver's backward of each part would make
                value, grads = value + v, tuple(x + y for x, y in zip(grads, g))
            yield _Evaluated.apply(value, grads, *params)
        return terms

    def input_moment(m: Probe, dtype: torch.dtype) -> Tensor:
        """The second moment of the head's inputs over the subset at `m`'s current mix (downstream.solver.Kronecker)."""
        return Kronecker.mean_input_moment(m.featurizer(xt) for xt, _, _ in inputs(dtype))

    def head_logits(dtype: torch.dtype) -> Iterator[Tensor]:
        """The head's logits over the subset: where its Kronecker curvature is measured (under no_grad, by the solver)."""
        for xt, _, _ in inputs(dtype):
            yield work[dtype](xt)

    solved = True
    path = cfg.trainer
    assert isinstance(path, L2Path)  # fit_paths checked it
    moment = None  # the head's inputs' second moment, where the curvature is used: measured once, they do not move
    if path.precondition in ("fixed_input", "finish") and probe.featurizer.weights is None:
        with torch.no_grad():
            moment = input_moment(work[torch.float64], torch.float64)
    final_dtype = PHASES[-1][0]
    final = work[final_dtype]
    finish = path.precondition == "finish" and probe.featurizer.weights is not None
    try:
        for l2 in path.l2_grid:
            if cfg.max_steps - int(stop.steps[0]) <= 0:
                solved = False
                break
            ok, at = False, final
            for dtype, floor, patience in PHASES:
                m = work[dtype]
                with torch.no_grad():  # the phase starts where the previous one (or the previous point) ended
                    for p, q in zip(m.parameters(), at.parameters()):
                        p.copy_(q)
                m.train()
                pre = None
                # the head's curvature at this strength (downstream.solver.Kronecker): every phase where its input is
                # fixed (no mix); a weighted sum's float64 phase ("finish") at the mix its float32 phase (in the
                # weights) left, the inputs' moment measured again with F (the mix moves a little as the point ends)
                if moment is not None or (finish and dtype == final_dtype):
                    pre = Preconditioned(m.head.weight, m.head.bias, lambda l2=l2, m=m, dtype=dtype: Kronecker.at(
                        moment if moment is not None else input_moment(m, dtype), head_logits(dtype), l2).to(dtype),
                        out_first=True)
                penalised = [p for name, p in m.head.named_parameters() if name.endswith("weight")]  # not biases or mix
                with _arithmetic(dtype):
                    iters, ok = solve_l2(list(m.parameters()), data_loss(dtype), penalised, l2, path.rtol,
                                         cfg.max_steps - int(stop.steps[0]), floor=floor, patience=patience,
                                         precondition=pre)
                release()  # the phase's freed activations back to the OS (core.allocator)
                stop.steps[0] += iters
                at = m
            solved &= ok  # the float64 phase's: it alone decides the tolerance
            probe.load_state_dict(final.state_dict())  # copied into the float32 probe that is scored and kept
            if stop.update(0, _score(probe, _predict(probe, x["dev"], y["dev"], device), y["dev"])):
                best = copy.deepcopy(probe.state_dict())
            if not cfg.fixed_steps and stop.since[0] >= cfg.patience:
                break
    finally:  # the threads end with the path, also on an error
        if pool is not None:
            pool.shutdown()
    probe.load_state_dict(best)
    test = _predict(probe, x["test"], y["test"], device)
    return ProbeResult(dev_metric=stop.best[0], test_metric=_score(probe, test, y["test"]),
                       test_units=probe.task.metric.unit_arrays(test, y["test"]),
                       test_utt_metric=None, best_step=stop.best_step[0], steps=int(stop.steps[0]),
                       converged=solved and not cfg.fixed_steps, layer_weights=probe.featurizer.layer_weights(),
                       train_utts=0, train_frames=0, wall_seconds=0.0,
                       state={k: v.cpu() for k, v in probe.state_dict().items()})


def _arithmetic(dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """A phase's floating-point mode: in float32, softmax probabilities of large logits (weak L2) underflow to
    subnormals, flushed to zero, off the CPU's slow path (the 4x corpus's weighted-sum path took 71.0 s without it
    against 31.7 s, results/path_phases_4x_weighted_sum.json)."""
    return flush_denormals() if dtype == torch.float32 else contextlib.nullcontext()


class _Evaluated(torch.autograd.Function):
    """A loss whose value and gradients with respect to `params` were computed already (the path's parts, evaluated on
    several threads and summed in their order): its backward hands those gradients to the parameters, which the
    solver's backward of the loss then accumulates as it would each part's."""

    @staticmethod
    def forward(ctx, value: Tensor, grads: tuple[Tensor, ...], *params: Tensor) -> Tensor:  # type: ignore[override]
        ctx.grads = grads
        return value.clone()

    @staticmethod
    def backward(ctx, out: Tensor):  # type: ignore[override]
        return (None, None, *(g * out.to(g.dtype) for g in ctx.grads))


@torch.no_grad()
def _predict(probe: Probe, x: Tensor, y: Tensor, device: torch.device) -> Tensor:
    """The probe's decoded predictions of the examples `x` (labels `y`)."""
    probe.eval()
    if len(y) == 0:
        raise ValueError("no labelled examples to evaluate on")
    return probe.task.decode(probe(x.to(device))).cpu()


def _score(probe: Probe, predictions: Tensor, y: Tensor) -> float:
    """The task's metric of the predictions, float32 as the path has always scored."""
    metric = probe.task.metric
    if metric.tally is None:
        return metric(predictions, y)
    return float(metric.reduce(*metric.tally(predictions, y)))
