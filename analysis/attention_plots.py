"""Attention figures: maps (rows = layers, columns = heads, one block per model) and per-layer statistics."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from benchmark.report.plots import color_map, save_figure  # noqa: E402

FLOOR = 1e-4  # log colour scale floor: uniform attention over 10 s (1000 frames) is 1e-3, still visible


def plot_attention_maps(maps: dict[str, np.ndarray], frame_ms: dict[str, float], path: Path, title: str) -> Path:
    """maps: model -> (layers, heads, n, n). Blocks side by side when few heads, else stacked vertically."""
    models = list(maps)
    max_layers = max(m.shape[0] for m in maps.values())
    max_heads = max(m.shape[1] for m in maps.values())
    side = len(models) * max_heads <= 12  # wider than ~12 panels is unreadable on a screen
    cell = 1.55 if max_heads <= 4 else 1.2
    w, h = (len(models) * max_heads, max_layers) if side else (max_heads, len(models) * max_layers)
    fig = plt.figure(figsize=(cell * w + 1.6, cell * h + 1.4), layout="constrained")
    body, bar = fig.subfigures(1, 2, width_ratios=[1, 0.04], wspace=0.01)  # colour bar apart: blocks stay equal
    subs = np.atleast_1d(body.subfigures(1, len(models), wspace=0.04) if side else
                         body.subfigures(len(models), 1, hspace=0.04))
    norm = LogNorm(vmin=FLOOR, vmax=1.0)
    im = None
    for sub, model in zip(subs, models):
        m = maps[model]
        L, H, n, _ = m.shape
        axes = sub.subplots(max_layers, max_heads, squeeze=False, sharex=True, sharey=True)
        secs = n * frame_ms[model] / 1000
        sub.suptitle(f"{model}: {L} layers x {H} heads", fontsize=11, fontweight="bold")
        for i in range(max_layers):
            for j in range(max_heads):
                ax = axes[i, j]
                if i >= L or j >= H:
                    ax.set_visible(False)
                    continue
                im = ax.imshow(np.clip(m[i, j], FLOOR, 1.0), norm=norm, cmap="magma", origin="upper",
                               extent=(0, secs, secs, 0), interpolation="nearest", aspect="equal")
                ax.tick_params(labelsize=7)
                if i == 0:
                    ax.set_title(f"head {j + 1}", fontsize=9)
                if j == 0:
                    ax.set_ylabel(f"layer {i + 1}\nquery time (s)", fontsize=8)
                if i == L - 1:
                    ax.set_xlabel("key time (s)", fontsize=8)
    cax = bar.add_axes((0.1, 0.25, 0.35, 0.5))  # one colour bar for every panel: they share the log scale
    cb = bar.colorbar(im, cax=cax)
    cb.set_label("attention probability (log scale)")
    fig.suptitle(title, fontsize=12)
    return save_figure(fig, path)


def plot_attention_stats(summary: pd.DataFrame, path: Path) -> Path:
    """2x2 panels, x = layer: mean distance, entropy (with the uniform level), diagonal and neighbour share."""
    models = list(dict.fromkeys(summary["model"]))
    colors = color_map(models)
    panels = [("mean_distance_frames", "mean attention distance (frames)", "uniform_distance_frames", 1.0),
              ("entropy_nats", "attention entropy (nats)", "uniform_entropy_nats", 1.0),
              ("diag_share", "share on the diagonal (%)", None, 100.0),
              ("neighbour_share", "share on the ±1 neighbours (%)", None, 100.0)]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, (col, label, uniform, k) in zip(axes.ravel(), panels):
        for mi, model in enumerate(models):
            s = summary[summary["model"] == model].sort_values("layer")
            x = s["layer"].to_numpy() + (mi - (len(models) - 1) / 2) * 0.06  # dodge so error bars stay apart
            ax.errorbar(x, s[col] * k, yerr=s[f"{col}_std"] * k, color=colors[model], marker="o", ms=5, capsize=3)
        if uniform:  # one grey reference per distinct frame grid (models on the same frames share it)
            ref = summary.groupby("layer")[uniform].agg(["min", "max"])
            ax.plot(ref.index, ref["min"], color="0.35", ls=":", lw=1.4)
            if not np.allclose(ref["min"], ref["max"]):
                ax.plot(ref.index, ref["max"], color="0.35", ls=":", lw=1.4)
        ax.set_xlabel("layer")
        ax.set_ylabel(label)
        ax.set_title(label.split(" (")[0])
        ax.set_xticks(sorted(summary["layer"].unique()))
        ax.grid(True, alpha=0.3)
        if k == 100.0:
            ax.set_ylim(bottom=0)
    n_utts = int(summary["n_utts"].max())
    fig.suptitle(f"Per-layer attention statistics (mean over heads and {n_utts} utterance(s), ± std over utterances)")
    fig.tight_layout()
    handles = [Line2D([], [], color=colors[m], marker="o", label=m) for m in models]
    handles.append(Line2D([], [], color="0.3", ls=":", label="uniform attention (same utterances)"))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(handles), 4),
               frameon=False)
    return save_figure(fig, path)
