"""examples/slurm_sweep.sh submits prepare, the shard array and the merge with the right commands: run here with a
stand-in `sbatch` that runs each job at once (array tasks one after another) and records what it was given."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from benchmark.record.results import RUNS_FILE, read_rows
from tests.fixtures import make_tiny_corpus

ROOT = Path(__file__).resolve().parent.parent

FAKE_SBATCH = r'''#!/usr/bin/env python3
"""Stand-in for Slurm's sbatch: options as --name=value, then a script and its arguments (or --wrap)."""
import os, subprocess, sys
opts, rest = {}, []
for i, a in enumerate(sys.argv[1:]):
    if not a.startswith("--"):
        rest = sys.argv[1 + i:]
        break
    key, _, value = a[2:].partition("=")
    opts[key] = value
with open(os.environ["FAKE_SBATCH_LOG"], "a") as log:
    log.write(repr(opts) + "\n")
env = dict(os.environ)
for item in opts.get("export", "").split(","):
    if "=" in item:
        env[item.split("=", 1)[0]] = item.split("=", 1)[1]
out = open(os.environ["FAKE_SBATCH_LOG"] + ".jobs", "a")  # job output goes to a file, as Slurm's --output
if "wrap" in opts:
    subprocess.run(["bash", "-c", opts["wrap"]], env=env, check=True, stdout=out, stderr=out)
else:
    lo, hi = map(int, opts["array"].split("-"))
    for task in range(lo, hi + 1):
        subprocess.run(["bash", *rest], env={**env, "SLURM_ARRAY_TASK_ID": str(task)}, check=True, stdout=out,
                       stderr=out)
count = int(open(os.environ["FAKE_SBATCH_LOG"]).read().count("\n"))
print(1000 + count)
'''


def test_slurm_sweep_script_prepares_shards_and_merges(tmp_path):
    corpus = tmp_path / "corpus"
    make_tiny_corpus(corpus, n_speakers=2, per_speaker={"train": 2, "dev": 1, "test": 1})
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text(FAKE_SBATCH)
    fake.chmod(0o755)
    flags = ["--corpus", str(corpus), "--upstream", "mel,aalbert_random", "--task", "phone_linear", "--mode",
             "last", "--fractions", "1", "--seeds", "2", "--steps", "2", "--data-dir", str(tmp_path / "data"),
             "--results-dir", str(tmp_path / "results dir"), "--cache-dir", str(tmp_path / "cache"),
             "--runs-dir", str(tmp_path / "runs")]  # a space in a path: the flags must reach every job intact
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "FAKE_SBATCH_LOG": str(tmp_path / "log"),
           "SHARDS": "3", "PY": sys.executable, "LOGS": str(tmp_path / "logs")}
    done = subprocess.run(["bash", str(ROOT / "examples" / "slurm_sweep.sh"), *flags], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    jobs_out = tmp_path / "log.jobs"
    assert done.returncode == 0, (done.stdout[-2000:] + done.stderr[-2000:]
                                  + (jobs_out.read_text()[-3000:] if jobs_out.exists() else ""))
    assert "submitted: prepare 1001, sweep 1002 (array 0-2), merge 1003" in done.stdout
    jobs = [ast.literal_eval(line) for line in (tmp_path / "log").read_text().splitlines()]
    assert [j.get("job-name") for j in jobs] == ["speechprobe-prepare", None, "speechprobe-merge"]
    assert jobs[1]["array"] == "0-2" and jobs[1]["dependency"] == "afterok:1001" and jobs[2]["dependency"] == "afterok:1002"
    assert " prepare " in jobs[0]["wrap"] and " report " in jobs[2]["wrap"] and (tmp_path / "logs").is_dir()
    results = tmp_path / "results dir"
    shards = sorted(p.parent.name for p in (results / "shards").glob(f"*/{RUNS_FILE}"))
    assert shards and set(shards) <= {"0-of-3", "1-of-3", "2-of-3"}
    rows = read_rows(results / RUNS_FILE)  # merged: mel 1 mode + aalbert_random 1 mode, x 2 seeds
    assert len(rows) == 4 and len({r["run_id"] for r in rows}) == 4
    assert (results / "REPORT.md").is_file() and (results / "leaderboard.csv").is_file()
