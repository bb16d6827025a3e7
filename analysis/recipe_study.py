"""Which pretraining recipe reaches the interpolation yardstick soonest? Time to quality, side by side.

    python -m analysis.recipe_study --upstream mockingjay:small --recipes s3prl,preln_stack3 --threads 1

Every (upstream, recipe) pair pretrains on the corpus's pretrain split with the recipe's settings over one
schedule of `--steps` steps (the same for all recipes), evaluating the held-out masked L1 every `--eval-interval`
steps, and stops at the first evaluation below linear interpolation between the unmasked neighbours on the same
held-out masks (its `interpolate` yardstick) or when its training steps have used `--max-cpu-seconds` of CPU time.
The figure of merit is the CPU seconds until the yardstick is beaten (a lower bound, `> cap`, when it is not).
Checkpoints go to RUNS/<upstream>/<recipe> (reused and resumed: the study is resumable), the table to
OUT/recipes.csv and OUT/recipes.md, the held-out-loss-vs-CPU-time plot to OUT/recipes.png.
`--probe RECIPE,...` then probes those recipes' checkpoints where they stopped with the benchmark harness
(converged probes, 100 % of the labels, `--probe-seeds`) into OUT/runs.csv beside mel, and adds their test scores
(weighted sum of layers) to the table.
"""
from __future__ import annotations

import argparse
import csv
import os
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from core.figures import plt, save_figure
from benchmark.plan.presets import main_job
from benchmark.record.aggregate import aggregate_runs, read_runs
from benchmark.report.tables import to_markdown
from benchmark.run.runner import run_benchmark
from core.io import atomic_write_text
from pretrain.config import RECIPES, with_overrides
from pretrain.train import LOG_FILE, run_pretraining
from upstream.checkpoint import META_FILE, checkpoint_hash, read_meta
from upstream.registry import family_of, parse_spec

BASELINE = "s3prl"


def study_config(recipe: str, steps: int, eval_interval: int):
    return with_overrides(RECIPES[recipe], steps=steps, eval_interval=eval_interval, ckpt_interval=eval_interval * 4)


def run_dir(runs: Path, spec: str, recipe: str) -> Path:
    name, preset = parse_spec(spec)
    return runs / f"{name}-{preset}" / recipe


def train_recipe(spec: str, recipe: str, corpus: Path, runs: Path, steps: int, eval_interval: int, cap: float,
                 progress: bool = True) -> Path:
    """Pretrain until the yardstick or the CPU cap; a finished (stopped or complete) run is reused as it is."""
    out = run_dir(runs, spec, recipe)
    if (out / META_FILE).is_file():
        meta = read_meta(out)
        if meta.get("complete") or meta.get("stopped"):
            return out
    cfg = study_config(recipe, steps, eval_interval)
    return run_pretraining(spec, corpus, out, cfg, resume=(out / META_FILE).is_file(), until_yardstick=True,
                           max_cpu_seconds=cap, device="cpu", show_progress=progress)


def loss_curve(ckpt: Path) -> pd.DataFrame:
    with open(ckpt / LOG_FILE, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["val_loss"]]
    return pd.DataFrame({"step": [int(r["step"]) for r in rows], "val_l1": [float(r["val_loss"]) for r in rows],
                         "cpu_seconds": [float(r.get("cpu_seconds") or 0) for r in rows],
                         "frames": [int(r["frames"]) for r in rows]})


def recipe_row(spec: str, recipe: str, ckpt: Path) -> dict:
    meta, curve = read_meta(ckpt), loss_curve(ckpt)
    yard = meta["val_baselines"]["interpolate"]
    below = curve[curve["val_l1"] < yard]
    cfg = meta["pretrain_config"]
    return {"upstream": spec, "recipe": recipe, "lr": cfg["lr"], "batch": cfg["batch_size"] * cfg["accumulation"],
            "stack": meta["feature"]["downsample"], "mask_span": cfg["mask_span"],
            "pre_ln": bool(meta["encoder"].get("pre_layer_norm")), "schedule_steps": cfg["steps"],
            "steps": meta["step"], "frames": meta["pretrain_frames"], "cpu_seconds": meta.get("pretrain_cpu_seconds"),
            "yardstick": yard, "final_val_l1": meta["val_loss"], "best_val_l1": curve["val_l1"].min(),
            "reached": len(below) > 0,
            "cpu_s_to_yardstick": below["cpu_seconds"].iloc[0] if len(below) else None,
            "frames_to_yardstick": below["frames"].iloc[0] if len(below) else None,
            "stopped": meta.get("stopped", "complete" if meta.get("complete") else "incomplete")}


def speedups(table: pd.DataFrame) -> pd.DataFrame:
    """CPU-time speed-up to the yardstick over the s3prl recipe of the same upstream. When s3prl never got there,
    its CPU time so far is a lower bound on its time, so the speed-up is a lower bound too (`speedup_is_bound`)."""
    out = []
    for _, g in table.groupby("upstream", sort=False):
        g = g.copy()
        base = g[g["recipe"] == BASELINE]
        if len(base):
            b = base.iloc[0]
            b_time = b["cpu_s_to_yardstick"] if b["reached"] else b["cpu_seconds"]
            g["speedup_vs_s3prl"] = [b_time / t if r and t else None
                                     for r, t in zip(g["reached"], g["cpu_s_to_yardstick"])]
            g["speedup_is_bound"] = not b["reached"]
        out.append(g)
    return pd.concat(out, ignore_index=True)


def plot_curves(curves: dict[tuple[str, str], tuple[pd.DataFrame, float]], path: Path) -> Path:
    specs = list(dict.fromkeys(s for s, _ in curves))
    fig, axes = plt.subplots(1, len(specs), figsize=(6.5 * len(specs), 4.6), squeeze=False)
    for ax, spec in zip(axes[0], specs):
        for (s, recipe), (curve, yard) in curves.items():
            if s == spec:
                ax.plot(curve["cpu_seconds"], curve["val_l1"] / yard, "-", marker=".", label=recipe,
                        lw=2.4 if recipe == BASELINE else 1.4)
        ax.axhline(1.0, color="#2ca02c", ls="--", label="interpolation yardstick")
        ax.set(xlabel="CPU seconds in training steps", ylabel="held-out masked L1 / its interpolation yardstick",
               title=spec)
        ax.legend(fontsize=7)
    fig.suptitle("Recipe study: time to quality (lower is better; below 1 = beats interpolating the neighbours)")
    return save_figure(fig, path)


def probe_checkpoints(ckpts: dict[tuple[str, str], Path], corpus: Path, out: Path, seeds: int,
                      tasks: tuple[str, ...] = ("phone_linear", "speaker_utterance")) -> pd.DataFrame:
    """Probe each (upstream, recipe) checkpoint and mel at 100 % of the labels; test accuracy (%) of the weighted
    sum per (upstream, recipe, task), and mel's last layer under upstream "mel"."""
    base = replace(main_job(), corpus=str(corpus), tasks=tasks, fractions=(1.0,), seeds=seeds, finetune_ends=False,
                   results_dir=out, report=False)
    run_benchmark(replace(base, upstreams=("mel",)))
    which = {}
    for (spec, recipe), ckpt in ckpts.items():
        name = parse_spec(spec)[0]
        run_benchmark(replace(base, upstreams=(spec,), ckpts={name: str(ckpt)}))
        which[checkpoint_hash(ckpt)[:16]] = (spec, recipe)
    agg = aggregate_runs(read_runs(out / "runs.csv"))
    rows = []
    for r in agg.itertuples():
        if r.upstream == "mel" and r.mode == "last":
            rows.append({"upstream": "mel", "recipe": "-", "task": r.task, "test": 100 * r.test_mean})
        elif r.ckpt_hash in which and r.mode == "weighted_sum":
            spec, recipe = which[r.ckpt_hash]
            rows.append({"upstream": spec, "recipe": recipe, "task": r.task, "test": 100 * r.test_mean})
    return pd.DataFrame(rows).pivot_table(index=["upstream", "recipe"], columns="task", values="test").reset_index()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--upstream", default="mockingjay:small,aalbert:small", help="comma list of transformer specs")
    p.add_argument("--recipes", default=",".join(RECIPES), help=f"comma list of {', '.join(RECIPES)}")
    p.add_argument("--corpus", type=Path, default=Path("data/synth"), help="prepared corpus directory")
    p.add_argument("--steps", type=int, default=2000, help="schedule length (warm-up and decay), every recipe")
    p.add_argument("--eval-interval", type=int, default=25)
    p.add_argument("--max-cpu-seconds", type=float, default=480.0, help="CPU allowance per run")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU seconds = seconds on one core)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs/recipe_study"))
    p.add_argument("--out", type=Path, default=Path("results/recipe_study"))
    p.add_argument("--probe", default="", help="comma list of recipes whose checkpoints are probed at the end")
    p.add_argument("--probe-seeds", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    try:
        specs = [s for s in a.upstream.split(",") if s]
        for s in specs:
            if not family_of(s)[0].pretrainable:
                raise ValueError(f"--upstream {s}: not a pretrainable upstream")
        recipes = [r for r in a.recipes.split(",") if r]
        if bad := [r for r in recipes if r not in RECIPES]:
            raise ValueError(f"--recipes: unknown {bad}; valid: {', '.join(RECIPES)}")
        probe = [r for r in a.probe.split(",") if r]
        if bad := [r for r in probe if r not in recipes]:
            raise ValueError(f"--probe: {bad} not among --recipes")
        if a.steps < 1 or a.eval_interval < 1 or a.max_cpu_seconds <= 0 or a.threads < 1:
            raise ValueError("--steps, --eval-interval, --threads must be >= 1 and --max-cpu-seconds > 0")
        if not (a.corpus / "pretrain.jsonl").is_file():
            raise ValueError(f"--corpus {a.corpus}: not a prepared corpus with a pretrain split "
                             f"(python -m corpora prepare synth --out {a.corpus})")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    rows, curves, ckpts = [], {}, {}
    for spec in specs:
        for recipe in recipes:
            ckpt = train_recipe(spec, recipe, a.corpus, a.runs_dir, a.steps, a.eval_interval, a.max_cpu_seconds,
                                not a.no_progress)
            rows.append(recipe_row(spec, recipe, ckpt))
            ckpts[(spec, recipe)] = ckpt
            curves[(spec, recipe)] = (loss_curve(ckpt), rows[-1]["yardstick"])
    table = speedups(pd.DataFrame(rows))
    a.out.mkdir(parents=True, exist_ok=True)
    probes = None
    if probe:
        torch.set_num_threads(os.cpu_count() or 1)  # the timed part is over: the probes and extraction may use every core
        probes = probe_checkpoints({k: v for k, v in ckpts.items() if k[1] in probe}, a.corpus, a.out, a.probe_seeds)
        table = table.merge(probes, on=["upstream", "recipe"], how="left")
    atomic_write_text(a.out / "recipes.csv", table.to_csv(index=False))
    plot_curves(curves, a.out / "recipes.png")
    command = "python -m analysis.recipe_study " + shlex.join(sys.argv[1:] if argv is None else argv)
    num = lambda v, f: "-" if v is None or pd.isna(v) else format(v, f)  # noqa: E731
    show = pd.DataFrame({
        "upstream": table["upstream"], "recipe": table["recipe"], "lr": table["lr"], "batch": table["batch"],
        "R": table["stack"], "span": table["mask_span"], "Pre-LN": table["pre_ln"].map({True: "yes", False: "no"}),
        "yardstick": table["yardstick"].map(lambda v: f"{v:.3f}"),
        "best L1": table["best_val_l1"].map(lambda v: f"{v:.3f}"),
        "CPU s to yardstick": [num(t, ".0f") if r else f"> {c:.0f}" for r, t, c in
                               zip(table["reached"], table["cpu_s_to_yardstick"], table["cpu_seconds"])],
        "frames to yardstick": table["frames_to_yardstick"].map(lambda v: num(v, ",.0f")),
        "speed-up vs s3prl": [("≥ " if b else "") + num(v, ".1f") + "x" if v is not None and not pd.isna(v) else "-"
                              for v, b in zip(table.get("speedup_vs_s3prl", [None] * len(table)),
                                              table.get("speedup_is_bound", [False] * len(table)))]})
    for task in ("phone_linear", "speaker_utterance"):
        if task in table:
            show[f"{task} ws (%)"] = table[task].map(lambda v: num(v, ".1f"))
    if probes is not None:
        mel = probes[probes["upstream"] == "mel"]
        show.attrs["mel"] = "; ".join(f"{t} {mel[t].iloc[0]:.1f}" for t in ("phone_linear", "speaker_utterance")
                                      if t in mel and len(mel))
    note = f"\nmel (last layer): {show.attrs['mel']}\n" if show.attrs.get("mel") else ""
    atomic_write_text(a.out / "recipes.md", to_markdown(show) + note + f"\n`{command}` ({a.threads} thread(s); "
                      f"{time.perf_counter() - t0:.0f} s wall for this invocation)\n")
    print(to_markdown(show))
    return 0


if __name__ == "__main__":
    sys.exit(main())
