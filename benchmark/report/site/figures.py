"""The site's interactive figures (Bokeh): data-size ablation per task, and per upstream its learned layer weights
and per-layer probe scores. The numbers are the aggregated rows REPORT.md's PNGs are drawn from; colours, line styles
and markers are benchmark.report.plots' so a model looks the same in both."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from bokeh.models import (ColumnDataSource, FactorRange, GlyphRenderer, HoverTool, Legend, LegendItem, Line, MultiLine,
                          Patches, PrintfTickFormatter, Scatter, Segment, Span, VBar)
from bokeh.plotting import figure

from benchmark.report.plots import MODE_LABELS, MODE_STYLES, direction_words, interval, metric_display, with_keys
from benchmark.report.tables import fmt_score

DASHES = {"-": "solid", "--": "dashed", ":": "dotted", "-.": "dashdot"}
MARKERS = {"o": "circle", "s": "square", "^": "triangle", "D": "diamond"}
TOOLS = "pan,wheel_zoom,box_zoom,reset,save"
TASK_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
LEGEND_ROWS = 16  # entries per legend column before it wraps into another


def _mode_rank(mode: str) -> int:
    """Modes in benchmark.report.plots' order (last, weighted sum, fine-tuned, single layer), others after them."""
    return list(MODE_STYLES).index(mode) if mode in MODE_STYLES else len(MODE_STYLES)


def _direction(metric: str) -> str:
    return direction_words(metric)


def _add(fig: figure, data: dict, glyph) -> GlyphRenderer:
    """A renderer of `glyph` over `data`. Unlike figure.line() & co. this makes no selection and muted copies of the
    glyph (BokehJS derives them when needed): Bokeh's cost, in Python and in the page, is per model."""
    return fig.add_glyph(ColumnDataSource(data), glyph)


def _legend(fig: figure, items: list[LegendItem]) -> None:
    """A legend beside the plot; clicking an entry hides (or shows again) every glyph of that line."""
    legend = Legend(items=items, click_policy="hide", ncols=max(1, math.ceil(len(items) / LEGEND_ROWS)),
                    label_text_font_size="9pt", spacing=1, title="click to hide / show")
    fig.add_layout(legend, "right")


def _mode_key(fig: figure, modes: list[str]) -> None:
    """A second legend: the line style and marker of each probe mode (its entries draw nothing of the data)."""
    items = []
    for mode in modes:
        ls, mk = MODE_STYLES.get(mode, ("-", "o"))
        nowhere = {"x": [math.nan], "y": [math.nan]}  # one point that is not drawn: a legend entry needs a row
        line = _add(fig, nowhere, Line(x="x", y="y", line_color="#555555", line_dash=DASHES[ls], line_width=2))
        pts = _add(fig, nowhere, Scatter(x="x", y="y", marker=MARKERS[mk], fill_color="#555555",
                                         line_color="#555555", size=7))
        items.append(LegendItem(label=MODE_LABELS.get(mode, mode), renderers=[line, pts]))
    fig.add_layout(Legend(items=items, title="probe mode", label_text_font_size="9pt", spacing=1), "right")


def ablation_figures(agg: pd.DataFrame) -> dict[str, figure]:
    """{task: figure}: test score against the label fraction (log axis), one line per upstream and mode with its 95 %
    CI band (colour = upstream, line style and marker = mode); hovering a point shows its mean ± CI, seeds and
    labelled utterances; clicking a legend entry hides or shows all lines of that upstream checkpoint."""
    rows = agg[agg["mode"] != "layer"]
    if rows.empty:
        return {}
    rows, colors = with_keys(rows)
    order = {k: i for i, k in enumerate(colors)}
    out = {}
    for task, t in rows.groupby("task", sort=True):
        several = t.groupby("key")[["ckpt_hash", "budget"]].nunique().max(axis=1) > 1  # tell this panel's lines apart
        metric = str(t["metric"].iloc[0])
        label, k = metric_display(metric)
        fig = figure(height=400, sizing_mode="stretch_width", x_axis_type="log", tools=TOOLS,
                     title=f"{task}: test {label} ({_direction(metric)}) vs label fraction",
                     x_axis_label="fraction of the labelled train split (log scale)", y_axis_label=f"test {label}")
        items, points = [], []
        models = sorted(t.groupby(["key", "ckpt_hash", "budget"], sort=False), key=lambda kg: (order[kg[0][0]], kg[0][1:]))
        for (key, ckpt, budget), m in models:
            # one renderer of each kind per upstream checkpoint (its modes are vectors of it): Bokeh's cost is per
            # renderer, and a legend entry hides all of one model's lines at once
            name = f"{key}" + (f" @{str(ckpt)[:8]} [{budget}]" if several[key] else "")
            color = colors[key]
            lines = {"xs": [], "ys": [], "dash": []}
            bands = {"xs": [], "ys": []}
            pts = {c: [] for c in ("x", "y", "marker", "utts", "seeds", "score", "model")}
            for mode, g in sorted(m.groupby("mode"), key=lambda mg: (_mode_rank(mg[0]), mg[0])):
                g = g.sort_values("fraction")
                ls, mk = MODE_STYLES.get(mode, ("-", "o"))
                x = g["fraction"].to_numpy(float)
                mean, ci = g["test_mean"].to_numpy(float) * k, g["test_ci95"].to_numpy(float) * k
                lines["xs"].append(x)
                lines["ys"].append(mean)
                lines["dash"].append(DASHES[ls])
                if np.isfinite(ci).any():
                    low, high = interval(metric, mean, np.where(np.isfinite(ci), ci, 0.0), k)
                    bands["xs"].append(np.concatenate([x, x[::-1]]))
                    bands["ys"].append(np.concatenate([high, low[::-1]]))
                pts["x"] += list(x)
                pts["y"] += list(mean)
                pts["marker"] += [MARKERS[mk]] * len(g)
                pts["utts"] += [f"{v:,.0f}" for v in g["train_utts"]]
                pts["seeds"] += [int(v) for v in g["n_seeds"]]
                pts["score"] += [fmt_score(a, c, k) for a, c in zip(g["test_mean"], g["test_ci95"])]
                pts["model"] += [f"{name} · {MODE_LABELS.get(mode, mode)}"] * len(g)
            renderers = [_add(fig, lines, MultiLine(xs="xs", ys="ys", line_dash="dash", line_color=color, line_width=2)),
                         _add(fig, pts, Scatter(x="x", y="y", marker="marker", size=7, fill_color=color,
                                                line_color=color))]
            points.append(renderers[1])
            if bands["xs"]:
                renderers.append(_add(fig, bands, Patches(xs="xs", ys="ys", fill_color=color, fill_alpha=0.12,
                                                          line_alpha=0)))
            items.append(LegendItem(label=name, renderers=renderers))
        fig.xaxis.ticker = sorted(float(f) for f in t["fraction"].unique())  # the fractions themselves, as numbers
        fig.xaxis.formatter = PrintfTickFormatter(format="%g")
        fig.add_tools(HoverTool(renderers=points, tooltips=[
            ("model", "@model"), ("label fraction", "@x"), ("labelled utterances", "@utts"),
            (f"test {label}", "@score (95% CI)"), ("seeds", "@seeds")]))
        _legend(fig, items)
        _mode_key(fig, sorted(t["mode"].unique(), key=lambda mo: (_mode_rank(mo), mo)))
        out[str(task)] = fig
    return out


def layer_weight_figure(weights: pd.DataFrame) -> figure | None:
    """One upstream's learned weighted-sum weights: a bar per hidden state and task (mean ± std over seeds)."""
    if weights.empty:
        return None
    tasks = sorted(weights["task"].unique())
    n = int(weights["hidden_state"].max()) + 1
    states = ["input block" if i == 0 else f"layer {i}" for i in range(n)]
    fig = figure(height=320, sizing_mode="stretch_width", tools=TOOLS, x_range=FactorRange(*[(s, t) for s in states for t in tasks]),
                 title="Learned weighted-sum layer weights (mean ± std over seeds, largest label fraction)",
                 y_axis_label="softmax weight")
    w = weights.assign(_t=weights["task"].map(tasks.index)).sort_values(["_t", "hidden_state"])
    m, s = w["weight_mean"].to_numpy(float), w["weight_std"].to_numpy(float)
    data = {"x": [(states[int(h)], t) for h, t in zip(w["hidden_state"], w["task"])], "top": m, "lo": m - s,
            "hi": m + s, "task": list(w["task"]), "state": [states[int(h)] for h in w["hidden_state"]],
            "text": [f"{a:.3f} ± {b:.3f}" for a, b in zip(m, s)],
            "color": [TASK_COLORS[i % len(TASK_COLORS)] for i in w["_t"]]}
    bars = _add(fig, data, VBar(x="x", top="top", width=0.8, fill_color="color", line_color="color"))
    _add(fig, data, Segment(x0="x", y0="lo", x1="x", y1="hi", line_color="#333333"))
    fig.add_tools(HoverTool(renderers=[bars], tooltips=[("task", "@task"), ("hidden state", "@state"),
                                                       ("weight", "@text")]))
    fig.add_layout(Span(location=1.0 / n, dimension="width", line_dash="dotted", line_color="#666666"))  # 1/(N+1)
    fig.xaxis.major_label_orientation = math.pi / 4
    first = w.reset_index(drop=True).groupby("task", sort=False).head(1)
    fig.add_layout(Legend(items=[LegendItem(label=t, renderers=[bars], index=int(i)) for i, t in first["task"].items()],
                          label_text_font_size="9pt"), "right")
    return fig


def layer_probe_figure(agg: pd.DataFrame) -> figure | None:
    """One upstream's single-layer probes (mode=layer) at each task's largest fraction: test score vs hidden state."""
    lay = agg[agg["mode"] == "layer"]
    if lay.empty:
        return None
    lay = lay[lay["fraction"] == lay.groupby("task")["fraction"].transform("max")]
    labels = sorted({f"{metric_display(str(m))[0]} ({direction_words(str(m))})" for m in lay["metric"]})
    fig = figure(height=320, sizing_mode="stretch_width", tools=TOOLS, x_axis_label="hidden state probed (0 = input block)",
                 y_axis_label=f"test {' / '.join(labels)}",
                 title="Per-layer probes: one probe per single hidden state (mean ± 95% CI over seeds)")
    groups = lay.groupby(["task", "ckpt_hash", "budget"], sort=True)
    several = groups.ngroups > lay["task"].nunique()  # a task with several checkpoints or budgets: name them
    lines = {"xs": [], "ys": [], "color": []}
    pts = {c: [] for c in ("x", "y", "lo", "hi", "score", "task", "color")}
    names = []
    for i, ((task, ckpt, budget), g) in enumerate(groups):
        g = g.sort_values("layer")
        metric = str(g["metric"].iloc[0])
        k = metric_display(metric)[1]
        mean, ci = g["test_mean"].to_numpy(float) * k, g["test_ci95"].to_numpy(float) * k
        low, high = interval(metric, mean, np.where(np.isfinite(ci), ci, 0.0), k)
        color = TASK_COLORS[i % len(TASK_COLORS)]
        x = g["layer"].to_numpy(int)
        lines["xs"].append(x)
        lines["ys"].append(mean)
        lines["color"].append(color)
        pts["x"] += list(x)
        pts["y"] += list(mean)
        pts["lo"] += list(low)
        pts["hi"] += list(high)
        pts["score"] += [fmt_score(m, c, k) for m, c in zip(g["test_mean"], g["test_ci95"])]
        pts["task"] += [task] * len(g)
        pts["color"] += [color] * len(g)
        names.append(f"{task} (fraction {g['fraction'].iloc[0]:g})" + (f" @{str(ckpt)[:8]} [{budget}]" if several else ""))
    ml = _add(fig, lines, MultiLine(xs="xs", ys="ys", line_color="color", line_width=2))
    dots = _add(fig, pts, Scatter(x="x", y="y", size=7, fill_color="color", line_color="color"))
    fig.add_glyph(dots.data_source, Segment(x0="x", y0="lo", x1="x", y1="hi", line_color="color"))
    fig.add_tools(HoverTool(renderers=[dots], tooltips=[("task", "@task"), ("hidden state", "@x"),
                                                       ("test", "@score (95% CI)")]))
    fig.xaxis.ticker = sorted(int(x) for x in lay["layer"].unique())
    fig.add_layout(Legend(items=[LegendItem(label=n, renderers=[ml], index=i) for i, n in enumerate(names)],
                          label_text_font_size="9pt"), "right")
    return fig
