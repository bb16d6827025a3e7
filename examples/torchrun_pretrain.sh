#!/bin/bash
# Data-parallel pretraining with torchrun (docs/scale.md, "Distributed pretraining"). From the repository root:
#
#   NPROC=4 bash examples/torchrun_pretrain.sh --upstream mockingjay:small --corpus data/synth --out runs/pretrain/ddp
#
# runs, on this node,
#
#   torchrun --standalone --nproc_per_node 4 -m pretrain --upstream mockingjay:small --corpus data/synth \
#       --out runs/pretrain/ddp
#
# Every `python -m pretrain` flag works as in one process (`python -m pretrain --help`); --batch-size is the global
# batch, shared out between the ranks; rank 0 alone writes --out. Continue an interrupted run with the same command
# and --resume, with this or another NPROC. Without flags it pretrains mockingjay:small on the built-in corpus
# (data/synth) with the default recipe (preln_stack3, 200 steps) into runs/pretrain/mockingjay-small-ddp.
#
# NPROC (default: the GPUs of this node, else 2) processes; with CUDA each takes the GPU of its LOCAL_RANK (nccl),
# on CPU they talk through gloo and share the cores: OMP_NUM_THREADS (default: cores / NPROC, at least 1) threads each.
# TORCHRUN (default .venv/bin/torchrun, else torchrun on PATH) and PORT (multi-node, default 29500) can be changed.
#
# Several nodes under Slurm: the same flags, one torchrun per node, rendezvous at the first node of the job
# (c10d rendezvous, no fixed ranks). Save as a batch script, or uncomment in a copy of this one:
#
#   #!/bin/bash
#   #SBATCH --job-name=speechprobe-pretrain
#   #SBATCH --nodes=4
#   #SBATCH --ntasks-per-node=1
#   #SBATCH --gpus-per-node=8
#   #SBATCH --cpus-per-task=32
#   #SBATCH --time=04:00:00
#   #SBATCH --output=logs/%x-%j.out
#   set -euo pipefail
#   MASTER=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)  # sed reads it all: no SIGPIPE under pipefail
#   export OMP_NUM_THREADS=$((SLURM_CPUS_PER_TASK / SLURM_GPUS_ON_NODE))
#   srun torchrun --nnodes "$SLURM_NNODES" --nproc_per_node "$SLURM_GPUS_ON_NODE" \
#       --rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d --rdzv_endpoint "$MASTER:29500" \
#       -m pretrain --upstream mockingjay:base --corpus data/synth --recipe preln_stack3 --batch-size 64 \
#       --out runs/pretrain/mockingjay-base-ddp --resume
#
# (sbatch it from the repository root; the repository, the corpus and --out must be on storage every node sees.
# --resume is harmless on a fresh --out and lets a requeued job continue its checkpoint.)
set -euo pipefail

if [[ $# -eq 0 ]]; then
    set -- --upstream mockingjay:small --corpus data/synth --recipe preln_stack3 --out runs/pretrain/mockingjay-small-ddp
fi
if [[ -z "${TORCHRUN:-}" ]]; then
    if [[ -x .venv/bin/torchrun ]]; then TORCHRUN=.venv/bin/torchrun; else TORCHRUN=torchrun; fi
fi
if [[ -z "${NPROC:-}" ]]; then
    gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    NPROC=$(( ${gpus:-0} > 0 ? gpus : 2 ))
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / NPROC > 0 ? $(nproc) / NPROC : 1 ))}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # -m pretrain from this repository in every process

echo "torchrun: $NPROC processes, $OMP_NUM_THREADS threads each" >&2
exec "$TORCHRUN" --standalone --nproc_per_node "$NPROC" -m pretrain "$@"
