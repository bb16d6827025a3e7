"""The convergence certificate: every frozen probe against a fully converged logistic regression on its own data.

For each frozen-probe row of a results directory (phone_linear, speaker_utterance, speaker_frame, phone_1hidden; modes last,
layer=K and weighted_sum) at the largest and the smallest label fraction of its upstream and task, a reference
is fitted on the SAME cached features, labels and training subset: multinomial logistic regression solved to a
tolerance, its L2 strength chosen on dev: full-batch L-BFGS (float32, then float64), each L2 point solved until within 1 % of
|W| of its unique optimum (downstream.solver, CERTIFICATE_RTOL), L2 from `L2_GRID` for frame-level rows (up to
~370k frames) and `UTT_L2_GRID` for utterance-level rows (cheap
fits). The examples are the probes'
own (downstream.sources: in memory, normalised with train-split statistics); for a weighted-sum row the reference
reads the probe's own learned mix of the hidden states (the row's `layer_weights`), so it certifies the head
given the mix. `results/convergence.csv` gets one line per row;
the certificate holds when probe_test >= reference_test - margin (1 point at the largest fraction, 2 at the
smallest, where a few utterances make both noisier).

A linear probe's reference is its own problem solved: the optimum it must reach. A head that is not linear (the
MLP of phone_1hidden) has no unique optimum to solve for; its reference is the logistic regression on the same
examples, which it must match or beat up to the same margin: its ReLU layer can represent any linear map of the
(bounded) examples, since relu(z + c) = z + c wherever z + c > 0, so a converged MLP fits the training data at least
as well as the converged linear head. That is a lower bound, not a proof that the MLP reached its own best; it
catches an MLP stopped short of what a linear probe gets. Both heads of one example set share one reference fit.

Tasks of another engine than the stacked classifiers' (phone_ctc: CTC over label sequences; speaker_verification:
EER of trials) are exempt; `EXEMPT_ENGINES` says why, and certify's output and REPORT.md repeat it.

    python run_benchmark.py certify          # after the main job; or python -m benchmark.report.convergence
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmark.cache.reader import CacheEntry, EntryQuery, find_entry
from benchmark.record.aggregate import read_runs, standing_rows
from core.frames import FrameRule
from core.io import atomic_write_text
from core.parallel import run_parallel
from core.repro import default_device, flush_denormals, torch_threads
from corpora.manifest import PROBE_SPLITS, Corpus, load_corpus
from downstream.data import SplitLabels, Targets, flat_rows, split_labels
from downstream.fractions import fraction_subset
from downstream.solver import PHASES, Kronecker, Preconditioned, solve_l2
from downstream.sources import ArraySource, PooledSource
from downstream.tasks import ALL_TASKS, TaskSpec, get_task
from upstream.registry import parse_spec

CONVERGENCE_FILE = "convergence.csv"
# mean cross-entropy + l2/2 * |W|^2 on whitened examples; sklearn's C = 1 / (l2 * n_train). From strong (a dozen
# utterances) to nearly none (370k frames, where 1e-5 and 1e-6 differ by 0.1 point of dev accuracy): one fit of
# a 100 % frame probe costs ~35 L-BFGS iterations of ~1 s on 2 cores, so the grid stays short.
L2_GRID = (1e-1, 1e-2, 1e-3, 1e-5)
# utterance-level rows: cheap fits, so decades down to nearly none (1,200 standardised mel means choose ~1e-4)
UTT_L2_GRID = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
# each L2 point solved until within CERTIFICATE_RTOL x |W| of its unique optimum (downstream.solver), ten times
# tighter than the L2-path probe's rule (downstream.config.L2Path.rtol)
CERTIFICATE_RTOL = 0.01
# a reference's L-BFGS runs in the solver's two phases (downstream.solver.PHASES: float32 to FLOAT32_GRAD_FLOOR, its
# loss value summed in float64 by LogisticLoss; then float64 to CERTIFICATE_RTOL, which the float64 phase alone decides)
MARGIN_LARGEST, MARGIN_SMALLEST = 1.0, 2.0  # accuracy points
# The reference is a logistic regression: it covers the classifiers of rows (frames, or utterance means) trained with
# cross-entropy, the tasks of the "stacked" engine. A task of another engine is exempt, for its engine's reason
# (stated in the certificate's output, REPORT.md and docs/tasks.md).
EXEMPT_ENGINES: dict[str, str] = {
    "ctc": "a CTC head over label sequences is not a classifier of frames or utterance means, so no logistic-"
           "regression reference covers it, and its objective is not convex in the head's weights (no unique optimum "
           "to solve for)",
    "verification": "it is scored by the equal error rate of cosine-scored trials of held-out speakers, not by the "
                    "speaker classification its head trains on, so no logistic-regression reference covers it (and "
                    "the x-vector head is not linear)"}
COLUMNS = ("run_id", "upstream", "preset", "ckpt_hash", "task", "mode", "layer", "fraction", "seed", "budget", "converged",
           "steps", "probe_dev", "probe_test", "reference_dev", "reference_test", "reference_l2", "reference_iters",
           "reference_converged", "margin", "passes")


def exemption(task: TaskSpec) -> str | None:
    """Why `task` is exempt from the certificate (None: the reference covers it)."""
    if task.engine == "stacked":
        return None
    return EXEMPT_ENGINES.get(task.engine, f"its engine {task.engine!r} trains no classifier of rows that a "
                                           f"logistic-regression reference covers")


def exempt_tasks(tasks) -> dict[str, str]:
    """{task: reason} for the registered tasks of `tasks` (names) that the certificate exempts, sorted."""
    return {t: r for t in sorted(set(map(str, tasks))) if t in ALL_TASKS and (r := exemption(ALL_TASKS[t])) is not None}


def certifiable(task: str) -> bool:
    return task in ALL_TASKS and exemption(ALL_TASKS[task]) is None


@dataclass(frozen=True)
class Reference:
    l2: float
    dev: float
    test: float
    iters: int
    converged: bool  # the gradient norm reached the tolerance (not the iteration cap)


class LogisticLoss(torch.autograd.Function):
    """Mean cross-entropy of logits x @ W + b against labels y, with its gradient in closed form, in buffers the
    caller allocates once per solve: `z` (n, C) holds the logits, then the softmax, then (softmax - one-hot), and
    `minus_one` (n, 1) is -1 everywhere. A full-batch L-BFGS evaluation over all training frames then allocates
    nothing of the examples' size: autograd's cross-entropy allocated and freed several (n, C) float64 tensors per
    evaluation, each mapped and faulted in a page at a time (a quarter of a from-scratch certificate's CPU time was the
    kernel's; docs/benchmark.md). The same value and gradient as F.cross_entropy (tests/test_convergence.py). The value
    is summed in float64 whatever the logits' dtype, so that a float32 solve's line search sees decreases below a
    float32 scalar's resolution (downstream.solver.FLOAT32_GRAD_FLOOR)."""

    @staticmethod
    def forward(ctx, W: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor,
                minus_one: torch.Tensor) -> torch.Tensor:
        torch.addmm(b, x, W, out=z)
        picked = z.gather(1, y[:, None])  # the true class's logit
        top = z.amax(1, keepdim=True)
        z.sub_(top).exp_()
        total = z.sum(1, keepdim=True)
        # logsumexp(z) - z_y, from the shifted exponentials, summed in float64
        loss = (top + total.log() - picked).sum(dtype=torch.float64) / len(z)
        z.div_(total).scatter_add_(1, y[:, None], minus_one)  # softmax - one-hot
        ctx.save_for_backward(x, z)
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, z = ctx.saved_tensors
        scale = float(grad) / len(z)  # the float64 value's gradient, applied in the logits' dtype
        # x^T z as (z^T x)^T: the same bits, and BLAS runs it faster on row-major x (n, D) (perf/certificate_starts.py
        # --compare kernels)
        return torch.mm(z.t(), x).t().contiguous().mul_(scale), z.sum(0).mul_(scale), None, None, None, None


def _fit(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, init: tuple[torch.Tensor, torch.Tensor] | None,
         rtol: float, max_iter: int, float32_phase: bool = True, inputs: torch.Tensor | None = None,
         casts: dict[torch.dtype, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
    """Multinomial logistic regression on x (n, D) by full-batch L-BFGS, solved in float64 to the relative tolerance
    of downstream.solver; (W, b, iterations of both phases, solved). A float32 phase goes first, until its gradient
    is within downstream.solver.FLOAT32_GRAD_FLOOR (cheaper matmuls); the float64 phase then solves from its point, and
    it alone decides `solved` and the tolerance: the same guarantee as float64 from the start. `float32_phase=False`:
    float64 throughout (`perf/certificate_starts.py --compare precision` measures both).
    `inputs`: the mean of x x^T with a constant 1 appended (downstream.solver.Kronecker.mean_input_moment): both phases
    then solve in the variables of the head's Kronecker curvature at the start (the same optimum and tolerance, fewer
    iterations); None solves in the weights themselves (`perf/certificate_starts.py --compare curvature`).
    `casts`: x in each phase's dtype, filled on first use and kept by the caller for its next point (a reference's
    points share one float64 copy of x instead of converting it at every point: the same values)."""
    W = torch.zeros(x.shape[1], n_classes, dtype=torch.float32, device=x.device) if init is None else init[0]
    b = torch.zeros(n_classes, dtype=torch.float32, device=x.device) if init is None else init[1]
    total = 0
    phases = PHASES if float32_phase else PHASES[-1:]
    # subnormal softmax probabilities of large logits (weak L2) as zero: the same values, off the CPU's slow path
    with flush_denormals():
        casts = {} if casts is None else casts
        for dtype, floor, patience in phases:
            xd = casts.get(dtype)
            if xd is None:
                xd = casts[dtype] = x.to(dtype)
            W = W.to(dtype).clone().requires_grad_(True)
            b = b.to(dtype).clone().requires_grad_(True)
            z = torch.empty(len(y), n_classes, dtype=dtype, device=x.device)  # one evaluation's buffers, reused by all
            minus_one = torch.full((len(y), 1), -1.0, dtype=dtype, device=x.device)
            pre = None
            if inputs is not None:  # the curvature at the phase's current W, b (Preconditioned calls it)
                def curvature(W: torch.Tensor = W, b: torch.Tensor = b, xd: torch.Tensor = xd) -> Kronecker:
                    return Kronecker.at(inputs, (c @ W + b for c in _chunks(xd)), l2).to(W.dtype)
                pre = Preconditioned(W, b, curvature)
            iters, ok = solve_l2([W, b], lambda: [LogisticLoss.apply(W, b, xd, y, z, minus_one)], [W], l2, rtol,
                                 max_iter, floor=floor, patience=patience,
                                 precondition=pre)
            total += iters
            W, b = W.detach(), b.detach()
    return W, b, total, ok


def _chunks(x: torch.Tensor, rows: int = 65536) -> list[torch.Tensor]:
    """x's rows a chunk at a time (the curvature's sums over all training frames)."""
    return [x[a: a + rows] for a in range(0, len(x), rows)]


Solutions = dict[float, tuple[torch.Tensor, torch.Tensor]]  # {l2: (W, b)} of one reference's grid


def fit_reference(train: tuple[torch.Tensor, torch.Tensor], dev: tuple[torch.Tensor, torch.Tensor],
                  test: tuple[torch.Tensor, torch.Tensor], n_classes: int, grid: tuple[float, ...] = L2_GRID,
                  rtol: float = CERTIFICATE_RTOL, max_iter: int = 5000, starts: Solutions | None = None,
                  solutions: Solutions | None = None, float32_phase: bool = True,
                  precondition: bool = True) -> Reference:
    """Fit one regression per L2 strength (strongest first, each warm-starting the next); keep the best on dev.

    `starts`: the solutions of a neighbouring problem (the same labels and training subset, another mix of the same
    hidden states) to start each L2 point from instead of the previous point's solution. Every point is solved to
    the relative tolerance, within rtol x |W| of its unique optimum whatever the start (downstream.solver), so a
    start only changes how many iterations that takes. `solutions` (a dict) receives this fit's own. `precondition`:
    every point solved in the variables of the head's Kronecker curvature (`_fit`), the same optimum."""
    x, y = train
    # the inputs' second moment, the same at every point; float32 products (a preconditioner's precision decides how
    # fast a solve gets there, not where it ends)
    inputs = Kronecker.mean_input_moment(c.float() for c in _chunks(x)) if precondition else None
    best: Reference | None = None
    init = None
    casts: dict[torch.dtype, torch.Tensor] = {}  # x in each phase's dtype, shared by the points
    for l2 in sorted(grid, reverse=True):
        if starts is not None and l2 in starts:
            init = starts[l2]
        W, b, iters, ok = _fit(x, y, n_classes, l2, init, rtol, max_iter, float32_phase, inputs, casts)
        init = (W, b)
        if solutions is not None:
            solutions[l2] = (W, b)
        d = _accuracy(dev[0], dev[1], W, b)
        if best is None or d > best.dev:
            best = Reference(l2, d, _accuracy(test[0], test[1], W, b), iters, ok)
    assert best is not None
    return best


@torch.no_grad()
def _accuracy(x: torch.Tensor, y: torch.Tensor, W: torch.Tensor, b: torch.Tensor, chunk: int = 65536) -> float:
    correct = 0
    for a in range(0, len(y), chunk):
        correct += int(((x[a: a + chunk].to(W.dtype) @ W + b).argmax(-1) == y[a: a + chunk]).sum())
    return correct / max(1, len(y))


ROWS_HINT = "run the benchmark that produced these rows first (it builds the cache)"


def cached_entries(cache_dir: Path, row: dict | pd.Series, corpus: Corpus,
                   task: TaskSpec | None = None) -> dict[str, CacheEntry]:
    """The cache entry of each probe split of `corpus` (its manifest as it is now; with `task`, the cache splits that
    task reads, e.g. speaker verification's trial utterances: TaskSpec.cache_splits) for the upstream checkpoint
    `row` ({upstream, preset, ckpt_hash}); of several, the one holding the most hidden states
    (benchmark.cache.reader). FileNotFoundError naming the entry asked for and --cache-dir when one is missing."""
    splits = task.cache_splits(corpus) if task is not None else {s: (s, None) for s in PROBE_SPLITS}
    return {s: find_entry(cache_dir, EntryQuery.for_split(corpus, name, row["upstream"], row["preset"], row["ckpt_hash"],
                                                          utts=utts), hint=ROWS_HINT)
            for s, (name, utts) in splits.items()}


# the perf scripts' --upstream, as cached_identity reads it
CACHED_UPSTREAM_HELP = ("name or name:preset of a cached upstream: its newest cache, or with name@HASH the cache of "
                        "checkpoint HASH (a row's ckpt_hash in runs.csv)")


def cached_identity(cache_dir: Path, spec: str, corpus: Corpus) -> dict[str, str]:
    """{upstream, preset, ckpt_hash} of the newest feature cache of upstream `spec` (`name` or `name:preset`,
    the name's default preset when none is given) on `corpus`'s train split (perf scripts: measure on whatever
    checkpoint the last run cached), or with `spec` ending in `@HASH` the cache of the checkpoint whose `ckpt_hash`
    (as runs.csv records it) is HASH. The preset and the split's manifest are matched: `mel` and `mel:stack3` share a
    directory prefix, and so do corpora of one name."""
    spec, _, ckpt_hash = spec.partition("@")
    upstream, preset = parse_spec(spec)
    query = EntryQuery.for_split(corpus, "train", upstream, preset, ckpt_hash or None)
    return find_entry(cache_dir, query, newest=True).identity


def cached_frames(cache_dir: Path, row: dict | pd.Series, corpus: Corpus,
                  task: TaskSpec | None = None) -> tuple[ArraySource, FrameRule]:
    """The cached probe splits (with `task`, the splits that task reads) of the upstream `row` ({upstream, preset,
    ckpt_hash}) on `corpus`, and the frame rule their hidden states were computed with: frame labels must be cut with
    that rule, not a default."""
    entries = cached_entries(cache_dir, row, corpus, task)
    return ArraySource({s: e.open() for s, e in entries.items()}), entries["train"].frame_rule


def cached_probe_inputs(cache_dir: Path, row: dict | pd.Series, corpus: Corpus,
                        task: TaskSpec) -> tuple[ArraySource | PooledSource, dict[str, SplitLabels]]:
    """What a frozen probe of `task` reads for the cached upstream `row` ({upstream, preset, ckpt_hash}) on `corpus`:
    its source (the cached frames of the splits it reads, or their utterance means), whitening fitted, and every
    split's labels cut with the cache's own frame rule (the perf scripts train probes on a main job's cache this
    way)."""
    frames, rule = cached_frames(cache_dir, row, corpus, task)
    source: ArraySource | PooledSource = PooledSource(frames) if task.pooled else frames
    source.whitening()
    return source, {s: split_labels(corpus, task.utterances(corpus, s), s, task.labels, rule) for s in PROBE_SPLITS}


class Certifier:
    """Loads one upstream checkpoint's cached splits at a time and fits references row by row (identical fits,
    e.g. the seeds of the 100 % fraction, are reused). The examples are the probes' own: the same sources,
    the same whitening (downstream.sources)."""

    def __init__(self, corpus: Corpus, cache_dir: Path, warm_starts: bool = True, device: torch.device | str = "cpu",
                 float32_phase: bool = True, precondition: bool = True) -> None:
        self.corpus, self.cache_dir, self.warm_starts = corpus, Path(cache_dir), warm_starts
        # where and how the fits are solved (fit_reference)
        self.device, self.float32_phase, self.precondition = torch.device(device), float32_phase, precondition
        self.utts = {s: corpus.utterances(s) for s in PROBE_SPLITS}
        self.frame_rule: FrameRule | None = None  # of the upstream loaded last (`sources`)
        self._sources: dict[tuple, tuple[ArraySource, PooledSource]] = {}
        self._whitened: dict[tuple[str, int], torch.Tensor] = {}  # of the upstream in `_sources` (`whitened`)
        self._fits: dict[tuple, Reference] = {}
        # the solutions of the last fit on each example set but the mix ({upstream, labels, level, training subset}):
        # the next mix of the same hidden states (a weighted-sum row of another seed, or after the last-layer row)
        # starts from them (`fit_reference`)
        self._solutions: dict[tuple, Solutions] = {}
        self._labels: dict[tuple, SplitLabels] = {}

    def labels(self, task: TaskSpec, split: str) -> SplitLabels:
        """A split's labels from the task's label source, cut with the frame rule of the upstream loaded last,
        computed once per source and frame rule (not once per fit)."""
        if self.frame_rule is None:
            raise RuntimeError("Certifier.labels: load an upstream's cache with sources(row) first (it sets the frame rule)")
        key = (task.labels.name, split, self.frame_rule)
        if key not in self._labels:
            self._labels[key] = split_labels(self.corpus, self.utts[split], split, task.labels, self.frame_rule)
        return self._labels[key]

    def sources(self, row: pd.Series) -> tuple[ArraySource, PooledSource]:
        key = (row["upstream"], row["preset"], str(row["ckpt_hash"]))
        if key not in self._sources:  # one upstream in memory at a time
            frames, self.frame_rule = cached_frames(self.cache_dir, row, self.corpus)
            self._sources = {key: (frames, PooledSource(frames))}
            self._whitened = {}
        return self._sources[key]

    def whitened(self, split: str, layer: int) -> torch.Tensor:
        """(frames, D) float32 whitened hidden state `layer` of `split` of the upstream loaded last, computed once per
        upstream (ArraySource.whitened) and read by every row of it rather than once per row: a pass of D x D products
        over the whole split, most of a 1 % row's fit. At most one upstream's frames in memory, released when the next
        loads (`sources`)."""
        frames = next(iter(self._sources.values()))[0]
        if (split, layer) not in self._whitened:
            self._whitened[split, layer] = frames.whitened(split, layer)
        return self._whitened[split, layer]

    def reference(self, row: pd.Series) -> Reference:
        task = get_task(row["task"])
        frames, pooled = self.sources(row)
        src = pooled if task.pooled else frames
        L = src.num_hidden_states
        ws = row["mode"] == "weighted_sum"
        layers = list(range(L)) if ws else [int(row["layer"])]
        weights = tuple(float(w) for w in str(row["layer_weights"]).split(";")) if ws else (1.0,)
        if len(weights) != len(layers):
            raise ValueError(f"run {row['run_id']}: {len(weights)} layer weights for {len(layers)} hidden states")
        sub = fraction_subset([u.speaker for u in self.utts["train"]], float(row["fraction"]), int(row["seed"]),
                              task.labels.closed_set)
        # the reference depends on the examples only: heads of one label source and level share it
        key = (row["upstream"], row["preset"], str(row["ckpt_hash"]), task.labels.name, task.level, tuple(layers),
               weights, tuple(sorted(sub.indices)))
        if key not in self._fits:
            idx = list(sub.indices)
            data = []
            for s in PROBE_SPLITS:
                y = torch.from_numpy(Targets(task, self.labels(task, s), src.lengths(s), s).rows)
                sel = None  # the training subset's rows, selected before the mix (the same values: it is elementwise)
                if s == "train":
                    sel = torch.from_numpy(flat_rows(frames.splits[s].offsets, idx) if task.frame_targets
                                           else np.asarray(idx, dtype=np.int64))
                    y = y.index_select(0, sel)
                if task.frame_targets:  # whitened frames in memory, float32: this path's own copy
                    parts = [self.whitened(s, k) for k in layers]
                else:
                    x = pooled.examples(s)
                    parts = [x[pooled.position(k)] for k in layers]
                if sel is not None:
                    parts = [p.index_select(0, sel) for p in parts]
                mixed = sum(w * p for w, p in zip(weights, parts))  # the probe's own mix
                data.append((mixed.to(self.device), y.to(self.device)))
            grid = UTT_L2_GRID if task.pooled else L2_GRID
            near = key[:5] + key[7:]  # the same examples but for the layers read and their mix
            solutions: Solutions = {}
            self._fits[key] = fit_reference(*data, len(task.labels.classes(self.corpus)), grid,
                                            starts=self._solutions.get(near) if self.warm_starts else None,
                                            solutions=solutions, float32_phase=self.float32_phase,
                                            precondition=self.precondition)
            self._solutions[near] = solutions
        return self._fits[key]


def certify(results_dir: Path, corpus: Corpus | list[Corpus], cache_dir: Path, log=print, progress: bool = True,
            workers: int = 2, device: torch.device | str | None = None) -> pd.DataFrame:
    """Fit the references of every frozen-probe row on `corpus` (one, or several: the main job's speech and keyword
    corpora) at its (upstream, task)'s largest and smallest fraction and write results_dir/convergence.csv; returns
    the table of those rows.

    `workers` threads certify one upstream checkpoint of one corpus each at a time (its cached splits loaded once; its
    rows' fits start from each other's solutions), the costliest first from ONE queue for every corpus given (a
    corpus's cheap checkpoints fill the last minutes of another's), with the torch threads shared out between them;
    `device`: where the fits are solved (default: CUDA when present, core.repro.default_device)."""
    corpora = {c.name: c for c in ([corpus] if isinstance(corpus, Corpus) else corpus)}
    every = standing_rows(read_runs(Path(results_dir) / "runs.csv"))  # a superseded row is not certified
    for name in corpora:
        for task, reason in exempt_tasks(every.loc[every["corpus"] == name, "task"]).items():
            log(f"{task}: exempt from the certificate: {reason}")
    eligible = certifiable_rows(every)
    runs = eligible[eligible["corpus"].isin(list(corpora))]
    if runs.empty:
        raise ValueError(f"{results_dir}/runs.csv: no frozen-probe rows on corpus {', '.join(corpora)} to certify")
    if workers < 1:
        raise ValueError(f"certify: workers must be >= 1, got {workers}")
    grp = runs.groupby(["corpus", "upstream", "preset", "ckpt_hash", "task"])["fraction"]
    lo, hi = grp.transform("min"), grp.transform("max")
    runs = runs[(runs["fraction"] == lo) | (runs["fraction"] == hi)].assign(_largest=(runs["fraction"] == hi))
    runs = runs.sort_values(["corpus", "upstream", "preset", "ckpt_hash", "task", "fraction", "mode", "layer", "seed"])
    corpus_of = dict(zip(runs["run_id"], runs["corpus"]))
    path = Path(results_dir) / CONVERGENCE_FILE
    # the rows of the other corpora certified by an earlier call stay in the file
    kept = list(_previous(path, eligible[~eligible["corpus"].isin(list(corpora))]).values())
    done = _previous(path, runs)  # resumable: rows certified by an interrupted call are kept
    out = [done[rid] for rid in runs["run_id"] if rid in done]
    todo = runs[~runs["run_id"].isin(done)]
    if out:
        log(f"{path}: {len(out)} rows already certified, {len(todo)} to go")
    from tqdm import tqdm

    # a fixed-layer reference depends on the examples only (not on the head): a phone_1hidden row takes the fit of
    # the phone_linear row of its layer, fraction and seed, also when that row was certified by an earlier call
    def examples(row) -> tuple:
        return (corpus_of[row["run_id"]], *_examples_key(row))

    fitted = {examples(o): o for o in out if o["mode"] in ("last", "layer")}
    lock = threading.Lock()
    bar = tqdm(total=len(todo), desc="certificate", unit="row", disable=not progress)
    dev = torch.device(device) if device is not None else default_device()

    def one_checkpoint(rows: pd.DataFrame) -> None:
        """One upstream checkpoint's rows on one corpus: the smallest fractions' first (seconds each), then the largest
        (the costly fits: minutes on 2 cores for a frame-level row), so an interrupted call has certified as many as it
        could."""
        cert = Certifier(corpora[rows["corpus"].iloc[0]], cache_dir, device=dev)
        for _, r in rows.sort_values("_largest", kind="stable").iterrows():
            t0 = time.perf_counter()
            with lock:
                same = fitted.get(examples(r)) if r["mode"] in ("last", "layer") else None
            ref = cert.reference(r) if same is None else Reference(
                float(same["reference_l2"]), float(same["reference_dev"]) / 100, float(same["reference_test"]) / 100,
                int(same["reference_iters"]), bool(same["reference_converged"]))
            row = _certified(r, ref)
            with lock:
                out.append(row)
                if r["mode"] in ("last", "layer"):
                    fitted.setdefault(examples(row), row)
                atomic_write_text(path, pd.DataFrame(kept + out, columns=list(COLUMNS)).to_csv(index=False))  # every row
                bar.update()
                log(f"{r['upstream']} {r['task']} {r['mode']} f={r['fraction']:g} seed {r['seed']}: probe "
                    f"{row['probe_test']:.2f} reference {row['reference_test']:.2f} ({time.perf_counter() - t0:.1f} s)")

    # the costliest checkpoints first (frame-level rows at the largest fraction), so that the workers finish together
    jobs = [g for _, g in todo.groupby(["corpus", "upstream", "preset", "ckpt_hash"], sort=False)]
    jobs.sort(key=lambda g: -int((g["_largest"] & g["task"].map(lambda t: get_task(t).frame_targets)).sum()))
    n = workers if dev.type == "cpu" else 1  # one device: one fit at a time
    try:
        with torch_threads(max(1, torch.get_num_threads() // n)):
            run_parallel(one_checkpoint, [(g,) for g in jobs], n, "certify")
    finally:
        bar.close()
    order = {rid: i for i, rid in enumerate(runs["run_id"])}
    table = pd.DataFrame(sorted(out, key=lambda o: order[o["run_id"]]), columns=list(COLUMNS))
    atomic_write_text(path, pd.DataFrame(kept + table.to_dict("records"), columns=list(COLUMNS)).to_csv(index=False))
    return table


def certifiable_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """The rows (of runs.csv) the certificate covers: frozen probes of a certifiable task (`exemption`)."""
    return runs[runs["task"].map(certifiable) & runs["mode"].isin(["last", "layer", "weighted_sum"])]


def _certified(r: pd.Series, ref: Reference) -> dict:
    """The certificate's line for run `r` against its reference."""
    margin = MARGIN_LARGEST if r["_largest"] else MARGIN_SMALLEST
    probe_test = 100 * float(r["test_metric"])
    return {"run_id": r["run_id"], "upstream": r["upstream"], "preset": r["preset"], "ckpt_hash": r["ckpt_hash"],
            "task": r["task"], "mode": r["mode"], "layer": int(r["layer"]), "fraction": float(r["fraction"]),
            "seed": int(r["seed"]), "budget": r["budget"], "converged": bool(r["converged"]), "steps": int(r["steps"]),
            "probe_dev": round(100 * float(r["dev_metric"]), 2), "probe_test": round(probe_test, 2),
            "reference_dev": round(100 * ref.dev, 2), "reference_test": round(100 * ref.test, 2),
            "reference_l2": ref.l2, "reference_iters": ref.iters, "reference_converged": ref.converged,
            "margin": margin, "passes": passes(probe_test, 100 * ref.test, margin)}


def _examples_key(row) -> tuple:
    """What a fixed-layer row's reference is fitted on: the upstream checkpoint, the labels and their level, the
    layer and the training subset (fraction and seed)."""
    task = get_task(row["task"])
    return (row["upstream"], row["preset"], str(row["ckpt_hash"]), task.labels.name, task.level, int(row["layer"]),
            float(row["fraction"]), int(row["seed"]))


def passes(probe_test: float, reference_test: float, margin: float) -> bool:
    """probe_test >= reference_test - margin on the accuracies as the table shows them (%, 2 decimals): a probe
    exactly `margin` below passes, which float arithmetic (100 x 0.13 vs 100 x 0.14 - 1) would otherwise decide."""
    return round(float(probe_test), 2) >= round(round(float(reference_test), 2) - float(margin), 2)


def _previous(path: Path, runs: pd.DataFrame) -> dict[str, dict]:
    """Rows of an earlier convergence.csv (same columns) for runs still in runs.csv with the same probe result (dev,
    test, steps: a run re-trained since, which changes its weighted-sum mix too, is certified again), by run_id."""
    if not path.is_file():
        return {}
    try:
        old = pd.read_csv(path, dtype={"run_id": str, "ckpt_hash": str})
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return {}
    if list(old.columns) != list(COLUMNS):
        return {}
    # the pass flag is recomputed by today's rule (rows written before it compared unrounded floats)
    now = {r["run_id"]: (round(100 * float(r["dev_metric"]), 2), round(100 * float(r["test_metric"]), 2), int(r["steps"]))
           for r in runs.to_dict("records")}
    return {r["run_id"]: {**r, "passes": passes(r["probe_test"], r["reference_test"], r["margin"])}
            for r in old.to_dict("records")
            if now.get(r["run_id"]) == (round(float(r["probe_dev"]), 2), round(float(r["probe_test"]), 2), int(r["steps"]))}


@dataclass(frozen=True)
class CertificateSummary:
    """The certificate's headline numbers, shared by REPORT.md's paragraph and the HTML site."""
    passing: int
    rows: int
    mean_gap: float  # probe - reference, test points
    capped: int  # references stopped at the iteration cap
    nonlinear: tuple[str, ...]  # tasks whose head is not linear (held to the regression as a lower bound)
    failing: pd.DataFrame  # the rows that do not pass
    failing_selected: int  # failing rows that score at least the reference on dev


def certificate_summary(table: pd.DataFrame) -> CertificateSummary:
    fails = table[~table["passes"]]
    return CertificateSummary(
        passing=int(table["passes"].sum()), rows=len(table),
        mean_gap=float((table["probe_test"] - table["reference_test"]).mean()),
        capped=int((~table["reference_converged"]).sum()),
        nonlinear=tuple(sorted(t for t in table["task"].unique() if t in ALL_TASKS and not ALL_TASKS[t].linear)),
        failing=fails, failing_selected=int((fails["probe_dev"] >= fails["reference_dev"]).sum()))


def exempt_markdown(exempt: dict[str, str]) -> str:
    """The exempt tasks and why, one sentence each."""
    return "".join(f"\n`{t}` is exempt from the certificate: {reason}.\n" for t, reason in exempt.items())


def summary_markdown(table: pd.DataFrame, exempt: dict[str, str] | None = None) -> str:
    """The report's paragraph: how many cells pass, every failing one, and the exempt tasks (`exempt_tasks`)."""
    if table.empty:
        return "No certificate rows.\n" + exempt_markdown(exempt or {})
    s = certificate_summary(table)
    lines = [f"{s.passing}/{s.rows} frozen-probe rows pass (probe test >= reference test - "
             f"{MARGIN_LARGEST:g} point at the largest fraction, - {MARGIN_SMALLEST:g} at the smallest); mean probe - "
             f"reference gap {s.mean_gap:+.2f} points; {s.capped} references stopped at the iteration cap.\n"]
    if s.nonlinear:
        lines.append(f"\n{', '.join(s.nonlinear)} (not a linear head: no unique optimum to solve for) is held to the "
                     f"logistic regression on the same examples as a lower bound: its ReLU layer can represent any "
                     f"linear map of the examples, so converged it fits them at least as well.\n")
    if len(s.failing):
        lines.append(f"\nFailing rows ({s.failing_selected} of {len(s.failing)} score at least the reference on dev: "
                     f"the probe picked another point on the same dev data, a model-selection difference rather than an "
                     f"unconverged probe):\n\n| upstream | task | mode | fraction | seed | probe dev | reference dev | "
                     f"probe test | reference test |\n|---|---|---|---|---|---|---|---|---|\n")
        lines += [f"| {r.upstream}:{r.preset} | {r.task} | {r.mode} | {r.fraction:g} | {r.seed} | {r.probe_dev:.2f} | "
                  f"{r.reference_dev:.2f} | {r.probe_test:.2f} | {r.reference_test:.2f} |\n"
                  for r in s.failing.itertuples()]
    return "".join(lines) + exempt_markdown(exempt or {})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Certify that the frozen probes of a results directory converged.")
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument("--corpus", default="data/synth", help="the prepared corpus directory the rows were trained on")
    p.add_argument("--cache-dir", type=Path, default=Path("cache/features"))
    p.add_argument("--workers", type=int, default=2, help="upstream checkpoints certified at once, in threads")
    p.add_argument("--device", default=None, help="where the fits are solved (default: cuda when present, else cpu)")
    a = p.parse_args(argv)
    try:
        corpus = load_corpus(a.corpus)
        table = certify(a.results_dir, corpus, a.cache_dir, workers=a.workers, device=a.device)
        runs = read_runs(Path(a.results_dir) / "runs.csv")
        exempt = exempt_tasks(runs.loc[runs["corpus"] == corpus.name, "task"])
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary_markdown(table, exempt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
