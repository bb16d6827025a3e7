"""What the convergence certificate's solver choices save: the references of one upstream's rows at the largest label
fraction (the costly fits), fitted two ways side by side in one process, alternating row by row.

--compare starts (default): cold (each L2 path from zeros) against the certificate's warm starts (each row's L2 points
start from the solutions of the row fitted before it on the same examples but for the mix of hidden states: the
last-layer row, then the weighted-sum seeds).
--compare precision: float64 L-BFGS throughout against the certificate's float32 phase first (until the gradient
is within benchmark.report.convergence.FLOAT32_GRAD_FLOOR), then float64 to the same tolerance.

    .venv/bin/python perf/certificate_starts.py --upstream mockingjay --task phone_linear,speaker_frame \\
        --out results/certificate_starts.json
    .venv/bin/python perf/certificate_starts.py --compare precision --upstream mockingjay \\
        --task phone_linear,speaker_frame,speaker_utterance --threads 1 --out results/certificate_precision.json

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
    p.add_argument("--compare", choices=("starts", "precision"), default="starts")
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
    ways = ({"cold": Certifier(corpus, a.cache_dir, warm_starts=False), "warm": Certifier(corpus, a.cache_dir)}
            if a.compare == "starts" else
            {"float64": Certifier(corpus, a.cache_dir, float32_phase=False), "float32+64": Certifier(corpus, a.cache_dir)})
    (first, second) = ways
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
        print(f"{out['task']} {out['mode']} seed {out['seed']}: " + ", ".join(
            f"{w} {out[w]['seconds']} s (test {out[w]['test']}, l2 {out[w]['l2']:g})" for w in ways), flush=True)
    secs = {w: round(sum(r[w]["seconds"] for r in rows), 1) for w in ways}
    ratio = secs[first] / max(secs[second], 1e-9)
    print(f"total: {first} {secs[first]:.1f} s, {second} {secs[second]:.1f} s ({ratio:.2f}x); largest test difference "
          f"{max(abs(r[first]['test'] - r[second]['test']) for r in rows):.2f} points")
    if a.out is not None:
        atomic_write_json(a.out, {"command": " ".join(["python", "perf/certificate_starts.py", *(argv or sys.argv[1:])]),
                                  "provenance": provenance("cpu"), "rows": rows,
                                  **{f"{w}_seconds": v for w, v in secs.items()}, "ratio": round(ratio, 2)})
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
