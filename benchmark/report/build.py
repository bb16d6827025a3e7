"""results/REPORT.md, per-task leaderboards and plots, and the HTML leaderboard results/site/, rebuilt in seconds from
runs.csv (+ cost.csv, convergence.csv, attention/, the studies' folders). Both are rendered from the tables computed
here once."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from benchmark.record.aggregate import aggregate_runs, read_runs, standing_rows
from benchmark.record.schema import COMMAND_FILE
from benchmark.report import plots
from benchmark.report.checks import checks_markdown, science_checks
from benchmark.report.paired import cell_outcomes
from benchmark.report.convergence import CONVERGENCE_FILE, exempt_markdown, exempt_tasks, summary_markdown
from benchmark.report.cost import cost_markdown, read_costs
from benchmark.report.provenance import REPORT_COMMAND, command_lines, provenance_sentence
from benchmark.report.site.build import build_site
from benchmark.report.site.inputs import SITE_DIR, SiteInputs
from benchmark.report.site.overview import superb_markdown
from benchmark.report.tables import UNCONVERGED, write_leaderboards
from core.io import atomic_write_text

PLOT_NAMES = ("ablation.png", "layer_weights.png", "layer_probe.png")


def _costs(results_dir: Path) -> pd.DataFrame | None:
    path = results_dir / "cost.csv"
    return read_costs(path) if path.is_file() else None


def _cost_section(costs: pd.DataFrame | None) -> str:
    if costs is None:
        return "No `cost.csv` yet: measure it with `python -m benchmark.report.cost --out results/cost.csv ...`.\n"
    return cost_markdown(costs)


def _attention_section(results_dir: Path) -> str:
    att = results_dir / "attention"
    parts = []
    cmd = att / COMMAND_FILE
    if cmd.is_file():
        parts.append(f"Produced by `{cmd.read_text(encoding='utf-8').strip()}`.\n")
    for name, caption in (("attention_maps.png", "Attention maps of one utterance"),
                          ("attention_stats.png", "Per-layer attention statistics")):
        if (att / name).is_file():
            parts.append(f"![{caption}](attention/{name})\n")
    if (att / "attention_stats.md").is_file():
        parts.append((att / "attention_stats.md").read_text(encoding="utf-8"))
    if not parts:
        return ("No attention analysis yet: run `python -m analysis.attention --ckpt mockingjay=CKPT "
                "--ckpt aalbert=CKPT --audio FILE --corpus CORPUS --out results/attention`.\n")
    return "\n".join(parts)


def _nested(markdown: str) -> str:
    """A study's own markdown inside a level-3 section: its headings two levels down."""
    return "\n".join("##" + ln if ln.startswith("#") else ln for ln in markdown.splitlines()) + "\n"


def _study_sections(results_dir: Path) -> str:
    """The studies that explain the rows, where their outputs sit beside them: the pretraining recipe study
    (results/recipe_study/), the pretraining-budget curves (results/budget_curve*/, analysis.pretrain_budget), the
    speaker intervention (results/speaker_intervention/, analysis.intervention) and the attention-head classes and
    ablation (results/attention/heads/, and of the recipe study's checkpoints results/attention/heads_recipes/)."""
    parts = []
    budget = (("budget.md", None), ("pretrain_budget.png", "Probe scores vs pretraining frames"))
    for folder, title, files in (
            ("recipe_study", "Pretraining recipes: time to the interpolation yardstick",
             (("recipes.md", None), ("recipes.png", "Held-out masked L1 vs CPU seconds"))),
            ("budget_curve", "Pretraining budget: Mockingjay", budget),
            ("budget_curve_aalbert", "Pretraining budget: AALBERT", budget),
            ("speaker_intervention", "Speaker identity: a loss on unmasked frames too",
             (("intervention.md", None), ("intervention.png", "Baseline vs intervention per task and layer"))),
            ("attention/heads", "Attention heads: types and the global-head ablation",
             (("head_mix.md", None), ("head_mix.png", "Head types per layer"))),  # head_mix.md holds the ablation
            ("attention/heads_recipes", "Attention heads of the recipe study's checkpoints",
             (("head_mix.md", None), ("head_mix.png", "Head types per layer")))):
        d = results_dir / folder
        found = [(f, cap) for f, cap in files if (d / f).is_file()]
        if not found:
            continue
        parts.append(f"### {title}\n")
        if cmds := command_lines(d / COMMAND_FILE):
            parts.append("Produced by " + "; then ".join(f"`{c}`" for c in cmds) + ".\n")
        for f, cap in found:
            parts.append(f"![{cap}]({folder}/{f})\n" if cap else _nested((d / f).read_text(encoding="utf-8")))
    return "\n".join(parts)


def _budget_summary(runs: pd.DataFrame) -> str:
    conv = runs[runs["budget"] == "converge"]
    parts = []
    if len(conv):
        parts.append(f"{int(conv['converged'].sum())}/{len(conv)} runs trained until dev stopped improving "
                     f"(median {conv['steps'].median():,.0f} steps, max {conv['steps'].max():,.0f})")
    fixed = runs[runs["budget"] != "converge"]
    if len(fixed):
        parts.append(f"{len(fixed)} runs with a fixed step budget ({', '.join(sorted(set(fixed['budget'])))})")
    return "; ".join(parts) or "none"


def _certificate(results_dir: Path) -> pd.DataFrame | None:
    path = results_dir / CONVERGENCE_FILE
    return pd.read_csv(path, dtype={"run_id": str, "ckpt_hash": str}) if path.is_file() else None


def _convergence_section(table: pd.DataFrame | None, exempt: dict[str, str]) -> str:
    if table is None:
        return ("No `convergence.csv` yet: `python run_benchmark.py certify` fits a converged logistic-regression "
                "reference for every linear-probe row at the largest and smallest label fraction.\n"
                + exempt_markdown(exempt))
    return (f"Every linear probe against a logistic regression solved to tolerance on the same examples, its L2 "
            f"strength chosen on dev (`benchmark/report/convergence.py`; rows in `{CONVERGENCE_FILE}`): "
            + summary_markdown(table, exempt))


def build_report(results_dir: Path) -> Path:
    """Build results_dir/REPORT.md, tables/<task>.{md,csv}, plots/*.png and the HTML site (site/index.html and its
    pages) from results_dir/runs.csv; returns REPORT.md's path."""
    results_dir = Path(results_dir)
    runs = standing_rows(read_runs(results_dir / "runs.csv"))
    # panels and tables are per task: a task run on several corpora is kept apart by naming the corpus in it (a task
    # on a corpus of its own, as the main job's keyword spotting, keeps its name)
    shared = runs.groupby("task")["corpus"].transform("nunique") > 1
    runs.loc[shared, "task"] = runs.loc[shared, "corpus"].astype(str) + "-" + runs.loc[shared, "task"].astype(str)
    agg = aggregate_runs(runs)
    agg["units"] = cell_outcomes(agg, runs, results_dir)  # each cell's seeds' outcomes per test utterance, or None
    plot_dir, table_dir = results_dir / "plots", results_dir / "tables"
    made: dict[str, Path] = {}
    if (agg["mode"] != "layer").any():
        made["ablation.png"] = plots.plot_ablation(agg, plot_dir / "ablation.png")
    weights = plots.mean_layer_weights(runs)
    if not weights.empty:
        made["layer_weights.png"] = plots.plot_layer_weights(weights, plot_dir / "layer_weights.png")
        atomic_write_text(table_dir / "layer_weights.csv", weights.to_csv(index=False))
    if (agg["mode"] == "layer").any():
        made["layer_probe.png"] = plots.plot_layer_probe(agg, plot_dir / "layer_probe.png")
    for name in PLOT_NAMES:  # a figure the rows no longer support must not linger from an older build
        if name not in made:
            (plot_dir / name).unlink(missing_ok=True)
    boards = write_leaderboards(agg, table_dir)
    costs, certificate = _costs(results_dir), _certificate(results_dir)
    checks = science_checks(agg, costs)
    sections = {"Attention": _attention_section(results_dir), "Studies behind the rows": _study_sections(results_dir),
                "Cost": _cost_section(costs)}

    commands = command_lines(results_dir / COMMAND_FILE)
    produced = ("The rows were produced by " + "; then ".join(f"`{c}`" for c in commands) if commands
                else "The command that produced the rows was not recorded (no `command.txt`)")
    md = [f"# Benchmark report\n",
          f"{produced}; this report was rebuilt from `runs.csv` alone with `{REPORT_COMMAND}` "
          f"(no model is run). {provenance_sentence(runs)}\n",
          "Scores are test-split means over seeds with the half-width of the 95% Student-t confidence interval; "
          "probes pick their step on dev. Tables: `tables/<task>.md` / `.csv`; aggregated over seeds by "
          "`benchmark.record.aggregate.aggregate_runs`.\n",
          "## Overview\n",
          "SUPERB-style: one row per upstream and probe mode, one column per task at its largest label fraction, "
          "headed with the task's metric and its direction (↑ higher is better, ↓ lower is better); test mean ± 95% "
          "CI over seeds, the best cell of each column in bold (the highest accuracy, the lowest error rate), ≈ where "
          "a cell is within noise of the best one (their CIs overlap, or the paired test over test utterances and the "
          "seeds cannot tell them apart), ? where its gap is beyond the noise measured but one of the two has one seed "
          "(or a zero-width interval and no per-utterance outcomes), so the gap is not judged; unmarked cells are "
          "beyond noise (docs/report.md).\n",
          superb_markdown(agg),
          "## Data-size ablation\n"]
    md.append("![Data-size ablation](plots/ablation.png)\n" if "ablation.png" in made else "No ablation rows.\n")
    md.append("## Leaderboards (largest label fraction)\n")
    for task, lb in boards.items():
        md.append(f"### {task}\n\nFraction {lb['fraction'].iloc[0]:g} ({lb['train_utts'].iloc[0]:.0f} labelled "
                  f"training utterances), ranked by test score.\n\n" + (table_dir / f"{task}.md").read_text("utf-8"))
    md.append(f"`{UNCONVERGED.strip()}` marks a cell where some seed did not stop by the dev rule (it hit the step cap, "
              f"or the rows used a fixed `--steps` budget): its score is a lower bound. Probe budgets: "
              f"{_budget_summary(runs)}.\n")
    md.append("## Convergence certificate\n")
    md.append(_convergence_section(certificate, exempt_tasks(runs["task"])))
    md.append("## Layer analysis\n")
    if "layer_weights.png" in made:
        md.append("Learned weighted-sum weights (hidden state 0 = input block); "
                  "bars above the dotted line get more than a uniform share.\n\n"
                  "![Layer weights](plots/layer_weights.png)\n")
    if "layer_probe.png" in made:
        md.append("One probe per single hidden state (`--mode layer=K`); the star marks the best layer, the dashed "
                  "line the weighted sum trained on the same data.\n\n![Per-layer probes](plots/layer_probe.png)\n")
    if "layer_weights.png" not in made and "layer_probe.png" not in made:
        md.append("No weighted-sum or per-layer rows.\n")
    md += ["## Attention\n", sections["Attention"]]
    if sections["Studies behind the rows"]:
        md += ["## Studies behind the rows\n", sections["Studies behind the rows"]]
    md += ["## Cost\n", sections["Cost"],
           "## Science checks\n",
           "Each claim of the Mockingjay / AALBERT papers is tested on the rows above. A gap is *beyond noise* when a "
           "paired randomization test on the same test utterances rejects at 5 % (each run's metric per test "
           "utterance, `outcomes/`) and the gap is outside the combined 95% CI of the seed means, or every seed of "
           "both cells gave the same row; without per-utterance outcomes, the seed interval alone decides and a "
           "zero-width one never does (docs/report.md). Gaps are in points of each task's metric (%), signed so that "
           "a positive gap is an improvement in the metric's direction (higher accuracy, lower error rate).\n\n"
           + checks_markdown(checks)]
    out = results_dir / "REPORT.md"
    atomic_write_text(out, "\n".join(md))
    build_site(SiteInputs(results_dir, runs, agg, boards, weights, checks, costs, certificate, commands,
                          {title: text for title, text in sections.items() if text}), results_dir / SITE_DIR)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Rebuild REPORT.md, tables and plots from a results directory.")
    p.add_argument("results_dir", nargs="?", default="results", type=Path,
                   help="folder holding runs.csv (default: results)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        out = build_report(args.results_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} and {out.parent / SITE_DIR / 'index.html'} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
