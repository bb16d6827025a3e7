"""Does more pretraining help? Pretrain one upstream with snapshots along one schedule, probe every snapshot.

    python -m analysis.pretrain_budget --upstream mockingjay:small --corpus data/synth --steps 2000 \\
        --snapshots 500,1000 --out results/pretrain_budget

One pretraining run of `--steps` (the main job's budget otherwise: batch, crops, lr, warm-up, linear decay
over the whole run) is stopped at each snapshot step and copied (RUNS/step-N, RUNS = --runs-dir). Every
snapshot and two references (mel, and the random-init control of the same architecture) are probed at 100 %
of the labels (`--tasks`, modes last and weighted_sum, `--seeds`) by the benchmark harness into OUT/runs.csv.
Writes OUT/budget.csv and OUT/budget.md (probe accuracy per snapshot, mean and 95 % CI over seeds, with the
held-out masked L1 and its interpolation yardstick) and OUT/pretrain_budget.png. Resumable: finished
snapshots and probe rows are reused.
"""
from __future__ import annotations

import argparse
import csv
import shlex
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from benchmark.inputs.corpus import resolve_corpus
from benchmark.plan.presets import main_job
from benchmark.record.aggregate import aggregate_runs, read_runs
from benchmark.report.plots import UPSTREAM_COLORS, metric_display, plt, save_figure
from benchmark.report.tables import to_markdown
from benchmark.run.runner import record_command, run_benchmark
from core.io import atomic_write_text
from downstream.tasks import TASKS
from pretrain import default_budget, run_pretraining
from pretrain.config import with_overrides
from upstream.checkpoint import META_FILE, checkpoint_hash, read_meta
from upstream.registry import family_of


def snapshot_checkpoints(spec: str, corpus, runs: Path, steps: int, snapshots: list[int], device: str,
                         progress: bool = True) -> dict[int, Path]:
    """Train `spec` for `steps` in RUNS/train, copying the checkpoint at every snapshot step; reuse finished ones."""
    cfg = with_overrides(default_budget(False), steps=steps)
    train_dir, done = runs / "train", {}
    for s in sorted(set(snapshots) | {steps}):
        snap = runs / f"step-{s}"
        if not (snap / META_FILE).is_file():
            run_pretraining(spec, corpus, train_dir, cfg, resume=(train_dir / META_FILE).is_file(), stop_at_step=s,
                            device=device, show_progress=progress)
            tmp = snap.with_name(snap.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(train_dir, tmp)
            tmp.rename(snap)  # a snapshot directory exists only once it is whole
        if read_meta(snap)["step"] != s:
            raise RuntimeError(f"{snap} holds step {read_meta(snap)['step']}, expected {s}: delete it and rerun")
        done[s] = snap
    return done


def val_curve(train_dir: Path) -> pd.DataFrame:
    with open(train_dir / "loss.csv") as f:
        rows = [(int(r["step"]), float(r["val_loss"])) for r in csv.DictReader(f) if r["val_loss"]]
    return pd.DataFrame(rows, columns=["step", "val_l1"])


def budget_table(runs: pd.DataFrame, snaps: dict[int, Path], references: tuple[str, ...] = ("mel",)) -> pd.DataFrame:
    """One row per (task, mode, snapshot step or reference upstream) at 100 % labels: the harness's aggregation
    over seeds (benchmark.record.aggregate), with each snapshot's step and held-out masked L1 beside it."""
    step_of = {checkpoint_hash(p)[:16]: s for s, p in snaps.items()}
    meta = {s: read_meta(p) for s, p in snaps.items()}
    runs = runs[(runs["fraction"] == 1.0) & (runs["ckpt_hash"].isin(step_of) | runs["upstream"].isin(references))]
    agg = aggregate_runs(runs)
    agg["pretrain_step"] = agg["ckpt_hash"].map(step_of)
    base = {s: m.get("val_baselines") or {} for s, m in meta.items()}
    agg["val_l1"] = agg["pretrain_step"].map({s: m.get("val_loss") for s, m in meta.items()})
    agg["val_l1_interpolate"] = agg["pretrain_step"].map({s: b.get("interpolate") for s, b in base.items()})
    agg["val_l1_mean"] = agg["pretrain_step"].map({s: b.get("mean") for s, b in base.items()})
    return agg.sort_values(["task", "mode", "pretrain_step", "upstream"], na_position="first").reset_index(drop=True)


def plot_budget(table: pd.DataFrame, curve: pd.DataFrame, spec: str, path: Path) -> Path:
    tasks = list(dict.fromkeys(table["task"]))
    fig, axes = plt.subplots(1, 1 + len(tasks), figsize=(5.2 * (1 + len(tasks)), 4.2))
    ax = axes[0]
    ax.plot(curve["step"], curve["val_l1"], "o-", color="#1f77b4", label=f"{spec} (held-out)")
    base = table.dropna(subset=["val_l1_interpolate"]).iloc[0]
    ax.axhline(base["val_l1_mean"], color="#777777", ls=":", label="predict the corpus mean")
    ax.axhline(base["val_l1_interpolate"], color="#2ca02c", ls="--", label="interpolate unmasked neighbours")
    ax.set(xlabel="pretraining step", ylabel="masked L1 (normalised log-mel)", title="Reconstruction")
    ax.legend(fontsize=8)
    for ax, task in zip(axes[1:], tasks):
        t = table[table["task"] == task]
        label, scale = metric_display(t["metric"].iloc[0])
        for mode, style in (("last", "o-"), ("weighted_sum", "s--")):
            m = t[(t["mode"] == mode) & t["pretrain_step"].notna()]
            if len(m):
                ax.errorbar(m["pretrain_step"], m["test_mean"] * scale, yerr=(m["test_ci95"].fillna(0) * scale),
                            fmt=style, capsize=3, label=f"{spec}, {mode}")
        for (up, mode), r in t[t["pretrain_step"].isna()].groupby(["upstream", "mode"], sort=False):
            ax.axhline(r["test_mean"].iloc[0] * scale, color=UPSTREAM_COLORS.get(up, "#777777"),
                       ls=":" if mode == "last" else "-.", label=f"{up}, {mode}" + (" (input)" if up == "mel" else ""))
        ax.set(xlabel="pretraining step", ylabel=f"test {label}", title=f"{task} @ 100 % labels")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Pretraining budget: {spec}, snapshots of one schedule (mean and 95 % CI over seeds)")
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--upstream", default="mockingjay:small")
    p.add_argument("--corpus", default="synth", help="corpus name or prepared corpus directory")
    p.add_argument("--steps", type=int, default=2000, help="length of the pretraining schedule")
    p.add_argument("--snapshots", default="500,1000", help="comma list of steps to probe besides the last")
    p.add_argument("--tasks", default="phone_linear,speaker_utterance")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--probe-steps", type=int, default=None, help="frozen-probe steps (default: the main job's budgets)")
    p.add_argument("--out", type=Path, default=Path("results/pretrain_budget"))
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--cache-dir", type=Path, default=Path("cache/features"))
    p.add_argument("--runs-dir", type=Path, default=Path("runs/pretrain_budget"), help="checkpoints (large; not results)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    try:
        fam, _ = family_of(a.upstream)
        if not fam.pretrainable:
            raise ValueError(f"--upstream {a.upstream}: not a pretrainable upstream")
        name = fam.name
        try:
            snapshots = [int(s) for s in a.snapshots.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"--snapshots expects a comma list of steps, got {a.snapshots!r}") from None
        bad = [t for t in a.tasks.split(",") if t not in TASKS]
        if bad:  # checked before pretraining, not after it
            raise ValueError(f"unknown task(s) {bad}; valid: {', '.join(TASKS)}")
        if a.steps < 1 or any(not 0 < s <= a.steps for s in snapshots):
            raise ValueError(f"--snapshots must lie in 1..--steps ({a.steps}), got {a.snapshots}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    job = main_job()
    job = replace(job, device=a.device or job.device, progress=not a.no_progress)
    if a.probe_steps is not None:
        job = replace(job, probe=job.probe.with_steps(a.probe_steps),
                      task_probes={t: pc.with_steps(a.probe_steps) for t, pc in job.task_probes.items()})
    corpus = resolve_corpus(a.corpus, a.data_dir, quick=False)
    t0 = time.perf_counter()
    snaps = snapshot_checkpoints(a.upstream, corpus, a.runs_dir, a.steps, snapshots, job.device, job.progress)
    base = replace(job, corpus=str(corpus.root), tasks=tuple(a.tasks.split(",")), fractions=(1.0,), seeds=a.seeds,
                   finetune_ends=False, results_dir=a.out, cache_dir=a.cache_dir, report=False)
    references = tuple(n for n in ("mel", fam.control) if n)  # the input features and the same architecture untrained
    done = run_benchmark(replace(base, upstreams=references)).runs_done
    for s, snap in snaps.items():
        done += run_benchmark(replace(base, upstreams=(a.upstream,), ckpts={name: str(snap)})).runs_done
    rows = read_runs(a.out / "runs.csv")
    table = budget_table(rows, snaps, references)
    atomic_write_text(a.out / "budget.csv", table.to_csv(index=False))
    num = lambda v, f: "-" if pd.isna(v) else format(v, f)  # noqa: E731
    show = pd.DataFrame({
        "task": table["task"], "mode": table["mode"], "upstream": table["upstream"],
        "pretraining step": table["pretrain_step"].map(lambda v: num(v, ".0f")),
        "test (%)": [f"{m * 100:.1f} ± {num(c * 100, '.1f')}" for m, c in zip(table["test_mean"], table["test_ci95"])],
        "seeds": table["n_seeds"], "held-out masked L1": table["val_l1"].map(lambda v: num(v, ".3f")),
        "interpolation L1": table["val_l1_interpolate"].map(lambda v: num(v, ".3f"))})
    command = "python -m analysis.pretrain_budget " + shlex.join(sys.argv[1:] if argv is None else argv)
    atomic_write_text(a.out / "budget.md", to_markdown(show) + f"\nTest metric at 100 % of the labels, mean ± 95 % CI over seeds. `{command}`\n")
    plot_budget(table, val_curve(a.runs_dir / "train"), a.upstream, a.out / "pretrain_budget.png")
    if done:  # as the harness does: a rerun that trained nothing is not a new result
        record_command(a.out, command, done, time.perf_counter() - t0, job.device)
    print(to_markdown(show))
    return 0


if __name__ == "__main__":
    sys.exit(main())
