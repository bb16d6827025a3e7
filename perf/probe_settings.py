"""Train one frozen probe of a cached upstream, or one sweep of them, under the main job's settings and under variants
of them, side by side in one process; print dev, test, steps and best step of each (does a probe that fails the
certificate converge with more patience, another step size, another optimiser?).

    .venv/bin/python perf/probe_settings.py --upstream aalbert --task speaker_frame --mode last --fraction 1 \\
        --set patience=8 --set patience=16 --set lr=0.1 --set batch_size=16384,lr=2 --set optimizer=adamw,lr=0.001

Each --set is one variant: comma-separated ProbeConfig fields replacing the main job's settings for that task.
`--fractions 0.01,0.05,0.125,1 --seeds 3` trains the main job's whole sweep of that task and mode as the main job does
(one batched group per variant) and prints each probe and, per variant, the group's seconds, its probes' steps and
their mean dev and test scores by fraction: what a setting costs and gives across the sweep.
Reads the feature cache the main job built (--cache-dir, --corpus). 1 torch thread unless --threads. Writes JSON
(--out) when given.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmark.plan.presets import main_job  # noqa: E402
from benchmark.plan.runs import parse_fractions  # noqa: E402
from benchmark.report.convergence import CACHED_UPSTREAM_HELP, cached_identity, cached_probe_inputs  # noqa: E402
from core.io import atomic_write_json  # noqa: E402
from core.repro import provenance  # noqa: E402
from corpora.manifest import load_corpus  # noqa: E402
from downstream.data import num_classes  # noqa: E402
from downstream.fractions import fraction_subset  # noqa: E402
from downstream.modes import LayerMode  # noqa: E402
from downstream.config import ProbeConfig, settable  # noqa: E402
from downstream import feeds  # noqa: E402
from downstream.tasks import ALL_TASKS  # noqa: E402
from downstream.probe import ProbeSpec  # noqa: E402
from downstream.train import train_probes  # noqa: E402


def parse_set(text: str, base: ProbeConfig) -> ProbeConfig:
    """'patience=8,lr=0.1' -> base with those settings replaced (typed as the setting's value in `base`, or in the
    optimiser that `optimizer=KIND` switches to first)."""
    kind = next((item.partition("=")[2] for item in text.split(",") if item.startswith("optimizer=")), None)
    if kind is not None:
        base = base.with_fields(optimizer=kind)
    types = {k: type(v) for k, v in settable(base).items()}
    types = {k: t for k, t in types.items() if t in (str, int, float, bool)}  # l2_grid (a tuple) is not settable here
    kw: dict = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if name not in types or not value:
            raise ValueError(f"--set {text!r}: {name!r} is not a setting=value of this probe's {', '.join(types)}")
        t = types[name]
        if t is bool and value.lower() not in ("true", "false"):
            raise ValueError(f"--set {text!r}: {name} takes true or false")
        kw[name] = value.lower() == "true" if t is bool else int(float(value)) if t is int else t(value)
    return base.with_fields(**kw)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--upstream", default="aalbert", help=CACHED_UPSTREAM_HELP)
    p.add_argument("--task", default="speaker_frame",
                   choices=list(ALL_TASKS))
    p.add_argument("--mode", default="last", choices=("last", "weighted_sum"))
    p.add_argument("--fractions", "--fraction", dest="fractions", default="1",
                   help="a label fraction, or several (comma-separated): one group")
    p.add_argument("--seed", type=int, default=0, help="the first seed")
    p.add_argument("--seeds", type=int, default=1, help="seeds per fraction (--seed, --seed + 1, ...)")
    p.add_argument("--set", action="append", default=[], help="a variant: field=value[,field=value...]")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--corpus", default="data/synth")
    p.add_argument("--cache-dir", type=Path, default=Path("cache/features"))
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--piece-rows", type=int, default=None,
                   help="the training blocks' pieces (downstream.feeds.PIECE_ROWS): how finely a pass's order "
                        "interleaves the corpus; the block's size (BLOCK_ROWS) gives contiguous blocks")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.piece_rows is not None:
        if a.piece_rows < 1 or feeds.BLOCK_ROWS % a.piece_rows:
            print(f"error: --piece-rows {a.piece_rows}: must divide the block's {feeds.BLOCK_ROWS} rows",
                  file=sys.stderr)
            return 2
        feeds.PIECE_ROWS = a.piece_rows
    task = ALL_TASKS[a.task]
    base = main_job().probe_config(a.task, False)
    try:
        fractions = parse_fractions(a.fractions)
        if a.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {a.seeds}")
        variants = [("main job", base)] + [(s, parse_set(s, base)) for s in a.set]
        corpus = load_corpus(a.corpus)
        row = cached_identity(a.cache_dir, a.upstream, corpus)
        source, labels = cached_probe_inputs(a.cache_dir, row, corpus, task)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    speakers = [u.speaker for u in corpus.utterances("train")]
    probes = [(f, seed, ProbeSpec(tuple(fraction_subset(speakers, f, seed, task.labels.closed_set).indices), seed))
              for f in fractions for seed in range(a.seed, a.seed + a.seeds)]
    out, summary = [], []
    for name, cfg in variants:
        t0 = time.perf_counter()
        results = train_probes(task, LayerMode(a.mode), source, labels, [p for _, _, p in probes],
                               num_classes(corpus, task), cfg)
        seconds = round(time.perf_counter() - t0, 1)
        mine = [{"variant": name, "fraction": f, "seed": seed, "dev": round(100 * r.dev_metric, 2),
                 "test": round(100 * r.test_metric, 2), "steps": r.steps, "best_step": r.best_step,
                 "converged": r.converged, "seconds": seconds} for (f, seed, _), r in zip(probes, results)]
        for o in mine:
            print(json.dumps(o), flush=True)
        out += mine
        summary.append({"variant": name, "seconds": seconds, "steps": sum(o["steps"] for o in mine),
                        **{f"{k}_by_fraction": {str(f): round(sum(o[k] for o in mine if o["fraction"] == f) / a.seeds, 2)
                                                for f in fractions} for k in ("dev", "test")}})
        print(json.dumps(summary[-1]), flush=True)
    if a.out is not None:
        atomic_write_json(a.out, {"upstream": f"{row['upstream']}:{row['preset']}", "ckpt_hash": row["ckpt_hash"],
                                  "task": a.task, "mode": a.mode, "piece_rows": feeds.PIECE_ROWS,
                                  "fractions": fractions, "seeds": list(range(a.seed, a.seed + a.seeds)), "variants": out,
                                  "summary": summary,
                                  "provenance": provenance("cpu"),
                                  "command": " ".join(["python", "perf/probe_settings.py", *(argv or sys.argv[1:])])})
    return 0


if __name__ == "__main__":
    sys.exit(main())
