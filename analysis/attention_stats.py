"""Per-layer, per-head attention statistics: mean distance, entropy, diagonal and neighbour share."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from benchmark.report.tables import to_markdown

STAT_COLUMNS = ("mean_distance_frames", "entropy_nats", "diag_share", "neighbour_share", "local_share",
                "vertical_share")
VERTICAL_TOP = 0.05  # vertical_share: the mass on the top 5 % of keys of the query-averaged attention


def head_stats(weights: Tensor, lengths: Tensor, local_frames: int = 1) -> dict[str, Tensor]:
    """Attention probabilities (B, heads, T, T) + valid lengths (B,) -> each statistic as (B, heads).

    Every statistic is a mean over the valid QUERY frames of one utterance; padded keys carry zero
    probability already (key padding mask), padded queries are excluded here.
      mean_distance_frames: sum_j p_ij |i - j|        (how far a frame looks, in frames)
      entropy_nats:         -sum_j p_ij log p_ij      (0 = one key, log(n) = uniform)
      diag_share:           p_ii                      (attention to itself)
      neighbour_share:      p_i,i-1 + p_i,i+1         (attention to the adjacent frames)
      local_share:          sum_{|i-j| <= local_frames} p_ij   (attention to a window around the query)
      vertical_share:       mass of the query-averaged attention c_j = mean_i p_ij on its top ceil(5 % n) keys
                            (a few keys that every query looks at: high; uniform or diagonal: about 5 %)
    uniform_entropy_nats / uniform_distance_frames are the values of uniform attention over the n valid frames.
    """
    B, H, T, _ = weights.shape
    p = weights.double()
    idx = torch.arange(T, device=p.device)
    dist = (idx[:, None] - idx[None, :]).abs().double()  # (T, T)
    qmask = (idx[None, :] < lengths.to(p.device)[:, None]).double()  # (B, T) valid queries
    n = lengths.to(p.device).clamp_min(1).double()[:, None]  # (B, 1)

    def over_queries(x: Tensor) -> Tensor:  # (B, H, T) -> (B, H) mean over valid queries
        return (x * qmask[:, None, :]).sum(-1) / n

    neighbours = (dist == 1).double()
    out = {
        "mean_distance_frames": over_queries((p * dist).sum(-1)),
        "entropy_nats": over_queries(-torch.special.xlogy(p, p).sum(-1)),
        "diag_share": over_queries(torch.diagonal(p, dim1=-2, dim2=-1)),
        "neighbour_share": over_queries((p * neighbours).sum(-1)),
        "local_share": over_queries((p * (dist <= local_frames).double()).sum(-1)),
    }
    cols = (p * qmask[:, None, :, None]).sum(-2) / n[:, :, None]  # (B, H, T): query-averaged attention per key
    vertical = torch.zeros(B, H, dtype=torch.float64, device=p.device)
    for b, length in enumerate(lengths.tolist()):
        k = max(1, math.ceil(VERTICAL_TOP * max(length, 1)))
        vertical[b] = cols[b, :, :max(length, 1)].topk(k, dim=-1).values.sum(-1)
    out["vertical_share"] = vertical
    nn_ = lengths.clamp_min(1).double()
    out["uniform_entropy_nats"] = torch.log(nn_)[:, None].expand(B, H)
    out["uniform_distance_frames"] = ((nn_ ** 2 - 1) / (3 * nn_))[:, None].expand(B, H)
    return {k: v.float().cpu() for k, v in out.items()}


def stats_rows(model: str, utt_ids: list[str], weights: list[Tensor], lengths: Tensor, local_frames: int = 1
               ) -> list[dict]:
    """One row per (utterance, layer, head) for a batch; layers numbered from 1 (layer i = hidden state i)."""
    rows = []
    for layer, w in enumerate(weights, start=1):
        s = head_stats(w, lengths, local_frames)
        for b, utt in enumerate(utt_ids):
            for h in range(w.shape[1]):
                rows.append({"model": model, "utt": utt, "frames": int(lengths[b]), "layer": layer, "head": h,
                             **{k: float(v[b, h]) for k, v in s.items()}})
    return rows


def summarise(per_head: pd.DataFrame, frame_ms: dict[str, float]) -> pd.DataFrame:
    """(model, layer) table: mean over heads then over utterances; *_std = std over utterances of the head mean."""
    cols = [*STAT_COLUMNS, "uniform_entropy_nats", "uniform_distance_frames"]
    per_utt = per_head.groupby(["model", "layer", "utt"], sort=False)[cols].mean().reset_index()
    g = per_utt.groupby(["model", "layer"], sort=False)
    out = g[cols].mean()
    for c in STAT_COLUMNS:
        out[f"{c}_std"] = g[c].std(ddof=0)
    out["n_utts"] = g.size()
    out["n_heads"] = per_head.groupby(["model", "layer"], sort=False)["head"].nunique()
    out = out.reset_index()
    out.insert(3, "mean_distance_ms", [d * frame_ms[m] for m, d in zip(out["model"], out["mean_distance_frames"])])
    return out


def stats_markdown(summary: pd.DataFrame) -> str:
    show = pd.DataFrame({
        "model": summary["model"], "layer": summary["layer"],
        "mean distance (frames)": [f"{m:.1f} ± {s:.1f}" for m, s in
                                   zip(summary["mean_distance_frames"], summary["mean_distance_frames_std"])],
        "mean distance (ms)": summary["mean_distance_ms"].map(lambda v: f"{v:.0f}"),
        "entropy (nats)": [f"{m:.2f} ± {s:.2f}" for m, s in zip(summary["entropy_nats"], summary["entropy_nats_std"])],
        "uniform entropy (nats)": summary["uniform_entropy_nats"].map(lambda v: f"{v:.2f}"),
        "diagonal share (%)": (summary["diag_share"] * 100).map(lambda v: f"{v:.1f}"),
        "±1 neighbour share (%)": (summary["neighbour_share"] * 100).map(lambda v: f"{v:.1f}"),
        "utterances": summary["n_utts"], "heads": summary["n_heads"]})
    return (to_markdown(show) + "\nMeans over heads, then over utterances (± std over utterances). "
            "Uniform attention over an utterance of n frames has entropy log n and mean distance (n²-1)/3n frames.\n")


def as_numpy_maps(weights: list[Tensor], length: int) -> np.ndarray:
    """Per-layer maps of utterance 0 cropped to its valid frames: (layers, heads, n, n)."""
    return torch.stack([w[0, :, :length, :length] for w in weights]).float().cpu().numpy()
