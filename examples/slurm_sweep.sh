#!/bin/bash
# A sharded sweep on a Slurm cluster (docs/scale.md). From the repository root on a login node:
#
#   bash examples/slurm_sweep.sh [run_benchmark.py flags...]
#
# submits three jobs, each starting when the one before it succeeded:
#   1. prepare (one task): the corpus, the checkpoints, mel's and the random controls' normalisation statistics
#      and every upstream's feature cache, once (run_benchmark.py prepare);
#   2. the sweep, a job array 0..SHARDS-1: task I runs run_benchmark.py --shard I/SHARDS and writes its rows to
#      results/shards/I-of-SHARDS/runs.csv (the shards never write one file);
#   3. merge (one task): run_benchmark.py report merges the shards' rows into results/runs.csv, then writes
#      results/leaderboard.csv and results/REPORT.md.
# The flags go to all three (the shards must plan the same sweep), e.g.
#   bash examples/slurm_sweep.sh --upstream mel,mockingjay,aalbert --seeds 5 --results-dir results/sweep1
# SHARDS (default 10), PY (default .venv/bin/python), LOGS (default logs) and the resources below can be
# changed; the working directory, data/, cache/ and results/ must be on storage every node sees.
#
# `sbatch examples/slurm_sweep.sh [flags]` submits the array alone (#SBATCH --array=0-9 below, SHARDS=10, logs/
# must exist): run `run_benchmark.py prepare [flags]` before it and `run_benchmark.py report [flags]` after it.
#SBATCH --job-name=speechprobe-sweep
#SBATCH --array=0-9
#SBATCH --cpus-per-task=2
#SBATCH --mem=16G
#SBATCH --time=01:00:00
#SBATCH --output=logs/%x-%A_%a.out
set -euo pipefail

SHARDS=${SHARDS:-10}
PY=${PY:-.venv/bin/python}
LOGS=${LOGS:-logs}
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-2}  # torch would otherwise start a thread per core of the node

if [[ -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then  # inside the array: this task's shard
    exec "$PY" run_benchmark.py --shard "$SLURM_ARRAY_TASK_ID/$SHARDS" --no-progress "$@"
fi

flags=$(printf ' %q' "$@")
mkdir -p "$LOGS"
prepare=$(sbatch --parsable --job-name=speechprobe-prepare --cpus-per-task=2 --mem=16G --time=02:00:00 \
    --output="$LOGS/%x-%j.out" --wrap="OMP_NUM_THREADS=2 $PY run_benchmark.py prepare --no-progress$flags")
sweep=$(sbatch --parsable --dependency=afterok:"$prepare" --array=0-$((SHARDS - 1)) --export=ALL,SHARDS="$SHARDS" \
    --output="$LOGS/%x-%A_%a.out" "$0" "$@")
merge=$(sbatch --parsable --dependency=afterok:"$sweep" --job-name=speechprobe-merge --cpus-per-task=1 --mem=8G \
    --time=00:20:00 --output="$LOGS/%x-%j.out" --wrap="$PY run_benchmark.py report$flags")
echo "submitted: prepare $prepare, sweep $sweep (array 0-$((SHARDS - 1))), merge $merge; logs in $LOGS/"
