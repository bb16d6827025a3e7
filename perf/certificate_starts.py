"""What the convergence certificate's solver choices save: the references of one upstream's rows at the largest label
fraction (the costly fits), fitted two ways side by side in one process, alternating row by row.

--compare starts (default): cold (each L2 path from zeros) against the certificate's warm starts (each row's L2 points
start from the solutions of the row fitted before it on the same examples but for the mix of hidden states: the
last-layer row, then the weighted-sum seeds).
--compare precision: float64 L-BFGS throughout against the certificate's float32 phase first (until the gradient
is within downstream.solver.FLOAT32_GRAD_FLOOR), then float64 to the same tolerance.
--compare gradient: the loss by torch's cross-entropy and autograd (every evaluation allocates its (n, C) tensors)
against the certificate's closed-form gradient in buffers allocated once per solve
(benchmark.report.convergence.LogisticLoss); large blocks mapped as in the harness (core.allocator). Prints the
process's system CPU time of each way too.
--compare loss: the float32 phase's loss value rounded to float32, which stalls L-BFGS near a gradient norm of 2e-4
(the floor it had), against the value summed in float64 with the phase run down to FLOAT32_GRAD_FLOOR; the float64
phase then finishes both to the same tolerance.
--compare kernels: each evaluation as it was (subnormal floats computed as such, the CPU's slow path: a weakly
regularised float32 fit's softmax underflows to them; the gradient's product as x^T z) against the certificate's
(subnormals flushed to zero, core.repro.flush_denormals; the product as (z^T x)^T, the same bits).
--compare evaluations: every evaluation L-BFGS asks for computed (the point a step ended on is asked for again by the
tolerance check and the next step's start, and the line search has usually evaluated it last) against the solver's
reuse of the latest evaluation at the same parameter bits (downstream.solver.solve_l2, `reuse`; the same bits).
--compare curvature: L-BFGS in the head's weights against the certificate's L-BFGS in the variables of the head's
Kronecker curvature at each point's start (downstream.solver.Kronecker; the same optimum and tolerance).

    .venv/bin/python perf/certificate_starts.py --upstream mockingjay --task phone_linear,speaker_frame \\
        --out results/certificate_starts.json
    .venv/bin/python perf/certificate_starts.py --compare precision --upstream mockingjay \\
        --task phone_linear,speaker_frame,speaker_utterance --threads 1 --out results/certificate_precision.json
    .venv/bin/python perf/certificate_starts.py --compare gradient --upstream mockingjay \
        --task phone_linear,speaker_frame --threads 1 --out results/certificate_gradient.json
    .venv/bin/python perf/certificate_starts.py --compare loss --upstream mockingjay \
        --task phone_linear,speaker_frame,speaker_utterance --threads 1 --out results/certificate_loss.json
    .venv/bin/python perf/certificate_starts.py --compare kernels --upstream mockingjay \
        --task phone_linear,speaker_frame --threads 1 --out results/certificate_kernels.json
    .venv/bin/python perf/certificate_starts.py --compare evaluations --upstream mockingjay \
        --task phone_linear,speaker_frame,speaker_utterance --threads 1 --out results/certificate_evaluations.json
    .venv/bin/python perf/certificate_starts.py --compare curvature --upstream mockingjay \
        --task phone_linear,speaker_frame,speaker_utterance --threads 1 --out results/certificate_curvature.json

Reads the rows of a results directory and the feature cache they were trained on (run the main job first). Prints
per row the seconds, L-BFGS iterations and reference scores of both ways, and the total ratio.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import time
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmark.record.aggregate import read_runs  # noqa: E402
import benchmark.report.convergence as convergence  # noqa: E402
from benchmark.report.convergence import Certifier  # noqa: E402
from core.allocator import map_large_blocks  # noqa: E402
from core.io import atomic_write_json  # noqa: E402
from core.repro import provenance  # noqa: E402
from corpora.manifest import load_corpus  # noqa: E402
from upstream.registry import parse_spec  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--upstream", default="mockingjay", help="name or name:preset")
    p.add_argument("--compare", default="starts",
                   choices=("starts", "precision", "gradient", "loss", "kernels", "evaluations", "curvature"))
    p.add_argument("--task", default="phone_linear,speaker_frame", help="certified tasks, comma list")
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument("--corpus", default="data/synth")
    p.add_argument("--cache-dir", type=Path, default=Path("cache/features"))
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=None, help="JSON to write (default: print only)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    name, preset = parse_spec(a.upstream)
    runs = read_runs(a.results_dir / "runs.csv")
    runs = runs[(runs["upstream"] == name) & (runs["preset"] == preset) & runs["task"].isin(a.task.split(","))
                & runs["mode"].isin(["last", "weighted_sum"])]
    runs = runs[runs["fraction"] == runs.groupby("task")["fraction"].transform("max")]
    # the certificate's order: last-layer rows before the weighted-sum seeds; one last-layer row per task (its seeds
    # share the examples at the largest fraction, and the certificate fits them once)
    runs = runs.sort_values(["task", "mode", "seed"]).drop_duplicates(["task", "mode", "seed"])
    runs = runs[(runs["mode"] == "weighted_sum") | ~runs.duplicated(["task", "mode"])]
    if runs.empty:
        print(f"error: {a.results_dir}/runs.csv has no last or weighted_sum rows of {a.upstream} x {a.task}",
              file=sys.stderr)
        return 2
    corpus = load_corpus(a.corpus)
    map_large_blocks()  # the harness's rule outside probe training (benchmark.cli)
    ways = ({"cold": Certifier(corpus, a.cache_dir, warm_starts=False), "warm": Certifier(corpus, a.cache_dir)}
            if a.compare == "starts" else
            {"float64": Certifier(corpus, a.cache_dir, float32_phase=False), "float32+64": Certifier(corpus, a.cache_dir)}
            if a.compare == "precision" else
            {"float32 value": Certifier(corpus, a.cache_dir), "float64 value": Certifier(corpus, a.cache_dir)}
            if a.compare == "loss" else
            {"kernels before": Certifier(corpus, a.cache_dir), "kernels now": Certifier(corpus, a.cache_dir)}
            if a.compare == "kernels" else
            {"every evaluation": Certifier(corpus, a.cache_dir), "reused": Certifier(corpus, a.cache_dir)}
            if a.compare == "evaluations" else
            {"weights": Certifier(corpus, a.cache_dir, precondition=False), "curvature": Certifier(corpus, a.cache_dir)}
            if a.compare == "curvature" else
            {"autograd": Certifier(corpus, a.cache_dir), "closed form": Certifier(corpus, a.cache_dir)})
    (first, second) = ways
    rows = []
    for _, r in runs.iterrows():
        out = {"task": r["task"], "mode": r["mode"], "seed": int(r["seed"]), "fraction": float(r["fraction"])}
        for way, cert in ways.items():
            cert.sources(r)  # load the cache outside the timing
            t0, sys0 = time.perf_counter(), os.times().system
            with (_autograd_loss() if way == "autograd" else _float32_value() if way == "float32 value"
                  else _kernels_before() if way == "kernels before"
                  else _every_evaluation() if way == "every evaluation" else contextlib.nullcontext()):
                ref = cert.reference(r)
            out[way] = {"seconds": round(time.perf_counter() - t0, 1),
                        "system_seconds": round(os.times().system - sys0, 1), "final_iters": ref.iters, "l2": ref.l2,
                        "dev": round(100 * ref.dev, 2), "test": round(100 * ref.test, 2), "solved": ref.converged}
        rows.append(out)
        print(f"{out['task']} {out['mode']} seed {out['seed']}: " + ", ".join(
            f"{w} {out[w]['seconds']} s (test {out[w]['test']}, l2 {out[w]['l2']:g})" for w in ways), flush=True)
    secs = {w: round(sum(r[w]["seconds"] for r in rows), 1) for w in ways}
    ratio = secs[first] / max(secs[second], 1e-9)
    system = {w: round(sum(r[w]["system_seconds"] for r in rows), 1) for w in ways}
    print(f"total: {first} {secs[first]:.1f} s ({system[first]:.1f} s system), {second} {secs[second]:.1f} s "
          f"({system[second]:.1f} s system) ({ratio:.2f}x); largest test difference "
          f"{max(abs(r[first]['test'] - r[second]['test']) for r in rows):.2f} points")
    if a.out is not None:
        atomic_write_json(a.out, {"command": " ".join(["python", "perf/certificate_starts.py", *(argv or sys.argv[1:])]),
                                  "provenance": provenance("cpu"), "rows": rows,
                                  **{f"{w}_seconds": v for w, v in secs.items()},
                                  **{f"{w}_system_seconds": v for w, v in system.items()}, "ratio": round(ratio, 2)})
        print(f"wrote {a.out}")
    return 0


def _autograd_loss():
    """The certificate's loss as torch's cross-entropy through autograd (what it was before the closed form)."""
    return mock.patch.object(convergence.LogisticLoss, "apply", lambda W, b, x, y, z, minus_one: F.cross_entropy(
        torch.addmm(b, x, W), y))


@contextlib.contextmanager
def _kernels_before():
    """The certificate's evaluations with subnormals computed as such and the gradient's product as x^T z."""
    def backward(ctx, grad):
        x, z = ctx.saved_tensors
        scale = float(grad) / len(z)
        return torch.mm(x.t(), z).mul_(scale), z.sum(0).mul_(scale), None, None, None, None

    with mock.patch.object(convergence, "flush_denormals", contextlib.nullcontext), \
            mock.patch.object(convergence.LogisticLoss, "backward", staticmethod(backward)):
        yield


def _every_evaluation():
    """The certificate's solver computing every evaluation L-BFGS asks for (what it did before `reuse`)."""
    return mock.patch.object(convergence, "solve_l2", functools.partial(convergence.solve_l2, reuse=False))


# the float32 phase's floor while its loss value was a float32 scalar (it stalled there)
FLOAT32_VALUE_FLOOR = 2e-4


@contextlib.contextmanager
def _float32_value():
    """The certificate's loss value rounded to the logits' dtype (what it was before the float64 sum), with the
    float32 phase's floor where that value let it get."""
    apply = convergence.LogisticLoss.apply
    phases = tuple((dtype, FLOAT32_VALUE_FLOOR if dtype == torch.float32 else floor, patience)
                   for dtype, floor, patience in convergence.PHASES)
    with mock.patch.object(convergence, "PHASES", phases), \
            mock.patch.object(convergence.LogisticLoss, "apply",
                              lambda W, b, x, y, z, minus_one: apply(W, b, x, y, z, minus_one).to(x.dtype)):
        yield


if __name__ == "__main__":
    sys.exit(main())
