"""Does one change to the pretraining recipe change what a checkpoint keeps? A baseline and an intervention
checkpoint of one upstream (same architecture, budget and seed; the recipe differs in the fields the table names),
probed side by side, with the random-init control and the input features as references.

    python -m analysis.intervention --upstream mockingjay:small --baseline checkpoints/mockingjay-small \\
        --intervention runs/intervention/mockingjay-small-unmasked0.5 --fractions 0.01,1 \\
        --out results/speaker_intervention

Probes (the main job's probe settings, `--seeds` seeds): `--tasks` on the last layer and the weighted sum, and
`speaker_utterance` on every layer (mode `layers`: where speaker identity sits). Writes OUT/runs.csv (the harness's
rows, resumable), OUT/intervention.csv and OUT/intervention.md (per cell: both checkpoints' test metric, mean and
95 % CI over seeds, the gap and whether it is beyond noise by benchmark.report.paired's rule: a paired test on the
test utterances and the seeds' spread), and OUT/intervention.png (per-layer speaker identification, and phones).
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.pretrain_budget import reference_upstreams
from benchmark.inputs.corpus import resolve_corpus
from benchmark.plan.presets import main_job
from benchmark.plan.runs import parse_fractions
from benchmark.record.aggregate import aggregate_runs, read_runs
from benchmark.report.paired import beyond_noise, cell_outcomes
from benchmark.report.plots import interval, metric_display, plt, save_figure
from benchmark.report.tables import to_markdown
from benchmark.run.runner import record_command, run_benchmark
from core.io import atomic_write_text
from downstream.tasks import TASKS
from pretrain.train import as_read
from upstream.checkpoint import checkpoint_hash, read_meta
from upstream.registry import family_of

SIDES = ("baseline", "intervention")
# the input normalisation's corpus statistics: checkpoints of one corpus written by different versions of the toolkit
# store them rounded differently (~1e-6 relative); larger differences are another corpus
NORM_STATS = ("norm_mean", "norm_std")
STATS_RTOL = 1e-4


def stats_gap(pairs: list[tuple]) -> float:
    """The largest relative difference between two checkpoints' normalisation statistics (inf if one lacks them)."""
    gap = 0.0
    for a, b in pairs:
        if a is None and b is None:
            continue
        if a is None or b is None or len(a) != len(b):
            return float("inf")
        x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        gap = max(gap, float((np.abs(x - y) / np.maximum(np.abs(x), 1e-8)).max(initial=0.0)))
    return gap
CELL = ["task", "fraction", "mode", "layer"]


def recipe_difference(baseline: Path, intervention: Path, family: str) -> dict[str, tuple]:
    """{pretraining field: (baseline value, intervention value)} where the two finished checkpoints' recipes differ;
    ValueError when they are not two finished runs of `family` with the same architecture and budget, or do not
    differ at all."""
    metas = {}
    for side, d in zip(SIDES, (baseline, intervention)):
        meta = read_meta(d)
        if meta.get("upstream") != family:
            raise ValueError(f"--{side} {d}: holds {meta.get('upstream')}, expected {family}")
        if not meta.get("complete"):
            raise ValueError(f"--{side} {d}: pretraining stopped at step {meta.get('step')}; finish it with "
                             f"`python -m pretrain ... --resume`")
        metas[side] = as_read(meta)  # configs compared as the dataclasses read them (fields added later)
    b, i = metas["baseline"], metas["intervention"]
    fb, fi = (dict(m.get("feature") or {}) for m in (b, i))
    stats = [(fb.pop(k, None), fi.pop(k, None)) for k in NORM_STATS]
    for key, (vb, vi) in {"encoder": (b.get("encoder"), i.get("encoder")), "feature": (fb, fi),
                          "step": (b.get("step"), i.get("step"))}.items():
        if vb != vi:
            raise ValueError(f"--baseline {baseline} and --intervention {intervention} differ in {key}: "
                             f"compare one recipe change at the same architecture and budget")
    if stats_gap(stats) > STATS_RTOL:
        raise ValueError(f"--baseline {baseline} and --intervention {intervention} normalise their input with "
                         f"different corpus statistics (relative difference {stats_gap(stats):.1e}): pretrain both "
                         f"on the same corpus")
    cb, ci = b["pretrain_config"], i["pretrain_config"]
    diff = {k: (cb.get(k), ci.get(k)) for k in sorted(set(cb) | set(ci)) if k != "recipe" and cb.get(k) != ci.get(k)}
    if not diff:
        raise ValueError(f"--baseline {baseline} and --intervention {intervention} were pretrained with the same recipe")
    return diff


def compare(runs: pd.DataFrame, hashes: dict[str, str], results_dir: Path) -> pd.DataFrame:
    """One row per cell (task, fraction, mode, layer) probed on both checkpoints (`hashes`: {side: ckpt_hash[:16]}):
    each side's mean, 95 % CI and seeds, the gap (intervention - baseline, in displayed points, higher = better), and
    whether it is beyond noise (benchmark.report.paired.beyond_noise)."""
    runs = runs[runs["ckpt_hash"].isin(hashes.values())]
    agg = aggregate_runs(runs)
    agg["units"] = cell_outcomes(agg, runs, results_dir)
    agg["layer"] = agg["layer"].fillna(-1)
    side_of = {h: s for s, h in hashes.items()}
    agg["side"] = agg["ckpt_hash"].map(side_of)
    a, b = (agg[agg["side"] == s].set_index(CELL) for s in SIDES)
    m = a.merge(b, left_index=True, right_index=True, suffixes=("_b", "_i")).reset_index()
    scale = np.array([metric_display(str(x))[1] for x in m["metric_b"]], dtype=float)
    m["gap"] = (m["test_mean_i"] - m["test_mean_b"]).to_numpy(float) * scale
    m["ci"] = np.sqrt(m["test_ci95_b"].astype(float) ** 2 + m["test_ci95_i"].astype(float) ** 2).to_numpy() * scale
    m["beyond_noise"] = [beyond_noise(ub, ui, g, c, int(nb), int(ni)) for ub, ui, g, c, nb, ni in
                         zip(m["units_b"], m["units_i"], m["gap"], m["ci"], m["n_seeds_b"], m["n_seeds_i"])]
    return m.sort_values(CELL).reset_index(drop=True)


def references(runs: pd.DataFrame, names: tuple[str, ...]) -> pd.DataFrame:
    """The reference upstreams' cells (the control, mel): mean test metric per (upstream, preset) and cell."""
    agg = aggregate_runs(runs[runs["upstream"].isin({n.partition(":")[0] for n in names})])
    agg["layer"] = agg["layer"].fillna(-1)
    return agg


def ref_cell(task: str, fraction: float, mode: str, layer: float) -> tuple:
    """Where a reference's cell sits beside a checkpoint's: its last layer beside the last layer whatever their
    depths (mel has one hidden state), its layer K beside layer K."""
    return (task, float(fraction), mode, int(layer) if mode == "layer" else None)


def markdown(table: pd.DataFrame, refs: pd.DataFrame, diff: dict[str, tuple], losses: dict[str, float | None],
             command: str) -> str:
    num = lambda v: f"{v:.1f}"  # noqa: E731
    pm = lambda m, c, s: f"{m * s:.1f} ± {'-' if pd.isna(c) else num(c * s)}"  # noqa: E731
    ref_cols: dict[str, list[str]] = {}
    keys = sorted({(u, p) for u, p in zip(refs["upstream"], refs["preset"])})
    for u, p in keys:
        r = refs[(refs["upstream"] == u) & (refs["preset"] == p)]
        score = {ref_cell(*c): m for c, m in zip(zip(r["task"], r["fraction"], r["mode"], r["layer"]), r["test_mean"])}
        ref_cols[f"{u}:{p}"] = [num(score[k] * 100) if (k := ref_cell(*c)) in score else "-" for c in
                                zip(table["task"], table["fraction"], table["mode"], table["layer"])]
    show = pd.DataFrame({
        "task": table["task"], "labels (%)": (table["fraction"] * 100).map(lambda v: f"{v:g}"),
        "mode": [f"layer {int(l)}" if m == "layer" else m for m, l in zip(table["mode"], table["layer"])],
        "baseline (%)": [pm(m, c, 100) for m, c in zip(table["test_mean_b"], table["test_ci95_b"])],
        "intervention (%)": [pm(m, c, 100) for m, c in zip(table["test_mean_i"], table["test_ci95_i"])],
        "gap": table["gap"].map(lambda v: f"{v:+.1f}"),
        "beyond noise": table["beyond_noise"].map({True: "yes", False: "no"}), **ref_cols})
    change = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in diff.items())
    loss = ", ".join(f"{s} {'-' if v is None else f'{v:.3f}'}" for s, v in losses.items())
    return (f"Recipe change: {change}. Held-out masked L1: {loss}.\n\n" + to_markdown(show) +
            "\nTest metric, mean ± 95 % CI over seeds; gap = intervention - baseline in points; beyond noise: a paired "
            "randomization test over test utterances at 5 % and outside the seeds' combined interval "
            f"(benchmark.report.paired). `{command}`\n")


def _by_layer(cells: pd.DataFrame, mean: str, ci: str) -> pd.DataFrame:
    """x position (the layer; the weighted sum one past the deepest), mean and CI of one upstream's cells in a panel:
    per-layer rows where the layers were probed, else the last layer at its depth."""
    lay = cells[cells["mode"] == "layer"]
    pts = lay if len(lay) else cells[cells["mode"] == "last"]
    depth = int(cells["layer"].max())
    ws = cells[cells["mode"] == "weighted_sum"].assign(layer=depth + 1)
    out = pd.concat([pts, ws])
    return pd.DataFrame({"x": out["layer"].astype(int), "mean": out[mean].astype(float),
                         "ci": out[ci].astype(float).fillna(0), "ws": out["mode"] == "weighted_sum"})


def plot(table: pd.DataFrame, refs: pd.DataFrame, path: Path) -> Path:
    """One panel per (task, fraction): test metric by layer (then the weighted sum) of both checkpoints (mean and
    95 % CI over seeds, clipped to the metric's range) and of the random-init control; the input features (mel, one
    hidden state) as horizontal lines."""
    cells = list(dict.fromkeys(zip(table["task"], table["fraction"])))
    fig, axes = plt.subplots(1, len(cells), figsize=(4.2 * len(cells), 4.0), squeeze=False)
    for ax, (task, fraction) in zip(axes[0], cells):
        t = table[(table["task"] == task) & (table["fraction"] == fraction)]
        metric = str(t["metric_b"].iloc[0])
        label, scale = metric_display(metric)
        r = refs[(refs["task"] == task) & (refs["fraction"] == fraction)]
        sides = [(_by_layer(t, f"test_mean{x}", f"test_ci95{x}"), name, color) for x, name, color in
                 (("_b", "baseline", "#1f77b4"), ("_i", "intervention", "#d62728"))]
        for (u, pre), cells_ref in r.groupby(["upstream", "preset"]):
            if cells_ref["layer"].max() > 0:  # the same architecture untrained
                sides.append((_by_layer(cells_ref, "test_mean", "test_ci95"), f"{u}:{pre}", "0.45"))
            else:  # the input features: one hidden state
                y = float(cells_ref[cells_ref["mode"] == "last"]["test_mean"].iloc[0]) * scale
                ax.axhline(y, color="0.6", ls=":", lw=1)
                ax.annotate(f"{u}:{pre}", (0, y), fontsize=6, color="0.35", va="bottom")
        for pts, name, color in sides:
            for ws, style in ((False, "o-"), (True, "s")):
                q = pts[pts["ws"] == ws]
                if len(q):
                    mean = q["mean"].to_numpy(float) * scale
                    lo, hi = interval(metric, mean, q["ci"].to_numpy(float) * scale, scale)
                    ax.errorbar(q["x"], mean, yerr=[mean - lo, hi - mean], fmt=style, color=color, capsize=3,
                                label=name if not ws else None)
        depth = int(t["layer"].max())
        ax.set_xticks(range(depth + 2), [*(f"layer {k}" for k in range(depth + 1)), "weighted\nsum"], fontsize=7)
        ax.set(ylabel=f"test {label}", title=f"{task} @ {fraction * 100:g} %")
        ax.legend(fontsize=7)
    fig.suptitle("One recipe change (intervention) vs baseline: mean and 95 % CI over seeds")
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--upstream", default="mockingjay:small")
    p.add_argument("--baseline", type=Path, required=True, help="finished pretraining run (the recipe as it is)")
    p.add_argument("--intervention", type=Path, required=True, help="finished run with one recipe change")
    p.add_argument("--corpus", default="synth", help="corpus name or prepared corpus directory")
    p.add_argument("--fractions", default="0.01,1", help="comma list of label fractions")
    p.add_argument("--tasks", default="phone_linear,speaker_utterance")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("results/speaker_intervention"))
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--cache-dir", type=Path, default=Path("cache/features"))
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    try:
        fam, _ = family_of(a.upstream)
        bad = [t for t in a.tasks.split(",") if t not in TASKS]
        if bad:
            raise ValueError(f"--tasks: unknown task(s) {bad}; valid: {', '.join(TASKS)}")
        fractions = parse_fractions(a.fractions)
        diff = recipe_difference(a.baseline, a.intervention, fam.name)
    except ValueError as e:  # CheckpointError is one
        print(f"error: {e}", file=sys.stderr)
        return 2
    job = main_job()
    job = replace(job, device=a.device or job.device, progress=not a.no_progress)
    corpus = resolve_corpus(a.corpus, a.data_dir, quick=False)
    t0 = time.perf_counter()
    base = replace(job, corpus=str(corpus.root), tasks=tuple(a.tasks.split(",")), fractions=fractions, seeds=a.seeds,
                   finetune_ends=False, results_dir=a.out, cache_dir=a.cache_dir, report=False)
    layers = replace(base, tasks=("speaker_utterance",), modes="layers")
    ckpts = dict(zip(SIDES, (a.baseline, a.intervention)))
    refs = reference_upstreams(fam, ckpts.values())
    done = sum(run_benchmark(replace(cfg, upstreams=refs)).runs_done for cfg in (base, layers))
    for d in ckpts.values():
        for cfg in (base, layers):
            done += run_benchmark(replace(cfg, upstreams=(a.upstream,), ckpts={fam.name: str(d)})).runs_done
    rows = read_runs(a.out / "runs.csv")
    rows = rows[rows["fraction"].isin(fractions)]
    table = compare(rows, {s: checkpoint_hash(d)[:16] for s, d in ckpts.items()}, a.out)
    ref_rows = references(rows, refs)
    atomic_write_text(a.out / "intervention.csv", table.drop(columns=["units_b", "units_i"]).to_csv(index=False))
    command = "python -m analysis.intervention " + shlex.join(sys.argv[1:] if argv is None else argv)
    losses = {s: read_meta(d).get("val_loss") for s, d in ckpts.items()}
    text = markdown(table, ref_rows, diff, losses, command)
    atomic_write_text(a.out / "intervention.md", text)
    plot(table, ref_rows, a.out / "intervention.png")
    if done:  # as the harness does: a rerun that trained nothing is not a new result
        record_command(a.out, command, done, time.perf_counter() - t0, job.device)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
