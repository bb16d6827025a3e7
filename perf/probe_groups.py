"""Time one group of frozen probes (one upstream, task and mode; the main job's fractions x seeds) trained as one
batched model, and with --alone the same probes one at a time, in the same process; print both and their ratio.

    .venv/bin/python perf/probe_groups.py --upstream mockingjay --task phone_linear --mode weighted_sum --alone \
        --out results/probe_groups.json
    .venv/bin/python perf/probe_groups.py --upstream mockingjay --task phone_1hidden --mode last --float32

--float32 also trains the group with float32 matmuls (a group computes in bfloat16 where the hardware has bfloat16
matrix units, core.repro.fast_bfloat16) and compares time and test accuracy. --streamed also trains the group
with a memory budget of 0 (every batch read from the cache again) and compares. --per-evaluation trains an L2-path group
(speaker_utterance, keywords) 3 more times as it is and 3 times converting its examples to float64 at every evaluation
of the loss, alternating, and compares; --history N the same with N L-BFGS pairs instead of 30; --weights the same
solved in the head's own weights instead of its Kronecker curvature's variables (downstream.solver.Kronecker);
--precondition trains the group with that L2Path.precondition instead of the main job's ("fixed_input": a weighted sum
solved in the weights throughout, as before "finish").
--phases prints an L2-path group's points phase by phase (the float32 and the float64 phase of downstream.solver.PHASES:
L2 strength, iterations, seconds; with one path, e.g. --fractions 1 --seeds 1, the dev score after each point);
--float64 also trains the group with every point in float64 only (the path before its float32 phase) and --no-flush
with the float32 phase's subnormals computed as such (not flushed to zero), each once, and compares; --path-threads N
evaluates a path's parts on N threads (downstream.path.PATH_THREADS), e.g. on a larger corpus:

    .venv/bin/python perf/probe_groups.py --corpus data/synth_train48 --upstream mockingjay --task speaker_utterance \
        --mode weighted_sum --fractions 1 --seeds 1 --path-threads 1 --phases --float64 --no-flush
--mapped first trains the group with every freed block of 4 MiB or more unmapped at once
(core.allocator.map_large_blocks, on a fresh heap), then as the harness does (freed blocks kept in the heap), and
compares time and system CPU time. --broadcast also trains the group with dev and test scored through torch.matmul's
broadcast of the rows all probes share, and compares. --decode also trains it with dev and test decoded as they were
(float32 logits, Tensor.argmax), and compares. Tasks of whole utterances train as a group too (downstream.utterances),
e.g. the main job's phone_ctc sweep:

    .venv/bin/python perf/probe_groups.py --upstream mockingjay --task phone_ctc --mode weighted_sum \
        --fractions 0.05,1 --seeds 1 --alone --streamed

Reads the feature cache the main job built (run it first): the upstream's newest cache, or with --upstream NAME@HASH
the cache of that checkpoint (runs.csv's ckpt_hash). 1 torch thread unless --threads. Prints JSON (with the
seconds a frozen group spent scoring dev, and how many times it did); --out also writes it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmark.plan.presets import main_job  # noqa: E402
from benchmark.plan.runs import parse_fractions  # noqa: E402
from benchmark.report.convergence import CACHED_UPSTREAM_HELP, cached_identity, cached_probe_inputs  # noqa: E402
from core.allocator import keep_freed_blocks, map_large_blocks  # noqa: E402
from core.io import atomic_write_json  # noqa: E402
from core.repro import provenance  # noqa: E402
from corpora.manifest import load_corpus  # noqa: E402
from downstream.config import PRECONDITIONS  # noqa: E402
from downstream.data import num_classes  # noqa: E402
from downstream.fractions import fraction_subset  # noqa: E402
from downstream.groups import StackedModel  # noqa: E402
from downstream.modes import LayerMode  # noqa: E402
from downstream.probe import ProbeSpec  # noqa: E402
from downstream.tasks import ALL_TASKS  # noqa: E402
from downstream.train import train_probe, train_probes  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--upstream", default="mockingjay", help=CACHED_UPSTREAM_HELP)
    p.add_argument("--task", default="phone_linear",
                   choices=list(ALL_TASKS))
    p.add_argument("--mode", default="weighted_sum", choices=("last", "weighted_sum"))
    p.add_argument("--fractions", default="0.01,0.05,0.125,1")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--alone", action="store_true", help="also train each probe alone and compare")
    p.add_argument("--float32", action="store_true", help="also train the group with float32 matmuls and compare")
    p.add_argument("--streamed", action="store_true", help="also train the group reading every batch from the cache")
    p.add_argument("--mapped", action="store_true", help="also train the group with large freed blocks unmapped")
    p.add_argument("--broadcast", action="store_true",
                   help="also train the group with dev and test scored through torch.matmul's broadcast of the shared "
                        "rows (not one GEMM: downstream.stacked.shared_matmul) and compare")
    p.add_argument("--decode", action="store_true",
                   help="also train the group with dev and test decoded as Tensor.argmax of float32 logits (not the "
                        "first maximum's index by torch.max on the compute dtype's logits) and compare")
    p.add_argument("--per-evaluation", action="store_true",
                   help="also train the group (an L2-path task) converting its training subset to float64 at every "
                        "evaluation of the loss (downstream.path.PATH_HELD_BYTES 0), not once per path, and compare")
    p.add_argument("--history", type=int,
                   help="also train the group (an L2-path task) with this many L-BFGS pairs instead of "
                        "downstream.solver.HISTORY, alternating, and compare")
    p.add_argument("--weights", action="store_true",
                   help="an L2-path group: also train it 3 times solved in the head's own weights (no curvature "
                        "preconditioning) and 3 times as it is, alternating, and compare")
    p.add_argument("--precondition", choices=PRECONDITIONS,
                   help="an L2-path group: solve it with this L2Path.precondition instead of the main job's")
    p.add_argument("--phases", action="store_true",
                   help="an L2-path group: print its points phase by phase (L2 strength, iterations, seconds; the dev "
                        "score after each point where the group is one path)")
    p.add_argument("--float64", action="store_true",
                   help="an L2-path group: also train it with every point solved in float64 only, and compare")
    p.add_argument("--no-flush", action="store_true",
                   help="an L2-path group: also train it without flushing the float32 phase's subnormals, and compare")
    p.add_argument("--path-threads", type=int,
                   help="threads that evaluate an L2 path's parts (downstream.path.PATH_THREADS; default: its own rule)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--corpus", default="data/synth")
    p.add_argument("--cache-dir", type=Path, default=Path("cache/features"))
    p.add_argument("--out", type=Path, help="also write the JSON here (default: print only)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    corpus = load_corpus(a.corpus)
    task = ALL_TASKS[a.task]
    try:  # a bad --fractions, no cache entry for a split, or an unknown upstream/preset
        fractions = parse_fractions(a.fractions)
        row = cached_identity(a.cache_dir, a.upstream, corpus)
        source, labels = cached_probe_inputs(a.cache_dir, row, corpus, task)  # whitening fitted here: not timed
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    speakers = [u.speaker for u in corpus.utterances("train")]
    specs = [ProbeSpec(fraction_subset(speakers, f, seed, task.labels.closed_set).indices, seed)
             for f in fractions for seed in range(a.seeds)]
    cfg, mode, n_cls = main_job().probe_config(a.task, False), LayerMode(a.mode), num_classes(corpus, task)
    if a.precondition is not None:
        cfg = cfg.with_fields(precondition=a.precondition)
    mapped = None
    if a.mapped:  # first, on a fresh heap: once the heap holds freed chunks, later blocks come from them whatever the rule
        map_large_blocks()
        t0, sys0 = time.perf_counter(), os.times().system
        mapped = train_probes(task, mode, source, labels, specs, n_cls, cfg)
        mapped_seconds, mapped_system = time.perf_counter() - t0, os.times().system - sys0
    keep_freed_blocks()  # the harness's allocator rule while probes train (core.allocator.reuse_freed_blocks)
    import downstream.path  # (main imports the engine's modules it patches where it needs them)

    if a.path_threads is not None:
        downstream.path.PATH_THREADS = a.path_threads
    dev = [0.0, 0]  # seconds in the frozen group's dev scoring, and its calls
    phases: list[dict] = []  # an L2 path's solves, phase by phase
    scores: list[float] = []  # an L2 path's scores: dev after each point, then test
    with mock.patch.object(StackedModel, "score", timed(StackedModel.score, dev)), \
            mock.patch.object(downstream.path, "solve_l2", logged(downstream.path.solve_l2, phases)), \
            mock.patch.object(downstream.path, "_score", kept(downstream.path._score, scores)):
        t0, sys0 = time.perf_counter(), os.times().system
        group = train_probes(task, mode, source, labels, specs, n_cls, cfg)
    out = {"upstream": f"{row['upstream']}:{row['preset']}", "ckpt_hash": row["ckpt_hash"],  # the cache measured
           "task": a.task, "mode": a.mode, "probes": len(specs),
           "threads": a.threads, "group_seconds": round(time.perf_counter() - t0, 1),
           "group_system_seconds": round(os.times().system - sys0, 1),
           "dev_seconds": round(dev[0], 2), "dev_scorings": dev[1],
           "test": [round(100 * r.test_metric, 2) for r in group], "dev": [round(100 * r.dev_metric, 2) for r in group],
           "steps": [r.steps for r in group]}
    if a.phases:
        out["phases"] = phases
        if len(group) == 1:  # one path: its dev score after each point (the float64 phase ends a point), then test
            ends = [ph for ph in phases if ph["dtype"] == "float64"]
            for ph, score in zip(ends, scores[:-1]):
                ph["dev"] = round(100 * score, 2)
    if a.float64:  # the path before its float32 phase: every point in float64 alone
        with mock.patch.object(downstream.path, "PHASES", downstream.path.PHASES[-1:]):
            compare(out, "float64", group, lambda: train_probes(task, mode, source, labels, specs, n_cls, cfg))
    if a.no_flush:  # the float32 phase with its subnormals computed as such
        with mock.patch.object(downstream.path, "_arithmetic", lambda dtype: contextlib.nullcontext()):
            compare(out, "no_flush", group, lambda: train_probes(task, mode, source, labels, specs, n_cls, cfg))
    if mapped is not None:
        out["mapped_seconds"] = round(mapped_seconds, 1)
        out["mapped_system_seconds"] = round(mapped_system, 1)
        out["mapped_over_group"] = round(out["mapped_seconds"] / out["group_seconds"], 2)
        out["mapped_same_rows"] = same_rows(group, mapped)
    if a.alone:
        t0 = time.perf_counter()
        alone = [train_probe(task, mode, source, labels, list(s.train_idx), n_cls, cfg, s.seed) for s in specs]
        out["alone_seconds"] = round(time.perf_counter() - t0, 1)
        out["alone_over_group"] = round(out["alone_seconds"] / out["group_seconds"], 2)
        out["same_rows"] = same_rows(group, alone)
    if a.streamed:
        compare(out, "streamed", group, lambda: train_probes(task, mode, source, labels, specs, n_cls, cfg, memory=0))
    if a.broadcast:
        import downstream.stacked

        with mock.patch.object(downstream.stacked, "shared_matmul", torch.matmul):
            compare(out, "broadcast", group, lambda: train_probes(task, mode, source, labels, specs, n_cls, cfg))
    if a.decode:
        from dataclasses import replace

        from downstream.stacked import StackedHeads

        forward = StackedHeads.forward

        def float32_logits(self, x, params=None, float32=True):
            return forward(self, x, params, True)

        with mock.patch.object(StackedHeads, "forward", float32_logits):  # the decode as it was: argmax of float32
            old_task = replace(task, decode=lambda logits: logits.argmax(-1))
            compare(out, "decode", group, lambda: train_probes(old_task, mode, source, labels, specs, n_cls, cfg))
    def train(c=cfg):
        return train_probes(task, mode, source, labels, specs, n_cls, c)

    if a.per_evaluation:
        alternate(out, "per_evaluation", group, train,
                  under(lambda: mock.patch.object(downstream.path, "PATH_HELD_BYTES", 0), train))
    if a.history is not None:
        import functools

        solve = functools.partial(downstream.path.solve_l2, history=a.history)
        other = alternate(out, f"history_{a.history}", group, train,
                          under(lambda: mock.patch.object(downstream.path, "solve_l2", solve), train))
        out[f"history_{a.history}_test"] = [round(100 * r.test_metric, 2) for r in other]
        out[f"history_{a.history}_steps"] = [r.steps for r in other]
    if a.weights:  # the path solved in the head's own weights (L2Path.precondition 'none') against its curvature's
        other = alternate(out, "weights", group, train, lambda: train(cfg.with_fields(precondition="none")))
        out["weights_test"] = [round(100 * r.test_metric, 2) for r in other]
        out["weights_steps"] = [r.steps for r in other]
    if a.float32:
        import downstream.groups

        with mock.patch.object(downstream.groups, "fast_bfloat16", lambda device: False):
            compare(out, "float32", group, train)
        out["bfloat16"] = downstream.groups.fast_bfloat16(torch.device("cpu"))
    out["provenance"] = provenance("cpu")
    out["command"] = " ".join(["python", "perf/probe_groups.py", *(argv if argv is not None else sys.argv[1:])])
    print(json.dumps({k: v for k, v in out.items() if k != "provenance"}))
    if a.out is not None:
        atomic_write_json(a.out, out)
    return 0


def timed(method, spent: list):
    """`method` that also adds its seconds and one call to `spent` ([seconds, calls])."""
    def wrapper(self, *args):
        t0 = time.perf_counter()
        try:
            return method(self, *args)
        finally:
            spent[0] += time.perf_counter() - t0
            spent[1] += 1
    return wrapper


def compare(out: dict, name: str, group: list, train) -> list:
    """Train the group the other way (`train()`), and record its seconds, their ratio to the group's, whether its
    rows are the group's, and its test scores and steps (where they differ); its rows."""
    t0 = time.perf_counter()
    other = train()
    out[f"{name}_seconds"] = round(time.perf_counter() - t0, 1)
    out[f"{name}_over_group"] = round(out[f"{name}_seconds"] / out["group_seconds"], 2)
    out[f"{name}_same_rows"] = same_rows(group, other)
    out[f"{name}_test"] = [round(100 * r.test_metric, 2) for r in other]
    out[f"{name}_steps"] = [r.steps for r in other]
    return other


def kept(score, scores: list):
    """downstream.path._score that also appends each score it returns to `scores`."""
    def wrapper(*args, **kw):
        value = score(*args, **kw)
        scores.append(value)
        return value
    return wrapper


def logged(solve, phases: list):
    """downstream.solver.solve_l2 that also appends each solve's phase (dtype), L2 strength, iterations, whether it
    reached its tolerance and seconds to `phases`."""
    def wrapper(params, data_loss, penalised, l2, *args, **kw):
        t0 = time.perf_counter()
        iters, ok = solve(params, data_loss, penalised, l2, *args, **kw)
        phases.append({"dtype": str(params[0].dtype).removeprefix("torch."), "l2": l2, "iterations": iters,
                       "solved": ok, "seconds": round(time.perf_counter() - t0, 2)})
        return iters, ok
    return wrapper


def alternate(out: dict, name: str, group: list, train, other, rounds: int = 3) -> list:
    """Train the group `rounds` more times as it is (`train()`) and `rounds` times the other way (`other()`),
    alternating which goes first (the first training of a process is slower), and record both lists of seconds, their
    ratio and whether the other way's rows are the group's; return the other way's rows."""
    plain, changed, other_rows = [], [], []
    for r in range(rounds):
        for way in ((other, train) if r % 2 else (train, other)):
            t0 = time.perf_counter()
            rows = way()
            (changed if way is other else plain).append(round(time.perf_counter() - t0, 2))
            if way is other:
                out[f"{name}_same_rows"] = out.get(f"{name}_same_rows", True) and same_rows(group, rows)
                other_rows = rows
    out[f"{name}_plain_seconds"], out[f"{name}_seconds"] = plain, changed
    out[f"{name}_over_plain"] = round(sum(changed) / sum(plain), 2)
    return other_rows


def under(patch, train):
    """`train`, run under the context manager `patch()` makes."""
    def run():
        with patch():
            return train()
    return run


def same_rows(a, b) -> bool:
    """Whether two trainings of the same probes gave every probe the same dev and test score and steps."""
    return all((x.dev_metric, x.test_metric, x.steps) == (y.dev_metric, y.test_metric, y.steps) for x, y in zip(a, b))


if __name__ == "__main__":
    sys.exit(main())
