"""One page per upstream (upstream:preset): what its rows record about it, its aggregated scores, every row with the
command that wrote it, its layer weights and per-layer probes, its attention statistics and head types where the
attention analyses cover it, and its cost row."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from bokeh.plotting import figure

from benchmark.report.cost import cost_display
from benchmark.report.plots import metric_display
from benchmark.report.provenance import date_span, facts, short_list, strip_stamp
from benchmark.report.site.figures import layer_probe_figure, layer_weight_figure
from benchmark.report.site.overview import family
from benchmark.report.tables import (fmt_budget, fmt_count, fmt_score, fmt_second, fmt_seconds, second_of,
                                     unconverged_mark)
from upstream.registry import FAMILIES

ATTENTION_STATS = Path("attention") / "attention_stats.csv"
HEAD_CLASSES = Path("attention") / "heads" / "head_classes.csv"
ATTENTION_MAPS = Path("attention") / "attention_maps.png"


@dataclass
class Table:
    """Cells as text, ready for the page's sortable table."""
    header: list[str]
    rows: list[list[str]]


def table(df: pd.DataFrame) -> Table:
    return Table([str(c) for c in df.columns], df.astype(str).to_numpy().tolist())


@dataclass
class UpstreamPage:
    upstream: str
    preset: str
    slug: str
    config: list[tuple[str, str]]
    scores: Table
    runs: Table
    commands: list[tuple[int, str, str]]  # (number, command, its stamp) of the commands that wrote these rows
    weights: Table | None
    weight_figure: figure | None
    layer_figure: figure | None
    cost: Table | None
    cost_note: str
    attention: Table | None
    head_types: Table | None
    heads: Table | None
    attention_maps: bool  # the attention-map figure shows this upstream


def slug(upstream: str, preset: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{upstream}-{preset}")


def kind(upstream: str) -> str:
    """What kind of upstream it is, in its family's own words (upstream.family.Family.description); a name this
    registry does not know (rows from another version, an external spec) is said to be unregistered."""
    if upstream in FAMILIES:
        return FAMILIES[upstream].description
    return "not in this toolkit's upstream registry"


def _config(upstream: str, preset: str, runs: pd.DataFrame) -> list[tuple[str, str]]:
    f = facts(runs)
    ckpts = runs.groupby("ckpt_hash", dropna=False).size()
    first = runs.drop_duplicates("ckpt_hash")
    return [("upstream", f"{upstream}:{preset}"), ("family", family(upstream)), ("kind", kind(upstream)),
            ("checkpoint hash", "; ".join(f"{h} ({n} rows)" for h, n in ckpts.items())),
            ("parameters", "; ".join(fmt_count(v) for v in first["params"])),
            ("pretraining frames", "; ".join(fmt_count(v) for v in first["pretrain_frames"])),
            ("pretraining time", "; ".join(fmt_seconds(v) for v in first["pretrain_seconds"])),
            ("pretraining recipe", "; ".join(str(v) for v in first["pretrain_recipe"])),
            ("corpus", short_list(f["corpus"])), ("tasks", short_list(f["tasks"], 20)),
            ("label fractions", ", ".join(f"{x:g}" for x in sorted(runs["fraction"].unique()))),
            ("seeds", short_list(f["seeds"], 20)),
            ("probe budgets", ", ".join(sorted(runs["budget"].astype(str).unique()))),
            ("devices", short_list(f["devices"])), ("code", short_list(f["code"])),
            ("toolkit versions", short_list(f["toolkit versions"])), ("runs dated", date_span(runs))]


def _scores(agg: pd.DataFrame) -> Table:
    agg = agg.sort_values(["task", "mode", "layer", "fraction", "budget"])
    k = [metric_display(str(m))[1] for m in agg["metric"]]
    return table(pd.DataFrame({
        "task": agg["task"], "mode": [m if m != "layer" else f"layer {int(la)}" for m, la in zip(agg["mode"], agg["layer"])],
        "fraction": agg["fraction"].map(lambda v: f"{v:g}"), "labelled utt.": agg["train_utts"].map(lambda v: f"{v:.0f}"),
        "checkpoint": agg["ckpt_hash"].astype(str).str[:8],
        "probe budget": [fmt_budget(b, st, c, n) for b, st, c, n in
                         zip(agg["budget"], agg["steps_mean"], agg["n_converged"], agg["n_seeds"])],
        "seeds": agg["n_seeds"],
        "test, mean ± 95% CI": [fmt_score(m, c, kk) + unconverged_mark(b, nc, n) for m, c, kk, b, nc, n in
                                zip(agg["test_mean"], agg["test_ci95"], k, agg["budget"], agg["n_converged"],
                                    agg["n_seeds"])],
        "dev": [f"{m * kk:.2f}" for m, kk in zip(agg["dev_mean"], k)]}))


def second(runs: pd.DataFrame) -> list[str]:
    """Each row's second score (TaskSpec.second_metric: utterance accuracy of frame logits in %, minDCF), named."""
    out = []
    for task, v in zip(runs["task"], runs["test_utt_metric"]):
        m = second_of(str(task))
        out.append("-" if pd.isna(v) else f"{m.label or m.name} {fmt_second(m, v)}")
    return out


def _runs(runs: pd.DataFrame, command_index: pd.Series) -> Table:
    k = [metric_display(str(m))[1] for m in runs["metric"]]
    pct = lambda col: [("-" if pd.isna(v) else f"{v * kk:.2f}") for v, kk in zip(runs[col], k)]  # noqa: E731
    return table(pd.DataFrame({
        "run id": runs["run_id"], "task": runs["task"], "mode": runs["mode"], "layer": runs["layer"],
        "fraction": runs["fraction"].map(lambda v: f"{v:g}"), "labelled utt.": runs["train_utts"].map(lambda v: f"{v:.0f}"),
        "seed": runs["seed"], "dev": pct("dev_metric"), "test": pct("test_metric"), "test, 2nd score": second(runs),
        "best step": runs["best_step"].map(lambda v: "-" if pd.isna(v) else f"{v:.0f}"),
        "steps": runs["steps"].map(lambda v: "-" if pd.isna(v) else f"{v:.0f}"), "budget": runs["budget"],
        "converged": runs["converged"].map(lambda v: "yes" if v else "no"),
        "wall s": runs["wall_seconds"].map(lambda v: "-" if pd.isna(v) else f"{v:.1f}"),
        "layer weights": runs["layer_weights"].map(lambda s: " ".join(f"{float(w):.3f}" for w in s.split(";")) if s else ""),
        "checkpoint": runs["ckpt_hash"].astype(str).str[:8], "device": runs["device"], "code": runs["git_commit"],
        "date": runs["date"], "command": command_index.map(lambda i: f"[{i + 1}]" if i >= 0 else "not recorded")}))


def _weights(weights: pd.DataFrame) -> Table | None:
    if weights.empty:
        return None
    wide = weights.pivot_table(index=["task", "fraction", "n_seeds"], columns="hidden_state", values="weight_mean")
    wide.columns = ["input block" if int(c) == 0 else f"layer {int(c)}" for c in wide.columns]
    wide = wide.map(lambda v: "-" if pd.isna(v) else f"{v:.3f}").reset_index()
    wide["fraction"] = wide["fraction"].map(lambda v: f"{v:g}")
    return table(wide.rename(columns={"n_seeds": "seeds"}))


def _cost(costs: pd.DataFrame | None, upstream: str, preset: str, hashes: set[str]) -> tuple[Table | None, str]:
    if costs is None:
        return None, "No cost.csv beside the rows."
    mine = costs[(costs["upstream"] == upstream) & (costs["preset"] == preset)]
    if mine.empty:
        return None, f"cost.csv has no row for {upstream}:{preset}."
    shown = cost_display(costs).loc[mine.index].assign(checkpoint=mine["ckpt_hash"].astype(str))
    other = sorted(set(mine["ckpt_hash"].astype(str)) - hashes)
    note = (f"Measured on checkpoint {', '.join(other)}, not the one of the rows ({', '.join(sorted(hashes))}): the "
            f"hash of a checkpoint-free upstream covers its configuration, which may have changed since."
            if other else "")
    return table(shown), note


def _attention(results_dir: Path, upstream: str, preset: str) -> tuple[Table | None, Table | None, Table | None, bool]:
    names = {upstream, f"{upstream}:{preset}"}
    stats = heads = types = None
    shown = False
    if (results_dir / ATTENTION_STATS).is_file():
        a = pd.read_csv(results_dir / ATTENTION_STATS)
        a = a[a["model"].astype(str).isin(names)]
        shown = not a.empty and (results_dir / ATTENTION_MAPS).is_file()
        if not a.empty:
            cols = {"layer": "layer", "mean_distance_ms": "mean distance (ms)", "entropy_nats": "entropy (nats)",
                    "uniform_entropy_nats": "uniform entropy (nats)", "diag_share": "diagonal share",
                    "neighbour_share": "±1 neighbour share", "local_share": "±50 ms share",
                    "vertical_share": "vertical share", "n_utts": "utterances"}
            a = a[[c for c in cols if c in a.columns]].rename(columns=cols)
            stats = table(a.map(lambda v: f"{v:.3f}" if isinstance(v, float) else v))
    if (results_dir / HEAD_CLASSES).is_file():
        h = pd.read_csv(results_dir / HEAD_CLASSES)
        h = h[h["model"].astype(str).isin(names)]
        if not h.empty:
            counts = h.pivot_table(index="layer", columns="type", values="head", aggfunc="count", fill_value=0)
            types = table(counts.reset_index())
            cols = [c for c in ("layer", "head", "type", "entropy_ratio", "local_share", "vertical_share",
                                "mean_distance_frames") if c in h.columns]
            heads = table(h[cols].map(lambda v: f"{v:.3f}" if isinstance(v, float) else v))
    return stats, types, heads, shown


def upstream_pages(inputs, command_index: pd.Series) -> list[UpstreamPage]:
    """A page for every upstream:preset of the rows (`inputs`: benchmark.report.site.inputs.SiteInputs)."""
    pages, slugs = [], set()
    runs, agg = inputs.runs, inputs.agg
    for (up, preset), r in runs.groupby(["upstream", "preset"], sort=True):
        a = agg[(agg["upstream"] == up) & (agg["preset"] == preset)]
        w = inputs.weights[(inputs.weights["upstream"] == up) & (inputs.weights["preset"] == preset)]
        used = sorted(i for i in command_index.loc[r.index].unique() if i >= 0)
        cost, note = _cost(inputs.costs, up, preset, set(r["ckpt_hash"].astype(str)))
        stats, types, heads, maps = _attention(inputs.results_dir, up, preset)
        r = r.sort_values(["task", "mode", "layer", "fraction", "seed"])
        name = slug(up, preset)
        while name in slugs:  # two spellings that differ only in punctuation
            name += "_"
        slugs.add(name)
        pages.append(UpstreamPage(
            str(up), str(preset), name, _config(up, preset, r), _scores(a), _runs(r, command_index.loc[r.index]),
            [(i + 1, *strip_stamp(inputs.commands[i])) for i in used], _weights(w), layer_weight_figure(w),
            layer_probe_figure(a), cost, note, stats, types, heads, maps))
    return pages

