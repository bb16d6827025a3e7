"""Leaderboard tables per task (ranked, with cost columns and 95% CIs) as DataFrames, Markdown and CSV."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from benchmark.record.metrics import metric_of, second_metric_of, sign
from downstream.metrics import UTT_ACC, Metric
from benchmark.report.plots import metric_display
from core.io import atomic_write_text

LEADERBOARD_COLUMNS = ("rank", "upstream", "preset", "mode", "layer", "params", "pretrain_frames",
                       "pretrain_seconds", "pretrain_recipe", "metric", "fraction", "train_utts", "budget", "steps_mean", "n_converged",
                       "n_seeds", "test_mean",
                       "test_ci95", "test_std", "dev_mean", "test_utt_mean", "ckpt_hash")


def fmt_count(n: float) -> str:
    """3_600_000 -> '3.60 M'; 0 -> '0'; missing -> '-'."""
    if n is None or not math.isfinite(float(n)):
        return "-"
    n = float(n)
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f}"


def fmt_seconds(s: float) -> str:
    if s is None or not math.isfinite(float(s)):
        return "-"
    s = float(s)
    if s == 0:
        return "0"
    if s < 120:
        return f"{s:.0f} s"
    return f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h"


def fmt_score(mean: float, ci: float, scale: float) -> str:
    if not math.isfinite(mean):
        return "-"
    return f"{mean * scale:.2f} ± {ci * scale:.2f}" if math.isfinite(ci) else f"{mean * scale:.2f} (1 seed)"


UNCONVERGED = " †"  # marks a cell where some seed stopped at the step cap (or ran a fixed budget)


def fmt_budget(budget: str, steps: float, converged: float, seeds: float) -> str:
    """'converged, 1,234 steps' / '2/3 converged, ...' / 'fixed 150 steps (approximate)'."""
    if str(budget).startswith("steps="):
        return f"fixed {str(budget).removeprefix('steps=')} steps (approximate)"
    done = "converged" if converged >= seeds else f"{converged:.0f}/{seeds:.0f} converged"
    return f"{done}, {steps:,.0f} steps"


def unconverged_mark(budget: str, converged: float, seeds: float) -> str:
    return UNCONVERGED if str(budget) != "converge" or converged < seeds else ""


def to_markdown(df: pd.DataFrame) -> str:
    """Plain GitHub Markdown table (no extra dependency); pipes inside cells are escaped."""
    cells = [[str(c) for c in df.columns]] + [[str(v).replace("|", "\\|") for v in r] for r in df.itertuples(index=False)]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("---" for _ in df.columns) + "|")
    return "\n".join(lines) + "\n"


def leaderboard(agg: pd.DataFrame, task: str) -> pd.DataFrame:
    """Ranked rows of one task at its largest label fraction, best first in its metric's direction: every last /
    weighted_sum / finetune entry, plus each upstream's best single layer (chosen on DEV, so the test score stays an
    honest estimate)."""
    t = agg[agg["task"] == task]
    if t.empty:
        raise ValueError(f"leaderboard: no rows for task {task!r}; tasks present: {sorted(agg['task'].unique())}")
    t = t[t["fraction"] == t["fraction"].max()]
    k = sign(str(t["metric"].iloc[0]))  # sign x score grows as the score improves
    t = t.assign(_dev=t["dev_mean"] * k, _test=t["test_mean"] * k)
    main = t[t["mode"] != "layer"]
    lay = t[t["mode"] == "layer"]
    best = lay.loc[lay.groupby(["upstream", "preset"])["_dev"].idxmax()] if not lay.empty else lay
    out = pd.concat([main, best]).sort_values(["_test", "_dev"], ascending=False).reset_index(drop=True)
    out.insert(0, "rank", range(1, len(out) + 1))
    return out[list(LEADERBOARD_COLUMNS)]


def leaderboard_display(lb: pd.DataFrame, task: str = "") -> pd.DataFrame:
    """A ranked table's cells as text, as REPORT.md and the HTML site show them; the task's second score
    (benchmark.record.metrics.second_metric_of) gets a column where the rows hold it."""
    metric = str(lb["metric"].iloc[0])
    label, k = metric_display(metric)
    arrow = metric_of(metric).arrow
    utt = lb["test_utt_mean"].notna().any()
    show = pd.DataFrame({
        "rank": lb["rank"], "upstream": lb["upstream"] + ":" + lb["preset"],
        "mode": [m if m != "layer" else f"layer {int(layer)} (best on dev)" for m, layer in zip(lb["mode"], lb["layer"])],
        "params": lb["params"].map(fmt_count), "pretrain frames": lb["pretrain_frames"].map(fmt_count),
        "pretrain time": lb["pretrain_seconds"].map(fmt_seconds), "recipe": lb["pretrain_recipe"],
        "probe budget": [fmt_budget(b, st, c, n) for b, st, c, n in
                         zip(lb["budget"], lb["steps_mean"], lb["n_converged"], lb["n_seeds"])],
        f"test {label} {arrow}, mean ± 95% CI": [fmt_score(m, c, k) + unconverged_mark(b, nc, n) for m, c, k, b, nc, n in
                                         zip(lb["test_mean"], lb["test_ci95"], [k] * len(lb), lb["budget"],
                                             lb["n_converged"], lb["n_seeds"])],
        "dev": (lb["dev_mean"] * k).map(lambda v: f"{v:.2f}"), "seeds": lb["n_seeds"],
    })
    if utt:
        second = second_of(task)
        show[f"test {second.display[0].replace('accuracy', 'acc')} {second.arrow}"] = [
            fmt_second(second, v) for v in lb["test_utt_mean"]]
    return show


def second_of(task: str) -> Metric:
    """The metric of a task's second score (the rows' test_utt_metric); rows of an unregistered task held the
    utterance accuracy of frame logits."""
    return second_metric_of(task) or UTT_ACC


def fmt_second(metric: Metric, v: float) -> str:
    """A second score as displayed: % with 2 decimals, or the bare number with 3 (minDCF); '-' where missing."""
    if pd.isna(v):
        return "-"
    return f"{v * metric.display[1]:.2f}" if metric.percent else f"{v:.3f}"


def leaderboard_markdown(lb: pd.DataFrame, task: str = "") -> str:
    return to_markdown(leaderboard_display(lb, task))


def write_leaderboards(agg: pd.DataFrame, tables_dir: Path) -> dict[str, pd.DataFrame]:
    """Write tables_dir/<task>.md and .csv for every task; return {task: ranked table}."""
    out = {}
    for task in sorted(agg["task"].unique()):
        lb = leaderboard(agg, task)
        atomic_write_text(tables_dir / f"{task}.csv", lb.to_csv(index=False))
        atomic_write_text(tables_dir / f"{task}.md", leaderboard_markdown(lb, task))
        out[task] = lb
    return out
