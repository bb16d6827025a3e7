"""What the site is built from: the tables benchmark.report.build has already computed for REPORT.md, handed over whole
so that no number is computed a second time for the HTML."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from benchmark.report.checks import Check

SITE_DIR = "site"


@dataclass(frozen=True)
class SiteInputs:
    results_dir: Path
    runs: pd.DataFrame  # validated runs.csv rows (task prefixed with the corpus where the rows hold several)
    agg: pd.DataFrame  # benchmark.record.aggregate.aggregate_runs(runs)
    boards: dict[str, pd.DataFrame]  # benchmark.report.tables.write_leaderboards: {task: ranked table}
    weights: pd.DataFrame  # benchmark.report.plots.mean_layer_weights(runs)
    checks: list[Check]  # benchmark.report.checks.science_checks(agg, costs)
    costs: pd.DataFrame | None  # cost.csv (benchmark.report.cost.read_costs), None when absent
    certificate: pd.DataFrame | None  # convergence.csv, None when absent
    commands: list[str]  # command.txt lines
    # REPORT.md sections shown as they are (rendered from Markdown): {title: markdown}, images relative to results_dir
    sections: dict[str, str] = field(default_factory=dict)
