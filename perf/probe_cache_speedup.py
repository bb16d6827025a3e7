"""Measure the probe sweep with the feature cache against recomputing the upstream every batch (s3prl's way).

Both sweeps run the same harness code path (benchmark.runner) on the same plan, one after the other in this
process: all tasks x `last` x the default fractions x seeds for one upstream. The cached sweep's time INCLUDES
extracting the cache. Prints the two wall times, the speed-up and the largest metric difference between the
two (float16 storage only), and writes them as JSON. Frozen probes on the cache train on 1 torch thread (as
in the main job); the recompute sweep keeps torch's default threads since it runs the upstream every step.

    .venv/bin/python perf/probe_cache_speedup.py --corpus data/synth_quick --upstream mockingjay_random
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark.presets import main_job  # noqa: E402
from core.io import atomic_write_json  # noqa: E402
from benchmark.results import read_rows  # noqa: E402
from benchmark.runner import run_benchmark  # noqa: E402
from downstream.tasks import TASKS  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="data/synth_quick", help="prepared corpus directory or corpus name")
    p.add_argument("--upstream", default="mockingjay_random", help="upstream spec (default: needs no checkpoint)")
    p.add_argument("--ckpt", action="append", default=[], metavar="NAME=PATH")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--steps", type=int, default=None, help="probe steps (default: the main job's)")
    p.add_argument("--out", type=Path, default=Path("perf/probe_cache_speedup.json"))
    a = p.parse_args()
    cfg = main_job()
    def budget(pc):
        return pc if a.steps is None else pc.with_steps(a.steps)

    probe, task_probes = budget(cfg.probe), {t: budget(pc) for t, pc in cfg.task_probes.items()}
    times, rows = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        base = replace(cfg, corpus=a.corpus, upstreams=(a.upstream,), tasks=tuple(a.tasks.split(",")), modes="last",
                       seeds=a.seeds, finetune_ends=False, probe=probe, task_probes=task_probes, report=False, progress=False,
                       ckpts=dict(c.split("=", 1) for c in a.ckpt), cache_dir=Path(tmp) / "cache")
        from benchmark.resolve import resolve_corpus, resolve_upstream

        corpus = resolve_corpus(a.corpus, base.data_dir, quick=False)
        resolve_upstream(a.upstream, corpus, base.ckpts, base.runs_dir, False, log=lambda *m: None)  # stats: untimed
        for name, no_cache in (("cached", False), ("recompute", True)):
            # recomputing runs the upstream at every step, like extraction: give it torch's default threads
            run = replace(base, no_cache=no_cache, results_dir=Path(tmp) / name,
                          probe_threads=None if no_cache else base.probe_threads)
            t0 = time.perf_counter()
            run_benchmark(run, log=lambda *m: None)
            times[name] = time.perf_counter() - t0
            rows[name] = {r["run_id"]: r for r in read_rows(run.results_dir / "runs.csv")}
            print(f"{name}: {len(rows[name])} probe runs in {times[name]:.1f} s", flush=True)
    diff = max(abs(float(rows["cached"][k]["test_metric"]) - float(rows["recompute"][k]["test_metric"]))
               for k in rows["cached"])
    result = {"corpus": a.corpus, "upstream": a.upstream, "tasks": a.tasks, "seeds": a.seeds,
              "probe_steps": probe.max_steps, "runs": len(rows["cached"]), "cached_seconds": round(times["cached"], 1),
              "recompute_seconds": round(times["recompute"], 1),
              "speedup": round(times["recompute"] / times["cached"], 2), "max_test_metric_diff": round(diff, 4),
              "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
              "command": "python " + " ".join(sys.argv)}
    print(json.dumps(result, indent=2))
    atomic_write_json(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
