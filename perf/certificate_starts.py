"""What shared starting points save the convergence certificate: the references of one upstream's frame-level rows at
the largest label fraction (the costly fits), fitted cold (each L2 path from zeros) and with the certificate's warm
starts (each row's L2 points start from the solutions of the row fitted before it on the same examples but for the
mix of hidden states: the last-layer row, then the weighted-sum seeds), side by side in one process.

    .venv/bin/python perf/certificate_starts.py --upstream mockingjay --task phone_linear,speaker_frame \\
        --out results/certificate_starts.json

Reads the rows of a results directory and the feature cache they were trained on (run the main job first). Prints
per row the seconds, L-BFGS iterations and reference scores of both ways, and the total ratio.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmark.record.aggregate import read_runs  # noqa: E402
from benchmark.report.convergence import Certifier  # noqa: E402
from core.io import atomic_write_json  # noqa: E402
from core.repro import provenance  # noqa: E402
from corpora.manifest import load_corpus  # noqa: E402
from upstream.registry import parse_spec  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--upstream", default="mockingjay", help="name or name:preset")
    p.add_argument("--task", default="phone_linear,speaker_frame", help="frame-level tasks, comma list")
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
    ways = {"cold": Certifier(corpus, a.cache_dir, warm_starts=False), "warm": Certifier(corpus, a.cache_dir)}
    rows = []
    for _, r in runs.iterrows():
        out = {"task": r["task"], "mode": r["mode"], "seed": int(r["seed"]), "fraction": float(r["fraction"])}
        for way, cert in ways.items():
            cert.sources(r)  # load the cache outside the timing
            t0 = time.perf_counter()
            ref = cert.reference(r)
            out[way] = {"seconds": round(time.perf_counter() - t0, 1), "final_iters": ref.iters, "l2": ref.l2,
                        "dev": round(100 * ref.dev, 2), "test": round(100 * ref.test, 2), "solved": ref.converged}
        rows.append(out)
        print(f"{out['task']} {out['mode']} seed {out['seed']}: cold {out['cold']['seconds']} s "
              f"(test {out['cold']['test']}), warm {out['warm']['seconds']} s (test {out['warm']['test']})", flush=True)
    cold = sum(r["cold"]["seconds"] for r in rows)
    warm = sum(r["warm"]["seconds"] for r in rows)
    print(f"total: cold {cold:.1f} s, warm {warm:.1f} s ({cold / max(warm, 1e-9):.2f}x); largest test difference "
          f"{max(abs(r['cold']['test'] - r['warm']['test']) for r in rows):.2f} points")
    if a.out is not None:
        atomic_write_json(a.out, {"command": " ".join(["python", "perf/certificate_starts.py", *(argv or sys.argv[1:])]),
                                  "provenance": provenance("cpu"), "rows": rows, "cold_seconds": round(cold, 1),
                                  "warm_seconds": round(warm, 1), "ratio": round(cold / max(warm, 1e-9), 2)})
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
