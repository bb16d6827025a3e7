"""The overview table: one row per upstream checkpoint and probe mode, one column per task at its largest and its
smallest label fraction. A cell is the seeds' mean ± 95 % CI exactly as benchmark.record.aggregate computed it and
benchmark.report.tables prints it; the best cell of each column is marked, and so are the cells within noise of it
and those whose gap to it cannot be judged (`judge`)."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from benchmark.record.metrics import metric_of
from benchmark.report.paired import ALPHA, beyond_noise, randomization_p, seed_mean, seeds_allow
from benchmark.report.plots import UPSTREAM_COLORS, metric_display
from benchmark.report.tables import fmt_count, fmt_score, fmt_seconds, unconverged_mark
from upstream.registry import controlled_model

ROW_KEYS = ("upstream", "preset", "ckpt_hash", "mode", "layer", "budget")
MODE_ORDER = {"last": 0, "weighted_sum": 1, "finetune": 2, "layer": 3}


@dataclass(frozen=True)
class Column:
    task: str
    end: str  # "largest" or "smallest" label fraction of the task
    fraction: float
    train_utts: float
    metric_label: str  # "frame accuracy (%)"
    higher: bool  # the direction in which the metric improves
    metric_name: str = ""  # "PER": the metric as a column head names it, with its arrow (`head`)

    @property
    def head(self) -> str:
        """'PER ↓': the metric and its direction."""
        return f"{self.metric_name} {'↑' if self.higher else '↓'}"


@dataclass(frozen=True)
class Cell:
    text: str  # "72.31 ± 0.40", a † where some seed did not converge, "-" where there is no such row
    value: float  # the mean as displayed (%, for accuracies); NaN where there is no row
    ci: float  # the 95 % CI half-width as displayed; NaN with one seed
    seeds: int
    mark: str  # "best", "tied", "open" or "" (`mark`)
    units: object = field(default=None, compare=False, repr=False)  # the seeds' outcomes per test utterance


@dataclass(frozen=True)
class Row:
    upstream: str
    preset: str
    ckpt_hash: str
    name: str  # upstream:preset, and the checkpoint where an upstream:preset has several
    family: str  # the pretrained family a random-init control belongs to, else the upstream itself
    mode: str  # last, weighted_sum, finetune, layer
    mode_label: str  # "layer 2" for a single-layer probe
    budget: str
    params: float
    pretrain_frames: float
    pretrain_seconds: float
    recipe: str
    cells: tuple[Cell, ...]


def family(upstream: str) -> str:
    return controlled_model(upstream) or upstream


def columns(agg: pd.DataFrame) -> list[Column]:
    """Each task's largest fraction, then its smallest (one column when the task has one fraction)."""
    out = []
    for task, t in agg.groupby("task", sort=True):
        fractions = sorted(t["fraction"].unique())
        metric = metric_of(str(t["metric"].iloc[0]))
        label = metric.display[0]
        for end, f in (("largest", fractions[-1]), ("smallest", fractions[0]))[:1 if len(fractions) == 1 else 2]:
            utts = float(t.loc[t["fraction"] == f, "train_utts"].mean())
            out.append(Column(str(task), end, float(f), utts, label, metric.higher_is_better,
                              metric.label or metric.name))
    return out


def _cell(r: dict | None) -> Cell:
    if r is None:
        return Cell("-", math.nan, math.nan, 0, "")
    k = metric_display(str(r["metric"]))[1]
    text = fmt_score(r["test_mean"], r["test_ci95"], k) + unconverged_mark(r["budget"], r["n_converged"], r["n_seeds"])
    return Cell(text, float(r["test_mean"]) * k, float(r["test_ci95"]) * k, int(r["n_seeds"]), "", r.get("units"))


def overlaps(a: float, ci_a: float, b: float, ci_b: float) -> bool:
    """Do the intervals a ± ci_a and b ± ci_b overlap? A missing CI (one seed) is an interval of the mean alone."""
    return abs(a - b) <= (0.0 if math.isnan(ci_a) else ci_a) + (0.0 if math.isnan(ci_b) else ci_b)


def judge(c: Cell, best: Cell) -> str:
    """How `c` stands against `best`. "tied": the noise that was measured cannot tell them apart (their intervals
    overlap, or the paired test over test utterances does not reject: noise not measured could only widen it);
    "apart": the gap is beyond noise (benchmark.report.paired.beyond_noise: the paired test and both cells' seed
    intervals); "open": the gap is beyond the noise that was measured, but not all of it was: a cell with one seed, or
    an interval of zero width without outcomes per test utterance, says nothing of its training noise."""
    if overlaps(c.value, c.ci, best.value, best.ci):
        return "tied"
    ci = math.hypot(c.ci, best.ci)
    seeds_ok = seeds_allow(c.seeds, best.seeds, ci)
    if c.units is not None and best.units is not None:
        if seeds_ok:
            return "apart" if beyond_noise(c.units, best.units, c.value - best.value, ci, c.seeds, best.seeds) else "tied"
        return "tied" if randomization_p(seed_mean(c.units), seed_mean(best.units)) >= ALPHA else "open"
    return "apart" if seeds_ok and c.ci > 0 and best.ci > 0 else "open"


def mark(cells: list[Cell], higher: bool, judged: Callable[[Cell, Cell], str] = judge) -> list[Cell]:
    """The column's best mean(s) marked "best"; each other cell "tied" where it is within noise of a best one
    (`judged`), else "open" where its gap to one cannot be judged, else "" (beyond noise of every best one)."""
    vals = [c.value for c in cells if not math.isnan(c.value)]
    if not vals:
        return cells
    top = max(vals) if higher else min(vals)
    best = [c for c in cells if c.value == top]
    out = []
    for c in cells:
        if c.value == top:
            m = "best"
        elif math.isnan(c.value):
            m = ""
        else:
            verdicts = {judged(c, b) for b in best}
            m = "tied" if "tied" in verdicts else "open" if "open" in verdicts else ""
        out.append(Cell(c.text, c.value, c.ci, c.seeds, m, c.units))
    return out


# the overview's row filters (its mode and family selects): each choice of them marks the best of the rows it shows
MARK_CHARS = {"best": "b", "tied": "t", "open": "o", "": "."}
OPEN_OR_TIED = {"tied": "≈", "open": "?"}  # what a Markdown cell shows after its score


def filter_marks(cols: list[Column], rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    """The marks of every choice of the row filters: the choices as 'mode|family' ('' = all), and for each row and
    column one character per choice ('b' best, 't' tied, 'o' open, '.' none or not shown), in `mark`'s rule among the rows
    that choice shows. The choice of all rows is the cells' own marks (`overview` marked them by the same rule); every
    other pair of cells is judged once (the paired test is the costly part)."""
    modes, families = ["", *sorted({r.mode for r in rows})], ["", *sorted({r.family for r in rows})]
    choices = [(m, f) for m in modes for f in families]
    verdicts: dict[tuple[int, int], str] = {}

    def judged(c: Cell, b: Cell) -> str:
        key = (id(c), id(b))
        if key not in verdicts:
            verdicts[key] = judge(c, b)
        return verdicts[key]

    chars = [[[] for _ in cols] for _ in rows]
    for m, f in choices:
        shown = [i for i, r in enumerate(rows) if m in ("", r.mode) and f in ("", r.family)]
        for j, c in enumerate(cols):
            column = [rows[i].cells[j] for i in shown]
            marked = column if not (m or f) else mark(column, c.higher, judged)
            marks = dict(zip(shown, (x.mark for x in marked)))
            for i in range(len(rows)):
                chars[i][j].append(MARK_CHARS[marks.get(i, "")])
    return [f"{m}|{f}" for m, f in choices], [["".join(c) for c in row] for row in chars]


def _row_order(keys: pd.DataFrame) -> pd.DataFrame:
    known = {u: i for i, u in enumerate(UPSTREAM_COLORS)}
    return keys.assign(_u=keys["upstream"].map(lambda u: known.get(u, len(known))),
                       _m=keys["mode"].map(lambda m: MODE_ORDER.get(m, len(MODE_ORDER)))).sort_values(
        ["_u", "upstream", "preset", "ckpt_hash", "budget", "_m", "layer"]).drop(columns=["_u", "_m"])


def one_per_corpus(agg: pd.DataFrame) -> pd.DataFrame:
    """`agg` with the checkpoint of an upstream:preset that has ONE checkpoint on each corpus replaced by that of its
    corpus with the most rows: 10-ms mel's identity holds its corpus's normalisation statistics, so on the main job's
    two corpora (speech, keywords) it has two hashes, and it is still one row of the overview."""
    if "corpus" not in agg or agg["corpus"].nunique() < 2:
        return agg
    per = agg.groupby(["upstream", "preset", "corpus"])["ckpt_hash"].nunique().groupby(level=[0, 1]).max()
    main = (agg.assign(_n=agg.groupby(["upstream", "preset", "corpus"])["ckpt_hash"].transform("size"))
            .sort_values("_n", ascending=False, kind="stable").drop_duplicates(["upstream", "preset"])
            .set_index(["upstream", "preset"])["ckpt_hash"])
    keys = pd.MultiIndex.from_frame(agg[["upstream", "preset"]])
    merge = (per.reindex(keys) == 1).to_numpy()
    return agg.assign(ckpt_hash=agg["ckpt_hash"].where(~merge, main.reindex(keys).to_numpy()))


def overview(agg: pd.DataFrame) -> tuple[list[Column], list[Row]]:
    agg = one_per_corpus(agg.assign(ckpt_hash=agg["ckpt_hash"].fillna("").astype(str)))
    cols = columns(agg)
    by_key = {(*(r[k] for k in ROW_KEYS), r["task"], r["fraction"]): r for r in agg.to_dict("records")}
    keys = _row_order(agg[list(ROW_KEYS)].drop_duplicates())
    ckpts = agg.groupby(["upstream", "preset"])["ckpt_hash"].nunique()
    carried = agg.drop_duplicates(["upstream", "preset", "ckpt_hash"]).set_index(["upstream", "preset", "ckpt_hash"])
    cells = [[_cell(by_key.get((*k, c.task, c.fraction))) for c in cols] for k in keys.itertuples(index=False, name=None)]
    for j, c in enumerate(cols):  # marks are per column
        for i, cell in enumerate(mark([row[j] for row in cells], c.higher)):
            cells[i][j] = cell
    rows = []
    for (up, preset, ckpt, mode, layer, budget), row_cells in zip(keys.itertuples(index=False, name=None), cells):
        info = carried.loc[(up, preset, ckpt)]
        name = f"{up}:{preset}" + (f" @{str(ckpt)[:8]}" if ckpts[(up, preset)] > 1 else "")
        rows.append(Row(str(up), str(preset), str(ckpt), name, family(str(up)), str(mode),
                        f"layer {int(layer)}" if mode == "layer" else str(mode), str(budget),
                        float(info["params"]), float(info["pretrain_frames"]), float(info["pretrain_seconds"]),
                        str(info["pretrain_recipe"]), tuple(row_cells)))
    return cols, rows


def fixed_text(row: Row) -> dict[str, str]:
    """The row's non-score cells as the tables print them."""
    return {"params": fmt_count(row.params), "pretrain frames": fmt_count(row.pretrain_frames),
            "pretrain time": fmt_seconds(row.pretrain_seconds)}


def superb_markdown(agg: pd.DataFrame) -> str:
    """The SUPERB-style overview as Markdown: one row per upstream checkpoint and probe mode, one column per task at
    its largest label fraction headed with its metric and direction ("phone_ctc<br>PER ↓"), the best cell of each
    column in bold (in the metric's direction), cells within noise of it marked ≈, cells whose gap to it cannot be
    judged (one seed) marked ? (`judge`)."""
    cols, rows = overview(agg)
    keep = [j for j, c in enumerate(cols) if c.end == "largest"]
    if not keep or not rows:
        return "No rows.\n"
    head = ["upstream", "mode", *(f"{cols[j].task}<br>{cols[j].head}" for j in keep)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * len(keep)) + "|"]
    for r in rows:
        cells = []
        for j in keep:
            c = r.cells[j]
            cells.append(f"**{c.text}**" if c.mark == "best" else f"{c.text} {OPEN_OR_TIED[c.mark]}" if c.mark in OPEN_OR_TIED
                         else c.text)
        lines.append("| " + " | ".join([r.name, r.mode_label, *(c.replace("|", "\\|") for c in cells)]) + " |")
    return "\n".join(lines) + "\n"
