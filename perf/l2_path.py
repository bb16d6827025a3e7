"""Walk the L2 path of one speaker_utterance row of a results directory with the relative-tolerance solver
(downstream.solver) on the row's own cached, standardised examples; print iterations, dev and test per point.

    .venv/bin/python perf/l2_path.py RUN_ID [--rtol 0.01] [--cold] [--results-dir results] [--corpus data/synth]

The measurements of docs/benchmark.md "Solved L2 points" were taken this way.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmark.record.aggregate import read_runs  # noqa: E402
from benchmark.report.convergence import Certifier  # noqa: E402
from corpora.manifest import PROBE_SPLITS, load_corpus  # noqa: E402
from downstream.data import Targets  # noqa: E402
from downstream.fractions import fraction_subset  # noqa: E402
from downstream.solver import solve_l2  # noqa: E402
from downstream.tasks import TASKS  # noqa: E402

GRID = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_id")
    p.add_argument("--rtol", type=float, default=0.01)
    p.add_argument("--cold", action="store_true", help="solve every point from zeros instead of warm-starting")
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument("--corpus", default="data/synth")
    p.add_argument("--cache-dir", type=Path, default=Path("cache/features"))
    a = p.parse_args(argv)
    runs = read_runs(a.results_dir / "runs.csv")
    hit = runs[runs["run_id"] == a.run_id]
    if hit.empty or hit.iloc[0]["task"] != "speaker_utterance":
        print(f"error: {a.results_dir}/runs.csv has no speaker_utterance row {a.run_id!r}", file=sys.stderr)
        return 2
    r = hit.iloc[0]
    cert = Certifier(load_corpus(a.corpus), a.cache_dir)
    task = TASKS[r["task"]]
    src = cert.sources(r)[1]
    ws = r["mode"] == "weighted_sum"
    layers = list(range(src.num_hidden_states)) if ws else [int(r["layer"])]
    weights = [float(w) for w in str(r["layer_weights"]).split(";")] if ws else [1.0]
    sub = fraction_subset([u.speaker for u in cert.utts["train"]], float(r["fraction"]), int(r["seed"]), True)
    data = {}
    for s in PROBE_SPLITS:
        x = sum(w * src.examples(s)[src.position(k)] for w, k in zip(weights, layers)).double()
        y = torch.from_numpy(Targets(task, cert.labels(task, s), src.lengths(s), s).utt)
        if s == "train":
            sel = torch.from_numpy(np.asarray(sorted(sub.indices), dtype=np.int64))
            x, y = x.index_select(0, sel), y.index_select(0, sel)
        data[s] = (x, y)
    n_cls = len(task.labels.classes(cert.corpus))
    W = torch.zeros(data["train"][0].shape[1], n_cls, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_cls, dtype=torch.float64, requires_grad=True)
    x, y = data["train"]
    print(f"{r['upstream']}:{r['preset']} {r['mode']} f={r['fraction']:g} seed {r['seed']}: row dev "
          f"{100 * r['dev_metric']:.2f} test {100 * r['test_metric']:.2f}")
    t0 = time.perf_counter()
    for l2 in GRID:
        if a.cold:
            with torch.no_grad():
                W.zero_()
                b.zero_()
        iters, ok = solve_l2([W, b], lambda: [F.cross_entropy(x @ W + b, y)], [W], l2, a.rtol, 20000)
        acc = {s: 100 * float(((d[0] @ W + b).argmax(-1) == d[1]).double().mean()) for s, d in data.items()}
        print(f"l2={l2:g} iterations={iters} solved={ok} train={acc['train']:.1f} dev={acc['dev']:.2f} "
              f"test={acc['test']:.2f} |W|={float(W.norm()):.1f}")
    print(f"{time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
