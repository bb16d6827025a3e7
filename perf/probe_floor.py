"""The floor under the frozen frame probes' time: the matrix products their rows' steps must compute, at this machine's
measured rate for those products, beside the time the rows record.

    .venv/bin/python perf/probe_floor.py --results-dir results --out results/probe_floor.json

For every row of a minibatch-trained frame-level probe (the stacked engine: phone_linear, phone_1hidden,
speaker_frame) it counts, from the row's `steps` and the main job's settings (benchmark.plan.presets):
* `computed`: what the engine multiplies in training: every step a full minibatch slot of `batch_size` rows (a probe
  with fewer rows left in a chunk pads its batch, downstream.feeds); dev counted as in `floor`;
* `floor`: what any engine must multiply to take the same probes through the same steps: the probe's own rows only,
  at least steps / (ceil(rows / batch) + chunks - 1) passes over them (a pass takes at most that many steps), and
  dev scored at least patience + 1 times (the stopping rule's fewest evaluations).
* `eager_seconds`: the same rows, steps and evaluations at the rate of the engine's own step as eager PyTorch runs
  it (downstream.groups.StackedModel's loss, its backward, the per-probe clip and the stacked optimiser, on full
  minibatches of 12 probes and of 3, the cheaper per probe; an evaluation is the forward of shared rows and the
  task's decoding), timed the same way: what the kernels of a step cost beyond its products (elementwise passes,
  dtype conversions, the optimiser), without the engine's orchestration (feeding, padded batch slots, dev scored more
  often than the fewest evaluations, the loop).
Products per row and step come from the heads themselves (downstream.stacked.StackedHeads.products: forward, weight
and input gradients; checked against torch's FLOP counter in tests/test_engine.py). Their rate is measured here, in
one process, for each head shape: a group of 12 probes' batched products (torch.bmm) in the engine's compute dtype
(bfloat16 where the CPU multiplies it natively), 1 torch thread, best of 5, with freed blocks kept in the heap as
while groups train (core.allocator.reuse_freed_blocks; under glibc's default rule every output of 32 MB or more, such
as an MLP group's (12, 2,048, 768) activations, is mapped and faulted in a page at a time at each product: on the
AMX Xeon that makes the floor 1.65x what the products cost the engine). The floor's seconds are worker-seconds
(one thread each); the main job runs two workers, so its probes' wall-clock floor is half their sum. The mean-pooled
speaker probe (L2 path on 1,200 utterance means: little arithmetic), fine-tuning and the SUPERB tasks are not counted.

Reads the rows and the feature cache they were trained on (the upstreams' widths, hidden states and split sizes).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmark.plan.presets import main_job  # noqa: E402
from benchmark.record.aggregate import read_runs  # noqa: E402
from benchmark.report.convergence import cached_frames  # noqa: E402
from core.allocator import reuse_freed_blocks  # noqa: E402
from core.io import atomic_write_json  # noqa: E402
from core.repro import fast_bfloat16, provenance  # noqa: E402
from corpora.manifest import load_corpus  # noqa: E402
from downstream.config import Minibatch  # noqa: E402
from downstream.data import num_classes  # noqa: E402
from downstream.feeds import BLOCK_ROWS, CHUNK_BLOCKS, EVAL_ROWS  # noqa: E402
from downstream.groups import StackedModel  # noqa: E402
from downstream.loop import Batch  # noqa: E402
from downstream.stacked import StackedHeads, StackedOptimizer  # noqa: E402
from downstream.tasks import ALL_TASKS, TaskSpec  # noqa: E402

GROUP = 12  # probes a group multiplies at once: the main job's 4 fractions x 3 seeds
LAST = 3  # ... and the probes left at the end of a group: the 3 seeds of the largest fraction


class Rate(NamedTuple):
    """Seconds per probe-row of one head shape: a training step's and an evaluation's products alone, then the
    engine's eager step and evaluation; and the multiply-adds per row of a step."""

    step: float
    evaluate: float
    eager_step: float
    eager_evaluate: float
    macs: int


def sig(v: float) -> float:
    """4 significant digits: a figure to read, at any scale (a tiny run's TFLOP too)."""
    return float(f"{float(v):.4g}")


def best_of_5(run) -> float:
    best = math.inf
    for _ in range(6):  # the first is a warm-up
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best


def seconds(products: list[tuple[int, int, int]], probes: int, dtype: torch.dtype) -> float:
    """Best of 5 of the batched products (probes, m, k) x (probes, k, n), one after another."""
    pairs = [(torch.randn(probes, m, k).to(dtype), torch.randn(probes, k, n).to(dtype)) for m, k, n in products]
    return best_of_5(lambda: [torch.bmm(a, b) for a, b in pairs])


def eager_seconds(task: TaskSpec, width: int, layers: int, mix: bool, n_classes: int, mb: Minibatch,
                  dtype: torch.dtype, probes: int) -> tuple[float, float]:
    """Best of 5 of one training step of `probes` probes as the engine takes it (StackedModel.loss, backward, the
    per-probe clip, the stacked optimiser) on a full minibatch each, and of one evaluation of EVAL_ROWS shared rows
    decoded by the task; rows in the compute dtype (the caller keeps freed blocks in the heap, as groups train)."""
    heads = StackedHeads([task.head(width, n_classes) for _ in range(probes)], layers, mix, torch.device("cpu"), dtype)
    opt = StackedOptimizer.of(mb.optimizer, heads)
    model = StackedModel(heads, None, task, opt)  # no dev: never scored
    B = mb.batch_size
    active = torch.ones(probes, dtype=torch.bool)
    batch = Batch((torch.randn(probes, B, layers, width).to(dtype), torch.randint(0, n_classes, (probes, B)),
                   torch.ones(probes, B, dtype=torch.bool), torch.arange(probes)), active)
    shared = torch.randn(EVAL_ROWS, layers, width).to(dtype)

    def train() -> None:
        model.zero_grad()
        model.loss(batch).backward()
        model.clip(mb.grad_clip)
        opt.step(active)

    def evaluate() -> None:
        with torch.no_grad():
            task.decode(heads.forward(shared, float32=False))

    return best_of_5(train), best_of_5(evaluate)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument("--corpus", default="data/synth")
    p.add_argument("--cache-dir", type=Path, default=Path("cache/features"))
    p.add_argument("--out", type=Path, help="also write the JSON here (default: print only)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    try:
        runs = read_runs(a.results_dir / "runs.csv")
        corpus = load_corpus(a.corpus)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = main_job()
    dtype = torch.bfloat16 if fast_bfloat16(torch.device("cpu")) else torch.float32

    def counted(task: TaskSpec) -> bool:
        return (task.engine == "stacked" and not task.pooled
                and isinstance(cfg.probe_config(task.name, False).trainer, Minibatch))

    rows = runs[(runs["mode"] != "finetune") & runs["task"].map(lambda t: t in ALL_TASKS and counted(ALL_TASKS[t]))]
    if rows.empty:
        print(f"error: {a.results_dir / 'runs.csv'} holds no minibatch frame-probe rows to count", file=sys.stderr)
        return 2
    rate: dict[tuple, Rate] = {}  # by head shape
    out_rows = []
    for (up, preset, ckpt), sub in rows.groupby(["upstream", "preset", "ckpt_hash"], sort=False):
        try:
            source, _ = cached_frames(a.cache_dir, {"upstream": up, "preset": preset, "ckpt_hash": ckpt}, corpus)
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {up}:{preset}: {e}", file=sys.stderr)
            return 2
        width, n_states = source.hidden_size, source.num_hidden_states
        split_rows = {s: int(source.lengths(s).sum()) for s in ("train", "dev")}
        chunks = math.ceil(split_rows["train"] / (BLOCK_ROWS * CHUNK_BLOCKS))
        for r in sub.itertuples():
            task = ALL_TASKS[r.task]
            pcfg = cfg.probe_config(r.task, False)
            batch = pcfg.minibatch.batch_size
            layers = n_states if r.mode == "weighted_sum" else 1
            heads = StackedHeads([task.head(width, num_classes(corpus, task))], layers, r.mode == "weighted_sum",
                                 torch.device("cpu"))
            # multiply-adds per row (every product is linear in the rows)
            step, evaluate = (sum(m * k * n for m, k, n in heads.products(1, width, train)) for train in (True, False))
            key = (r.task, width, layers, r.mode)
            if key not in rate:
                # as groups train (core.allocator): no output of a product or a step mapped and faulted in anew
                with reuse_freed_blocks():
                    # the engine's step per probe-row at the cheaper of a full group and its last probes (the 3 seeds
                    # at 100 % train on alone for most of an MLP group's steps), so that the eager figure is a floor too
                    eager = []
                    for n in (GROUP, LAST):
                        s_, e_ = eager_seconds(task, width, layers, r.mode == "weighted_sum", num_classes(corpus, task),
                                               pcfg.minibatch, dtype, n)
                        eager.append((s_ / (n * batch), e_ / (n * EVAL_ROWS)))
                    rate[key] = Rate(
                        seconds(heads.products(batch, width, True), GROUP, dtype) / (GROUP * batch),
                        seconds(heads.products(EVAL_ROWS, width, False), GROUP, dtype) / (GROUP * EVAL_ROWS),
                        min(e[0] for e in eager), min(e[1] for e in eager), step)
            rt = rate[key]
            per_pass = math.ceil(r.train_frames / batch) + chunks - 1  # the most steps a pass over the probe's rows takes
            useful = r.steps * r.train_frames / per_pass
            evals = pcfg.patience + 1
            dev = evals * split_rows["dev"] * evaluate
            out_rows.append({
                "upstream": f"{up}:{preset}", "task": r.task, "mode": r.mode, "fraction": r.fraction,
                "computed_tflop": 2 * (r.steps * batch * step + dev) / 1e12,
                "floor_tflop": 2 * (useful * step + dev) / 1e12,
                "floor_seconds": useful * rt.step + evals * split_rows["dev"] * rt.evaluate,
                "eager_seconds": useful * rt.eager_step + evals * split_rows["dev"] * rt.eager_evaluate,
                "recorded_seconds": r.wall_seconds})
    df = pd.DataFrame(out_rows)
    cols = ["computed_tflop", "floor_tflop", "floor_seconds", "eager_seconds", "recorded_seconds"]
    # per fraction without the recorded time: a group's wall time is shared equally by its probes (downstream.train)
    by_task = df.groupby(["task", "fraction"])[cols[:4]].sum().map(sig)
    total = df[cols].sum()
    result = {
        "rows": len(df), "dtype": str(dtype).removeprefix("torch."), "threads": 1, "group": GROUP,
        "by_task_fraction": [{"task": t, "fraction": f, **v} for (t, f), v in by_task.to_dict("index").items()],
        "by_task": df.groupby("task")[cols].sum().map(sig).reset_index().to_dict("records"),
        "total": {k: sig(v) for k, v in total.items()},
        "floor_wall_seconds_two_workers": sig(total["floor_seconds"] / 2),
        "eager_wall_seconds_two_workers": sig(total["eager_seconds"] / 2),
        "recorded_over_floor": round(float(total["recorded_seconds"] / total["floor_seconds"]), 2),
        "eager_over_floor": round(float(total["eager_seconds"] / total["floor_seconds"]), 2),
        "recorded_over_eager": round(float(total["recorded_seconds"] / total["eager_seconds"]), 2),
        "step_gflops": {f"{t} {m} D={w}": round(2 * v.macs / v.step / 1e9, 1) for (t, w, _, m), v in rate.items()},
        "eager_step_gflops": {f"{t} {m} D={w}": round(2 * v.macs / v.eager_step / 1e9, 1)
                              for (t, w, _, m), v in rate.items()},
        "results_dir": str(a.results_dir),
        "provenance": provenance("cpu"),
        "command": " ".join(["python", "perf/probe_floor.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    print(by_task.to_string())
    print(json.dumps({k: v for k, v in result.items() if k not in ("provenance", "by_task_fraction")}, indent=1))
    if a.out is not None:
        atomic_write_json(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
