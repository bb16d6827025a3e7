"""Report figures as pure functions of aggregated rows: data-size ablation, layer weights, per-layer probes."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import NullLocator

from benchmark.record.metrics import metric_of, shown_bounds, sign
from core.figures import plt, save_figure

# Fixed colours so an upstream looks the same in every figure; random-init controls are pale versions
# of their pretrained family so "same architecture, no training" reads at a glance.
UPSTREAM_COLORS: dict[str, str] = {"mel": "#333333", "mockingjay": "#1f77b4", "aalbert": "#d62728",
                                   "mockingjay_random": "#8fbbd9", "aalbert_random": "#f0a0a0"}
_EXTRA_COLORS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#ff7f0e")
MODE_STYLES: dict[str, tuple[str, str]] = {"last": ("-", "o"), "weighted_sum": ("--", "s"),
                                           "finetune": (":", "^"), "layer": ("-.", "D")}
MODE_LABELS: dict[str, str] = {"last": "last layer (frozen)", "weighted_sum": "weighted sum (frozen)",
                               "finetune": "fine-tuned", "layer": "single layer"}


def metric_display(metric: str) -> tuple[str, float]:
    """(axis label, factor to display) of the rows' metric: its own (downstream.metrics.Metric.display)."""
    return metric_of(metric).display


def higher_is_better(metric: str) -> bool:
    return metric_of(metric).higher_is_better


def direction_words(metric: str) -> str:
    return "higher is better" if higher_is_better(metric) else "lower is better"


def best_position(values: np.ndarray, metric: str) -> int:
    """Index of the best of `values` in the metric's direction (NaN never best)."""
    v = np.asarray(values, dtype=float) * sign(metric)
    return int(np.nanargmax(np.where(np.isfinite(v), v, -np.inf)))


def interval(metric: str, mean: np.ndarray, err: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of mean ± err (as displayed), cut to the metric's range (benchmark.record.metrics.shown_bounds)."""
    lo, hi = shown_bounds(metric, scale)
    return np.clip(mean - err, lo, hi), np.clip(mean + err, lo, hi)


def line_key(upstream: str, preset: str, presets_per_upstream: dict[str, int]) -> str:
    """'mockingjay' when it has one preset in the rows, 'mockingjay:base' when several must be told apart."""
    return f"{upstream}:{preset}" if presets_per_upstream.get(upstream, 1) > 1 else upstream


def color_map(keys: list[str]) -> dict[str, str]:
    """Known upstreams keep their fixed colour; anything else (or a second preset) takes the next free one (the extra
    colours repeat once all are taken: a sweep of many presets still gets a figure)."""
    out: dict[str, str] = {}
    extra = itertools.cycle(_EXTRA_COLORS)
    for k in keys:
        c = UPSTREAM_COLORS.get(k) or UPSTREAM_COLORS.get(k.split(":")[0])
        out[k] = next(extra) if c is None or c in out.values() else c
    return out


def _grid(n: int, width: float = 6.0, height: float = 4.2) -> tuple[plt.Figure, list[plt.Axes]]:
    cols = 1 if n == 1 else 2
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def with_keys(agg: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """`agg` with each row's line key (upstream, or upstream:preset) and the keys' colours, in figure order."""
    per = agg.groupby("upstream")["preset"].nunique().to_dict()
    agg = agg.assign(key=[line_key(u, p, per) for u, p in zip(agg["upstream"], agg["preset"])])
    order = {u: i for i, u in enumerate(UPSTREAM_COLORS)}
    keys = sorted(dict.fromkeys(agg["key"]), key=lambda k: (order.get(k.split(":")[0], len(order)), k))
    return agg, color_map(keys)


def _legends(fig: plt.Figure, colors: dict[str, str], modes: list[str], extra: list[tuple[str, Line2D]] = ()) -> None:
    """Two compact legends below the panels (colour = upstream, line style = mode) instead of one per line."""
    up = [Line2D([], [], color=c, lw=2.5, label=k) for k, c in colors.items()]
    md = [Line2D([], [], color="0.3", ls=MODE_STYLES.get(m, ("-", "o"))[0], marker=MODE_STYLES.get(m, ("-", "o"))[1],
                 label=MODE_LABELS.get(m, m)) for m in modes] + [h for _, h in extra]
    # at most 3 upstreams a row: the colour legend stays in the left half, clear of the mode legend on the right
    l1 = fig.legend(handles=up, title="upstream (colour)", loc="upper left", bbox_to_anchor=(0.05, 0.0),
                    ncol=min(len(up), 3), frameon=False)
    fig.add_artist(l1)
    fig.legend(handles=md, title="probe mode (line style)", loc="upper right", bbox_to_anchor=(0.97, 0.0),
               ncol=min(len(md), 2), frameon=False)


def plot_ablation(agg: pd.DataFrame, path: Path, band: str = "ci95") -> Path:
    """Metric vs number of labelled training utterances (log x), one panel per task, bands over seeds."""
    rows = agg[agg["mode"] != "layer"]
    if rows.empty:
        raise ValueError("plot_ablation: no last / weighted_sum / finetune rows to plot")
    rows, colors = with_keys(rows)
    tasks = sorted(rows["task"].unique())
    modes = [m for m in MODE_STYLES if m in set(rows["mode"])]
    fig, axes = _grid(len(tasks))
    for ax, task in zip(axes, tasks):
        t = rows[rows["task"] == task]
        metric = str(t["metric"].iloc[0])
        label, k = metric_display(metric)
        for (key, mode), g in t.groupby(["key", "mode"], sort=False):
            g = g.sort_values("train_utts")
            x, y = g["train_utts"].to_numpy(float), g["test_mean"].to_numpy(float) * k
            err = (g["test_ci95"] if band == "ci95" else g["test_std"]).to_numpy(float) * k
            ls, mk = MODE_STYLES.get(mode, ("-", "o"))
            ax.plot(x, y, color=colors[key], ls=ls, marker=mk, ms=4, lw=1.6)
            ok = np.isfinite(err)
            if ok.any():
                low, high = interval(metric, y[ok], err[ok], k)
                ax.fill_between(x[ok], low, high, color=colors[key], alpha=0.12, lw=0)
        ax.set_xscale("log")
        ax.set_xlabel("labelled training utterances (log scale)")
        ax.set_ylabel(f"test {label}, {direction_words(metric)}")
        ax.set_title(task)
        ax.grid(True, which="both", alpha=0.3)
        fr = t.groupby("fraction")["train_utts"].mean().sort_index()
        top = ax.secondary_xaxis("top")
        ticks: dict[float, list[str]] = {}  # fractions raised to the same size (one utterance per speaker) share a tick
        for f, n in fr.items():
            ticks.setdefault(float(n), []).append(f"{f:g}")
        top.set_xticks(list(ticks), ["/".join(v) for v in ticks.values()], fontsize=8)
        top.xaxis.set_minor_locator(NullLocator())
        top.set_xlabel("fraction of the labelled train split", fontsize=8)
    band_name = "95% CI" if band == "ci95" else "±1 std"
    n_seeds = int(rows["n_seeds"].max())
    fig.suptitle(f"Data-size ablation: test score vs labelled data (mean over up to {n_seeds} seeds, "
                 f"band = {band_name})", y=1.0)
    fig.tight_layout()
    _legends(fig, colors, modes)
    return save_figure(fig, path)


def mean_layer_weights(runs: pd.DataFrame) -> pd.DataFrame:
    """Weighted-sum runs at each key's largest fraction -> mean and std of each hidden state's weight over seeds."""
    ws = runs[(runs["mode"] == "weighted_sum") & (runs["layer_weights"].str.len() > 0)]
    out = []
    for (up, preset, task), g in ws.groupby(["upstream", "preset", "task"], sort=True):
        g = g[g["fraction"] == g["fraction"].max()]
        try:
            parsed = [[float(x) for x in s.split(";")] for s in g["layer_weights"]]
        except ValueError as e:
            raise ValueError(f"layer_weights of {up}/{task}: not ';'-joined numbers ({e})") from e
        if len({len(p) for p in parsed}) != 1:
            raise ValueError(f"layer_weights of {up}/{task}: seeds disagree on the number of hidden states")
        w = np.array(parsed)  # (seeds, hidden states)
        for i in range(w.shape[1]):
            out.append(dict(upstream=up, preset=preset, task=task, fraction=float(g["fraction"].iloc[0]),
                            hidden_state=i, weight_mean=w[:, i].mean(), weight_std=w[:, i].std(), n_seeds=len(w)))
    return pd.DataFrame(out, columns=["upstream", "preset", "task", "fraction", "hidden_state", "weight_mean",
                                      "weight_std", "n_seeds"])


def plot_layer_weights(weights: pd.DataFrame, path: Path) -> Path:
    """Grouped bars: learned softmax weight per hidden state, one panel per task, one bar group per upstream."""
    if weights.empty:
        raise ValueError("plot_layer_weights: no weighted_sum rows with layer_weights")
    weights, colors = with_keys(weights)
    tasks = sorted(weights["task"].unique())
    fig, axes = _grid(len(tasks), height=3.6)
    keys = list(colors)
    width = 0.8 / len(keys)
    for ax, task in zip(axes, tasks):
        t = weights[weights["task"] == task]
        n = int(t["hidden_state"].max()) + 1
        for j, key in enumerate(keys):
            g = t[t["key"] == key].sort_values("hidden_state")
            if g.empty:
                continue
            ax.bar(g["hidden_state"] + (j - (len(keys) - 1) / 2) * width, g["weight_mean"], width,
                   yerr=g["weight_std"], color=colors[key], capsize=2, error_kw={"lw": 0.8})
        ax.axhline(1.0 / n, color="0.4", ls=":", lw=1)
        ax.set_xticks(range(n), ["input\nblock" if i == 0 else f"layer {i}" for i in range(n)], fontsize=8)
        ax.set_xlabel("hidden state")
        ax.set_ylabel("softmax weight (fraction of 1)")
        ax.set_title(task)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("Learned weighted-sum layer weights (mean ± std over seeds, largest label fraction)", y=1.0)
    fig.tight_layout()
    uniform = Line2D([], [], color="0.4", ls=":", label="uniform weight 1/(N+1)")
    fig.legend(handles=[Patch(color=c, label=k) for k, c in colors.items()] + [uniform], loc="upper center",
               bbox_to_anchor=(0.5, 0.0), ncol=min(len(colors) + 1, 6), frameon=False, title="upstream")
    return save_figure(fig, path)


def plot_layer_probe(agg: pd.DataFrame, path: Path) -> Path:
    """Score of a probe on each single hidden state (mode=layer), the weighted sum as a dashed reference."""
    lay = agg[agg["mode"] == "layer"]
    if lay.empty:
        raise ValueError("plot_layer_probe: no mode=layer rows")
    lay = lay[lay["fraction"] == lay.groupby(["upstream", "task"])["fraction"].transform("max")]
    lay, colors = with_keys(lay)
    ws, _ = with_keys(agg[agg["mode"] == "weighted_sum"]) if (agg["mode"] == "weighted_sum").any() else (None, None)
    tasks = sorted(lay["task"].unique())
    fig, axes = _grid(len(tasks), height=3.8)
    for ax, task in zip(axes, tasks):
        t = lay[lay["task"] == task]
        metric = str(t["metric"].iloc[0])
        label, k = metric_display(metric)
        for key, g in t.groupby("key", sort=False):
            g = g.sort_values("layer")
            x, y, e = g["layer"].to_numpy(), g["test_mean"].to_numpy(float) * k, g["test_ci95"].to_numpy(float) * k
            low, high = interval(metric, y, np.where(np.isfinite(e), e, 0), k)
            ax.errorbar(x, y, yerr=np.stack([y - low, high - y]), color=colors[key], marker="o", ms=4, capsize=3)
            best = best_position(y, metric)
            ax.plot(x[best], y[best], marker="*", ms=13, color=colors[key], mec="k", mew=0.6, ls="none")
            if ws is not None:
                w = ws[(ws["task"] == task) & (ws["key"] == key) & (ws["fraction"] == g["fraction"].iloc[0])]
                if not w.empty:
                    ax.axhline(w["test_mean"].iloc[0] * k, color=colors[key], ls="--", lw=1, alpha=0.8)
        n = int(t["layer"].max()) + 1
        ax.set_xticks(range(n), ["input\nblock" if i == 0 else f"layer {i}" for i in range(n)], fontsize=8)
        ax.set_xlabel("hidden state probed")
        ax.set_ylabel(f"test {label}, {direction_words(metric)}")
        ax.set_title(task)
        ax.grid(True, alpha=0.3)
    fig.suptitle("Per-layer probes: one probe per single hidden state (mean ± 95% CI over seeds)", y=1.0)
    fig.tight_layout()
    extra = [Line2D([], [], color="0.3", marker="*", ms=11, ls="none", mec="k", label="best layer"),
             Line2D([], [], color="0.3", ls="--", label="weighted sum, same data")]
    fig.legend(handles=[Line2D([], [], color=c, marker="o", label=k) for k, c in colors.items()] + extra,
               loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(colors) + 2, 7), frameon=False)
    return save_figure(fig, path)
