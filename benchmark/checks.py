"""Science checks: the papers' qualitative claims, each tested on the aggregated result rows (never hard-coded)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from benchmark.plots import metric_display
from upstream.registry import is_pretrained

_SCENE = ["corpus", "task", "fraction"]


@dataclass(frozen=True)
class Check:
    claim: str
    verdict: str  # "holds", "mixed", "does not hold", "not enough data"
    detail: str


def _verdict(wins: int, n: int) -> str:
    if n == 0:
        return "not enough data"
    return "holds" if wins == n else "does not hold" if wins == 0 else "mixed"


def _pairs(a: pd.DataFrame, b: pd.DataFrame, on: list[str]) -> pd.DataFrame:
    """Join two aggregated selections on `on`; columns get suffixes _a and _b; gap = a - b in display units."""
    m = a.merge(b, on=on, suffixes=("_a", "_b"))
    scale = np.array([metric_display(x)[1] for x in m["metric_a"]]) if len(m) else np.array([])
    m["gap"] = (m["test_mean_a"] - m["test_mean_b"]) * scale
    # A gap larger than the combined CI half-widths is reported as clear (a conservative reading).
    m["clear"] = m["gap"].abs() > np.sqrt(m["test_ci95_a"].fillna(0) ** 2 + m["test_ci95_b"].fillna(0) ** 2) * scale
    return m


def _summary(m: pd.DataFrame, what: str) -> tuple[int, int, str]:
    wins, n = int((m["gap"] > 0).sum()), len(m)
    if n == 0:
        return 0, 0, f"no {what} to compare"
    clear = int(((m["gap"] > 0) & m["clear"]).sum())
    return wins, n, (f"{wins}/{n} {what} ({clear} beyond the 95% CIs); mean gap {m['gap'].mean():+.2f} points, "
                     f"range {m['gap'].min():+.2f} to {m['gap'].max():+.2f}")


def _pretrained(agg: pd.DataFrame) -> pd.Series:
    # By name, not by pretrain_frames: a checkpoint that predates throughput metadata is still pretrained.
    return agg["upstream"].map(is_pretrained).astype(bool)


def check_scarce_labels(agg: pd.DataFrame) -> Check:
    claim = "Pretrained features beat log-mel most when labels are scarce (last layer, frozen)"
    mel = agg[(agg["upstream"] == "mel") & (agg["mode"] == "last")]
    pre = agg[_pretrained(agg) & (agg["mode"] == "last")]
    m = _pairs(pre, mel.drop(columns=["upstream", "preset", "mode", "layer"]), _SCENE)
    rows = []
    for (up, pr, task), g in m.groupby(["upstream", "preset", "task"]):
        if g["fraction"].nunique() >= 2:
            g = g.sort_values("fraction")
            rows.append((f"{up}:{pr}/{task}", g["gap"].iloc[0], g["gap"].iloc[-1], g["fraction"].iloc[0]))
    wins = sum(s > f for _, s, f, _ in rows)
    if not rows:
        return Check(claim, "not enough data", "needs mel and a pretrained upstream, mode=last, at >= 2 fractions")
    small, full = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    return Check(claim, _verdict(wins, len(rows)),
                 f"the gap over mel is larger at the smallest fraction than at the largest in {wins}/{len(rows)} "
                 f"upstream/task pairs (mean gap {small.mean():+.2f} points at the smallest fraction, range "
                 f"{small.min():+.2f} to {small.max():+.2f}, vs {full.mean():+.2f} at the largest, range "
                 f"{full.min():+.2f} to {full.max():+.2f})")


def check_mode_beats(agg: pd.DataFrame, better: str, worse: tuple[str, ...], claim: str) -> Check:
    """`better` mode vs the best of `worse` modes, for every upstream/task/fraction that has both; at matched
    probe step budgets where the rows have them (e.g. a fine-tuning run and frozen probes of as many steps)."""
    keys = ["upstream", "preset", *_SCENE]
    a = agg[agg["mode"] == better]
    b = agg[agg["mode"].isin(worse)]
    matched = _pairs(a, _best(b, [*keys, "steps"]), [*keys, "steps"])
    m = matched if len(matched) else _pairs(a, _best(b, keys), keys)
    wins, n, detail = _summary(m, "upstream/task/fraction cells")
    if len(matched):
        detail += f"; at matched probe budgets ({_steps(m['steps'])} steps)"
    elif n and set(m["steps_a"]) != set(m["steps_b"]):  # e.g. short fine-tuning against longer frozen probes
        detail += (f"; NOT a matched budget: {better} trained {_steps(m['steps_a'])} probe steps, "
                   f"{'/'.join(worse)} {_steps(m['steps_b'])}")
    return Check(claim, _verdict(wins, n), detail)


def _steps(values: pd.Series) -> str:
    return "/".join(f"{x:.0f}" for x in sorted(set(values)))


def _best(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return rows.loc[rows.groupby(keys)["test_mean"].idxmax()] if not rows.empty else rows


def check_aalbert_vs_mockingjay(agg: pd.DataFrame) -> Check:
    claim = "AALBERT is close to Mockingjay with far fewer parameters"
    a = agg[(agg["upstream"] == "aalbert") & (agg["mode"] != "layer")]
    b = agg[(agg["upstream"] == "mockingjay") & (agg["mode"] != "layer")]
    a = a[a["fraction"] == a.groupby("task")["fraction"].transform("max")]
    m = _pairs(a, b, ["mode", "layer", *_SCENE])
    if m.empty:
        return Check(claim, "not enough data", "needs aalbert and mockingjay rows with the same task, mode and fraction")
    fewer = 100 * (1 - m["params_a"].iloc[0] / m["params_b"].iloc[0])
    worst = m.loc[m["gap"].abs().idxmax()]
    within = int((~m["clear"]).sum())
    verdict = "holds" if within == len(m) else "mixed" if within else "does not hold"
    return Check(claim, verdict,
                 f"AALBERT ({m['params_a'].iloc[0]:,.0f} params) is within {abs(worst['gap']):.2f} points of Mockingjay "
                 f"({m['params_b'].iloc[0]:,.0f} params, so {fewer:.0f}% fewer) over {len(m)} task/mode pairs at the "
                 f"largest fraction (worst: {worst['task']} {worst['mode']}, gap {worst['gap']:+.2f}; mean gap "
                 f"{m['gap'].mean():+.2f}); {within}/{len(m)} gaps inside the 95% CIs")


def check_random_controls(agg: pd.DataFrame) -> Check:
    claim = "Random-init controls fall below their pretrained counterparts"
    rnd = agg[agg["upstream"].str.endswith("_random")].copy()
    rnd["upstream"] = rnd["upstream"].str.removesuffix("_random")
    pre = agg[_pretrained(agg)]
    wins, n, detail = _summary(_pairs(pre, rnd, ["upstream", "preset", "mode", "layer", *_SCENE]),
                               "upstream/mode/task/fraction cells where pretrained > random-init")
    return Check(claim, _verdict(wins, n), detail)


def check_intermediate_layers(agg: pd.DataFrame) -> Check:
    """Among the Transformer layers 1..L (hidden state 0 is the input block, a projection of the features, so it
    is not an intermediate layer), is the dev-selected best one below the last and better than it on test?"""
    claim = "An intermediate layer beats the last one (AALBERT paper)"
    lay = agg[(agg["mode"] == "layer") & _pretrained(agg)]
    rows = []
    input_best = 0
    for (up, pr, task, fr), g in lay.groupby(["upstream", "preset", "task", "fraction"]):
        if g["layer"].nunique() < 3:
            continue
        input_best += int(g.loc[g["dev_mean"].idxmax(), "layer"] == 0)
        g = g[g["layer"] > 0]
        last = g.loc[g["layer"].idxmax()]
        best = g.loc[g["dev_mean"].idxmax()]  # chosen on dev, judged on test
        k = metric_display(str(g["metric"].iloc[0]))[1]
        rows.append((f"{up}:{pr}/{task}", int(best["layer"]), int(last["layer"]),
                     (best["test_mean"] - last["test_mean"]) * k))
    if not rows:
        return Check(claim, "not enough data", "needs mode=layer runs for >= 3 hidden states")
    wins = sum(b != last and gap > 0 for _, b, last, gap in rows)
    gaps = np.array([r[3] for r in rows])
    best = pd.Series([f"layer {r[1]}" for r in rows]).value_counts()
    return Check(claim, _verdict(wins, len(rows)),
                 f"among Transformer layers 1..L, the dev-selected best is an intermediate one and beats the last on "
                 f"test in {wins}/{len(rows)} pretrained upstream/task/fraction cells (choices: "
                 f"{', '.join(f'{k} x{v}' for k, v in best.items())}; test gain of the chosen layer over the last "
                 f"mean {gaps.mean():+.2f} points, range {gaps.min():+.2f} to {gaps.max():+.2f}); the input block "
                 f"(hidden state 0) was the best hidden state of all in {input_best}/{len(rows)}")


def science_checks(agg: pd.DataFrame) -> list[Check]:
    return [check_scarce_labels(agg),
            check_mode_beats(agg, "weighted_sum", ("last",), "Weighted sum of layers beats the last layer"),
            check_mode_beats(agg, "finetune", ("last", "weighted_sum"), "Fine-tuning beats the best frozen probe"),
            check_aalbert_vs_mockingjay(agg), check_random_controls(agg), check_intermediate_layers(agg)]


def checks_markdown(checks: list[Check]) -> str:
    return "".join(f"- **{c.claim}** — *{c.verdict}*: {c.detail}.\n" for c in checks)
