"""Probe throughput: training examples per second of one frozen probe, and what reaching convergence costs.

Trains the main job's probe (benchmark.plan.presets) for each task x mode on an existing feature cache at 100 % of
the labels, one torch thread (as the main job's workers do), and writes per probe: training examples (frames,
or utterances for the mean-pooled probe) per second of training, steps and epochs to the stopping rule, wall
time, and the one-time cost of holding the upstream's splits in memory, whitened (printed; --out also writes JSON). Run the main job (or any run
that builds the cache) first.

    .venv/bin/python perf/probe_throughput.py --upstream mockingjay --out results/probe_throughput.json
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark.plan.presets import main_job  # noqa: E402
from benchmark.report.convergence import CACHED_UPSTREAM_HELP, cached_frames, cached_identity  # noqa: E402
from core.io import atomic_write_json  # noqa: E402
from corpora.manifest import PROBE_SPLITS, load_corpus  # noqa: E402
from downstream.config import Minibatch  # noqa: E402
from downstream.data import num_classes, split_labels  # noqa: E402
from downstream.modes import LayerMode  # noqa: E402
from downstream.sources import PooledSource  # noqa: E402
from downstream.tasks import TASKS  # noqa: E402
from downstream.train import train_probe  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="data/synth")
    p.add_argument("--cache-dir", type=Path, default=Path("cache/features"))
    p.add_argument("--upstream", default="mockingjay", help=CACHED_UPSTREAM_HELP)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--modes", default="last,weighted_sum")
    p.add_argument("--out", type=Path, help="also write the JSON here (default: print only)")
    a = p.parse_args()
    torch.set_num_threads(1)
    corpus = load_corpus(a.corpus)
    try:
        row = cached_identity(a.cache_dir, a.upstream, corpus)
        t0 = time.perf_counter()
        frames, rule = cached_frames(a.cache_dir, row, corpus)  # and the frame rule the labels must follow
    except (FileNotFoundError, ValueError) as e:  # no cache entry for a split, or an unknown upstream/preset
        print(f"error: {e}", file=sys.stderr)
        return 2
    pooled = PooledSource(frames)
    frames.whitening()  # the statistics every probe shares, fitted once in a streaming pass
    pooled.whitening()
    setup = time.perf_counter() - t0
    job = main_job()
    utts = {s: corpus.utterances(s) for s in PROBE_SPLITS}
    out = []
    for task_name in a.tasks.split(","):
        task = TASKS[task_name]
        cfg = job.probe_config(task_name, False)
        src = pooled if task.pooled else frames
        labels = {s: split_labels(corpus, utts[s], s, task.labels, rule) for s in PROBE_SPLITS}
        idx = list(range(len(utts["train"])))
        for mode in a.modes.split(","):
            r = train_probe(task, LayerMode(mode), src, labels, idx, num_classes(corpus, task), cfg, seed=0)
            n = r.train_frames if task.frame_targets else r.train_utts
            # an L-BFGS iteration reads every training example (line-search evaluations not counted)
            seen = r.steps * (cfg.trainer.batch_size if isinstance(cfg.trainer, Minibatch) else n)
            out.append({"task": task_name, "mode": mode, "examples": n, "steps": r.steps,
                        "epochs": round(seen / n, 1), "converged": r.converged, "wall_seconds": round(r.wall_seconds, 1),
                        "examples_per_second": round(seen / r.wall_seconds), "test": round(100 * r.test_metric, 2)})
            print(json.dumps(out[-1]), flush=True)
    report = {"upstream": f"{row['upstream']}:{row['preset']}", "ckpt_hash": row["ckpt_hash"], "torch_threads": 1,
              "setup_seconds": round(setup, 1), "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "probes": out}
    if a.out is not None:
        atomic_write_json(a.out, report)
    print(f"{f'wrote {a.out}' if a.out is not None else 'not written (no --out)'} (setup: whitening and mean "
          f"statistics in {setup:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
