"""Does more pretraining help? Probe checkpoints of one upstream pretrained for different budgets.

    python -m analysis.pretrain_budget --upstream mockingjay:small --corpus data/synth --steps 2000 \\
        --snapshots 500,1000 --out results/pretrain_budget
    python -m analysis.pretrain_budget --upstream mockingjay:small --checkpoints checkpoints/mockingjay-small,\\
        runs/budget/mockingjay-small-4x,runs/budget/mockingjay-small-16x --fractions 0.01,1 --out results/budget_curve

Snapshots: one pretraining run of `--steps` (the main job's budget otherwise: batch, crops, lr, warm-up, linear
decay over the whole run) is stopped at each snapshot step and copied (RUNS/step-N, RUNS = --runs-dir).
Checkpoints (`--checkpoints`): finished runs of the same upstream, each pretrained on its own schedule (`python -m
pretrain ... --steps N`): a budget curve, where a snapshot of a longer schedule is not the shorter run (its learning
rate had not decayed yet). Every checkpoint and two references (mel, and the random-init control of the same
architecture: 0 frames of pretraining) are probed at the label fractions `--fractions` (`--tasks`, modes last and
weighted_sum, `--seeds`) by the benchmark harness into OUT/runs.csv. Writes OUT/budget.csv and OUT/budget.md (test
metric per checkpoint, mean and 95 % CI over seeds, with its pretraining frames, held-out masked L1 and the L1's
interpolation yardstick) and OUT/pretrain_budget.png (score against pretraining frames). Resumable: finished
snapshots and probe rows are reused.
"""
from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from benchmark.inputs.corpus import resolve_corpus
from benchmark.plan.presets import main_job
from benchmark.plan.runs import parse_fractions
from benchmark.record.aggregate import aggregate_runs, read_runs
from benchmark.report.plots import interval, metric_display, plt, save_figure, with_keys
from benchmark.report.tables import to_markdown
from benchmark.run.runner import record_command, run_benchmark
from core.io import atomic_write_text
from downstream.tasks import TASKS
from pretrain import default_budget, run_pretraining
from pretrain.config import with_overrides
from upstream.checkpoint import META_FILE, checkpoint_hash, read_meta
from upstream.registry import family, family_of


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


def reference_upstreams(fam, checkpoints) -> tuple[str, ...]:
    """What checkpoints of family `fam` are compared against: the input features (10-ms mel, and mel on the
    checkpoints' own frames where they stack: the papers' headline is a comparison at matched frame rate) and the
    same architecture untrained (the family's random-init control)."""
    stacked = sorted({f"stack{read_meta(p)['feature'].get('downsample', 1)}" for p in checkpoints}
                     & set(family("mel").presets))
    return tuple(n for n in ("mel", *(f"mel:{k}" for k in stacked), fam.control) if n)


def budget_checkpoints(dirs: str, family: str) -> dict[int, Path]:
    """{pretraining step: directory} of finished pretraining runs of `family` (comma list), each on its own schedule;
    ValueError naming the directory that is not one."""
    out: dict[int, Path] = {}
    for d in (Path(x) for x in dirs.split(",") if x.strip()):
        meta = read_meta(d)
        if meta.get("upstream") != family:
            raise ValueError(f"--checkpoints {d}: holds {meta.get('upstream')}, expected {family}")
        if not meta.get("complete"):
            raise ValueError(f"--checkpoints {d}: pretraining stopped at step {meta.get('step')} of "
                             f"{(meta.get('pretrain_config') or {}).get('steps')}; finish it with `python -m pretrain "
                             f"... --resume` (a snapshot is not the shorter budget's run)")
        if meta["step"] in out:
            raise ValueError(f"--checkpoints {d} and {out[meta['step']]}: both pretrained for {meta['step']} steps; "
                             f"give one checkpoint per budget")
        out[int(meta["step"])] = d
    if not out:
        raise ValueError("--checkpoints: no directory given")
    return out


def budget_table(runs: pd.DataFrame, snaps: dict[int, Path], references: tuple[str, ...] = ("mel",),
                 fractions: tuple[float, ...] = (1.0,)) -> pd.DataFrame:
    """One row per (task, fraction, mode, checkpoint or reference upstream) at the label fractions `fractions`: the
    harness's aggregation over seeds (benchmark.record.aggregate), with each checkpoint's pretraining step and frames,
    held-out masked L1 and its yardsticks beside it. `snaps`: {pretraining step: checkpoint directory}."""
    step_of = {checkpoint_hash(p)[:16]: s for s, p in snaps.items()}
    meta = {s: read_meta(p) for s, p in snaps.items()}
    names = {r.partition(":")[0] for r in references}
    runs = runs[runs["fraction"].isin(fractions) & (runs["ckpt_hash"].isin(step_of) | runs["upstream"].isin(names))]
    agg = aggregate_runs(runs)
    agg["pretrain_step"] = agg["ckpt_hash"].map(step_of)
    base = {s: m.get("val_baselines") or {} for s, m in meta.items()}
    agg["pretrain_frames"] = agg["pretrain_step"].map({s: m.get("pretrain_frames") for s, m in meta.items()}).fillna(
        agg["pretrain_frames"])
    agg["val_l1"] = agg["pretrain_step"].map({s: m.get("val_loss") for s, m in meta.items()})
    agg["val_l1_interpolate"] = agg["pretrain_step"].map({s: b.get("interpolate") for s, b in base.items()})
    agg["val_l1_mean"] = agg["pretrain_step"].map({s: b.get("mean") for s, b in base.items()})
    return agg.sort_values(["task", "fraction", "mode", "pretrain_step", "upstream"],
                           na_position="first").reset_index(drop=True)


def plot_budget(table: pd.DataFrame, spec: str, path: Path) -> Path:
    """Left: each checkpoint's held-out masked L1 against its pretraining frames, with the yardsticks. Then one panel
    per (task, fraction): test metric against pretraining frames (log scale; mean and 95 % CI over seeds, clipped to
    the metric's range), the references (mel, the random-init control = 0 frames) as horizontal lines."""
    table, colors = with_keys(table)  # mel:default and mel:stack3 told apart, each its own colour
    cells = list(dict.fromkeys(zip(table["task"], table["fraction"])))
    fig, axes = plt.subplots(1, 1 + len(cells), figsize=(4.6 * (1 + len(cells)), 4.2), squeeze=False)
    ax = axes[0][0]
    pts = table.dropna(subset=["pretrain_step"]).drop_duplicates("pretrain_step").sort_values("pretrain_frames")
    ax.plot(pts["pretrain_frames"], pts["val_l1"], "o-", color="#1f77b4", label=f"{spec} (held-out)")
    if len(pts) and pd.notna(pts["val_l1_interpolate"].iloc[0]):
        ax.axhline(pts["val_l1_mean"].iloc[0], color="#777777", ls=":", label="predict the corpus mean")
        ax.axhline(pts["val_l1_interpolate"].iloc[0], color="#2ca02c", ls="--", label="interpolate unmasked neighbours")
    ax.set(xscale="log", xlabel="pretraining frames", ylabel="masked L1 (normalised log-mel)", title="Reconstruction")
    ax.legend(fontsize=8)
    for ax, (task, fraction) in zip(axes[0][1:], cells):
        t = table[(table["task"] == task) & (table["fraction"] == fraction)]
        label, scale = metric_display(t["metric"].iloc[0])
        for mode, style in (("last", "o-"), ("weighted_sum", "s--")):
            m = t[(t["mode"] == mode) & t["pretrain_step"].notna()].sort_values("pretrain_frames")
            if len(m):
                mean = m["test_mean"].to_numpy(float) * scale
                lo, hi = interval(m["metric"].iloc[0], mean, m["test_ci95"].fillna(0).to_numpy(float) * scale, scale)
                ax.errorbar(m["pretrain_frames"], mean, yerr=[mean - lo, hi - mean], fmt=style, capsize=3,
                            label=f"{spec}, {mode}")
        for (up, key, mode), r in t[t["pretrain_step"].isna()].groupby(["upstream", "key", "mode"], sort=False):
            what = " (input)" if up == "mel" else " (random init, 0 frames)"
            ax.axhline(r["test_mean"].iloc[0] * scale, color=colors[key],
                       ls=":" if mode == "last" else "-.", label=f"{key}, {mode}{what}")
        ax.set(xscale="log", xlabel="pretraining frames", ylabel=f"test {label}",
               title=f"{task} @ {fraction * 100:g} % labels")
        ax.legend(fontsize=6, loc="best")
    fig.suptitle(f"Pretraining budget: {spec} (mean and 95 % CI over seeds)")
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--upstream", default="mockingjay:small")
    p.add_argument("--corpus", default="synth", help="corpus name or prepared corpus directory")
    p.add_argument("--steps", type=int, default=2000, help="length of the pretraining schedule")
    p.add_argument("--snapshots", default="500,1000", help="comma list of steps to probe besides the last")
    p.add_argument("--checkpoints", default=None,
                   help="comma list of finished pretraining runs of --upstream, one per budget (no pretraining here; "
                        "--steps and --snapshots are not used)")
    p.add_argument("--fractions", default="1", help="comma list of label fractions to probe (default 1)")
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
        fractions = parse_fractions(a.fractions)
        given = None if a.checkpoints is None else budget_checkpoints(a.checkpoints, fam.name)
    except ValueError as e:  # CheckpointError is one
        print(f"error: {e}", file=sys.stderr)
        return 2
    job = main_job()
    job = replace(job, device=a.device or job.device, progress=not a.no_progress)
    if a.probe_steps is not None:
        job = replace(job, probe=job.probe.with_steps(a.probe_steps),
                      task_probes={t: pc.with_steps(a.probe_steps) for t, pc in job.task_probes.items()})
    corpus = resolve_corpus(a.corpus, a.data_dir, quick=False)
    t0 = time.perf_counter()
    snaps = given or snapshot_checkpoints(a.upstream, corpus, a.runs_dir, a.steps, snapshots, job.device, job.progress)
    base = replace(job, corpus=str(corpus.root), tasks=tuple(a.tasks.split(",")), fractions=fractions, seeds=a.seeds,
                   finetune_ends=False, results_dir=a.out, cache_dir=a.cache_dir, report=False)
    references = reference_upstreams(fam, snaps.values())
    done = run_benchmark(replace(base, upstreams=references)).runs_done
    for s, snap in snaps.items():
        done += run_benchmark(replace(base, upstreams=(a.upstream,), ckpts={name: str(snap)})).runs_done
    rows = read_runs(a.out / "runs.csv")
    table = budget_table(rows, snaps, references, fractions)
    atomic_write_text(a.out / "budget.csv", table.to_csv(index=False))
    num = lambda v, f: "-" if pd.isna(v) else format(v, f)  # noqa: E731
    show = pd.DataFrame({
        "task": table["task"], "labels (%)": (table["fraction"] * 100).map(lambda v: f"{v:g}"), "mode": table["mode"],
        "upstream": with_keys(table)[0]["key"],
        "pretraining step": table["pretrain_step"].map(lambda v: num(v, ".0f")),
        "pretraining frames": table["pretrain_frames"].map(lambda v: num(v, ",.0f")),
        "test (%)": [f"{m * 100:.1f} ± {num(c * 100, '.1f')}" for m, c in zip(table["test_mean"], table["test_ci95"])],
        "seeds": table["n_seeds"], "held-out masked L1": table["val_l1"].map(lambda v: num(v, ".3f")),
        "interpolation L1": table["val_l1_interpolate"].map(lambda v: num(v, ".3f"))})
    command = "python -m analysis.pretrain_budget " + shlex.join(sys.argv[1:] if argv is None else argv)
    atomic_write_text(a.out / "budget.md", to_markdown(show) + "\nTest metric, mean ± 95 % CI over seeds; the random-init control is 0 frames of "
                                           f"pretraining. `{command}`\n")
    plot_budget(table, a.upstream, a.out / "pretrain_budget.png")
    if done:  # as the harness does: a rerun that trained nothing is not a new result
        record_command(a.out, command, done, time.perf_counter() - t0, job.device)
    print(to_markdown(show))
    return 0


if __name__ == "__main__":
    sys.exit(main())
