"""Peak memory and wall time of frozen probes as the labelled corpus grows: the built-in corpus at 1x, 4x and 16x its
training utterances, one sweep each, every figure measured side by side in one invocation.

    .venv/bin/python perf/probe_memory.py --out results/probe_memory.json   # 12, 48 and 192 utterances per speaker
    .venv/bin/python perf/probe_memory.py --scales 12,48 --out results/probe_memory_small.json

For each scale it builds the corpus once (`python -m corpora prepare synth --train-per-speaker N`, no pretrain
split: the reference checkpoints bring their own statistics), extracts the upstream's feature cache in a first
process (`run_benchmark.py prepare`), then runs the probe sweep in a second process with an empty results folder
and reads that process's own peak resident memory (wait4) and wall time. The sweep: `mockingjay` x
`phone_linear`, `speaker_utterance` x `last`, `weighted_sum`, fraction 1, 1 seed (the probes are what is
measured, not extraction). Prints a Markdown table, and the JSON with the ratios to the smallest scale (--out also
writes it).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from core.io import atomic_write_json  # noqa: E402
from core.repro import provenance  # noqa: E402

SWEEP = ["--upstream", "mockingjay", "--task", "phone_linear,speaker_utterance", "--mode", "last,weighted_sum",
         "--fractions", "1", "--seeds", "1", "--no-finetune", "--no-progress"]


def measured(cmd: list[str], log: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MiB, exit status) of `cmd` as a child process, its output to `log`."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)
    return time.perf_counter() - t0, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", default="12,48,192", help="training utterances per speaker, comma list")
    ap.add_argument("--data-dir", type=Path, default=ROOT / "data")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "cache" / "features")
    ap.add_argument("--out", type=Path, help="also write the JSON here (default: print only)")
    a = ap.parse_args(argv)
    py = sys.executable
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(s) for s in a.scales.split(",")]:
            corpus = a.data_dir / f"synth_train{n}"
            if not (corpus / "corpus.json").is_file():
                _, _, rc = measured([py, "-m", "corpora", "prepare", "synth", "--train-per-speaker", str(n),
                                     "--pretrain-hours", "0", "--out", str(corpus), "--no-progress"],
                                    Path(tmp) / f"corpus{n}.log")
                if rc:
                    print((Path(tmp) / f"corpus{n}.log").read_text()[-3000:], file=sys.stderr)
                    return rc
            common = [py, "run_benchmark.py", *SWEEP, "--corpus", str(corpus), "--cache-dir", str(a.cache_dir)]
            _, _, rc = measured([*common, "prepare", "--results-dir", f"{tmp}/prep{n}"], Path(tmp) / f"prep{n}.log")
            if rc:
                print((Path(tmp) / f"prep{n}.log").read_text()[-3000:], file=sys.stderr)
                return rc
            wall, rss, rc = measured([*common, "--results-dir", f"{tmp}/res{n}"], Path(tmp) / f"run{n}.log")
            if rc:
                print((Path(tmp) / f"run{n}.log").read_text()[-3000:], file=sys.stderr)
                return rc
            import pandas as pd

            runs = pd.read_csv(f"{tmp}/res{n}/runs.csv")
            rows.append({"train_per_speaker": n, "train_frames": int(runs["train_frames"].max()),
                         "wall_seconds": round(wall, 1), "peak_rss_mib": round(rss),
                         # each row's seconds as the runner records them (its group's time; the two workers run
                         # groups side by side, so the wall time is about the larger worker's sum)
                         "probe_rows": {f"{r.task} {r.mode}": {"test": round(100 * r.test_metric, 2), "steps": int(r.steps),
                                                               "seconds": round(float(r.wall_seconds), 1)}
                                        for r in runs.itertuples()}})
            print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    for r in rows:
        r["rss_over_smallest"] = round(r["peak_rss_mib"] / base["peak_rss_mib"], 2)
        r["wall_over_smallest"] = round(r["wall_seconds"] / base["wall_seconds"], 2)
        r["frames_over_smallest"] = round(r["train_frames"] / base["train_frames"], 2)
    report = {"sweep": " ".join(SWEEP), "provenance": provenance("cpu"), "scales": rows,
              "command": " ".join(["python", "perf/probe_memory.py", *(argv or sys.argv[1:])])}
    if a.out is not None:
        atomic_write_json(a.out, report)
    else:
        print(json.dumps(report))
    print("| train utt. / speaker | train frames | x frames | peak RSS (MiB) | x RSS | wall (s) | x wall |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['train_per_speaker']} | {r['train_frames']:,} | {r['frames_over_smallest']} | {r['peak_rss_mib']:,} | "
              f"{r['rss_over_smallest']} | {r['wall_seconds']} | {r['wall_over_smallest']} |")
    if a.out is not None:
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
