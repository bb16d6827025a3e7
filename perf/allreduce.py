"""Time the gradient all-reduce of data-parallel pretraining on this machine: N gloo ranks all-reduce a float32
vector of the small model's parameter count, and rank 0 prints the median and minimum of the timed calls.

    .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node 2 perf/allreduce.py \
        [--numel 2561520] [--warmup 3] [--calls 20] [--out results/allreduce.json]

2,561,520 is `mockingjay:small` with the `preln_stack3` recipe (docs/scale.md); each call is timed from a barrier
to the end of `dist.all_reduce`. Writes JSON with the per-call milliseconds (rank 0, --out).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from core.io import atomic_write_json  # noqa: E402
from core.repro import provenance  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--numel", type=int, default=2_561_520, help="float32 elements all-reduced per call")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    x = torch.randn(a.numel)
    ms = []
    for i in range(a.warmup + a.calls):
        dist.barrier()
        t = time.perf_counter()
        dist.all_reduce(x)
        if i >= a.warmup:
            ms.append(1000 * (time.perf_counter() - t))
    if dist.get_rank() == 0:
        out = {"ranks": dist.get_world_size(), "numel": a.numel, "megabytes": round(4 * a.numel / 1e6, 2),
               "median_ms": round(statistics.median(ms), 2), "min_ms": round(min(ms), 2),
               "ms": [round(v, 2) for v in ms], "provenance": provenance("cpu")}
        print({k: v for k, v in out.items() if k not in ("ms", "provenance")})
        if a.out is not None:
            atomic_write_json(a.out, out)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
