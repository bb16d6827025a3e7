"""Science checks: the papers' qualitative claims, each stated as the exact condition tested on the aggregated rows."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from benchmark.record.metrics import sign
from benchmark.report.paired import beyond_noise
from benchmark.report.plots import metric_display
from upstream.registry import FAMILIES, controlled_model

_SCENE = ["corpus", "task", "fraction"]
_SAME_MODEL = ["upstream", "preset", "ckpt_hash"]  # two modes of one checkpoint


@dataclass(frozen=True)
class Check:
    claim: str
    verdict: str  # "holds", "mixed", "does not hold", "not enough data"
    detail: str


def _verdict(wins: int, n: int, clear: int | None = None) -> str:
    """'holds' (every cell), 'mixed', 'does not hold' (none); a claim that holds in every cell on the means but not
    beyond noise in every one (`clear`: the cells whose win is beyond noise) 'holds, within noise'."""
    if n == 0:
        return "not enough data"
    if wins == n:
        return "holds" if clear is None or clear == n else "holds, within noise"
    return "does not hold" if wins == 0 else "mixed"


def _join(a: pd.DataFrame, b: pd.DataFrame, on: list[str]) -> pd.DataFrame:
    """a x b on `on` (columns suffixed _a/_b, budget always as budget_a/budget_b); gap = how much better a is than b on
    test, in points of the metric as displayed (a - b for a higher-is-better metric, b - a for an error rate);
    ci = the combined 95% CI half-widths of the seed means; clear = the gap is beyond noise
    (benchmark.report.paired.beyond_noise: a paired test on the test utterances where the rows' outcomes are in the
    `units` column, and the seeds' spread; never on a zero-width interval alone)."""
    m = a.merge(b, on=on, suffixes=("_a", "_b"))
    if "budget" in on:
        m["budget_a"] = m["budget_b"] = m["budget"]
    scale = np.array([metric_display(str(x))[1] * sign(str(x)) for x in m["metric_a"]], dtype=float)
    m["gap"] = (m["test_mean_a"] - m["test_mean_b"]).to_numpy(dtype=float) * scale
    m["dev_gap"] = (m["dev_mean_a"] - m["dev_mean_b"]).to_numpy(dtype=float) * scale
    ci = np.sqrt(m["test_ci95_a"].astype(float) ** 2 + m["test_ci95_b"].astype(float) ** 2).to_numpy() * scale
    m["ci"] = np.abs(ci)
    units_a = m["units_a"] if "units_a" in m else pd.Series([None] * len(m), index=m.index, dtype=object)
    units_b = m["units_b"] if "units_b" in m else pd.Series([None] * len(m), index=m.index, dtype=object)
    m["clear"] = np.array([beyond_noise(ua, ub, g, c, int(na), int(nb)) for ua, ub, g, c, na, nb in
                           zip(units_a, units_b, m["gap"], m["ci"], m["n_seeds_a"], m["n_seeds_b"])], dtype=bool)
    return m


def _budgets(values: pd.Series) -> str:
    return "/".join(sorted({str(v) for v in values}))


def _pairs(a: pd.DataFrame, b: pd.DataFrame, keys: list[str], names: tuple[str, str]) -> tuple[pd.DataFrame, str]:
    """Cells of `a` paired with `b` at the same keys AND probe budget, and a note saying which budgets.

    A converged probe and a fixed-step one are never compared silently: where no cell pairs at a matched budget but
    some pair at other budgets, those are compared (one b row per cell, the converged one first) and the note says
    NOT matched; where some cells match, the cells that only pair at another budget are left out and counted."""
    a = a.assign(_row=np.arange(len(a)))  # to count the rows of `a` that only pair at another budget
    matched = _join(a, b, [*keys, "budget"])
    one_b = b.assign(_conv=b["budget"] == "converge", _score=_score(b, "test_mean")).sort_values(["_conv", "_score"])
    loose = _join(a, one_b.groupby(keys, dropna=False).tail(1).drop(columns=["_conv", "_score"]), keys)
    if len(matched):
        left_out = len(set(loose["_row"]) - set(matched["_row"]))
        out = f"; {left_out} {names[0]} cell(s) with only mismatched budgets left out" if left_out else ""
        return matched, f"at matched probe budgets ({_budgets(matched['budget'])}){out}"
    if len(loose):
        return loose, (f"NOT at a matched probe budget (none pairs up): {names[0]} {_budgets(loose['budget_a'])}, "
                       f"{names[1]} {_budgets(loose['budget_b'])}")
    return loose, ""


def _gaps(m: pd.DataFrame, col: str = "gap") -> str:
    return f"mean {m[col].mean():+.2f} points, range {m[col].min():+.2f} to {m[col].max():+.2f}"


def _wins(m: pd.DataFrame) -> tuple[int, int, str]:
    """Cells where a beats b on test: their count, how many of them beyond noise (benchmark.report.paired), and
    'w/n (c beyond noise)'."""
    wins, clear = int((m["gap"] > 0).sum()), int(((m["gap"] > 0) & m["clear"]).sum())
    return wins, clear, f"{wins}/{len(m)} ({clear} beyond noise)"


def _cell(r: pd.Series, mode: bool = False) -> str:
    """'aalbert:small/phone_linear weighted_sum at 0.01': one compared cell (its first side where the two sides
    are two upstreams), for the lists of failing cells."""
    side = lambda c: r[c] if c in r else r[f"{c}_a"]  # noqa: E731
    kind = str(side("mode")) if mode else ""
    if kind == "layer":
        kind = f"layer {int(side('layer'))}"
    return f"{side('upstream')}:{side('preset')}/{r['task']}{' ' + kind if kind else ''} at {r['fraction']:g}"


def _failing(m: pd.DataFrame, ok: pd.Series, mode: bool = False, label: str = "failing") -> str:
    """'; failing: <cell> (gap, CI), ...' naming every cell where the claim fails (`ok` False), worst first: what a
    'mixed' verdict rests on."""
    bad = m[~ok.to_numpy(dtype=bool)].sort_values("gap")
    if bad.empty:
        return ""
    ci = lambda v: f"CI {v:.2f}" if np.isfinite(v) else "one seed, no CI"  # noqa: E731
    return f"; {label}: " + ", ".join(f"{_cell(r, mode)} ({r['gap']:+.2f}, {ci(r['ci'])})" for _, r in bad.iterrows())


MEL_BASELINE_PRESET = "default"  # the papers' baseline: 80 log-mel on 10-ms frames


def _mel(rows: pd.DataFrame) -> pd.DataFrame:
    """The log-mel baseline's last-layer rows: the papers' 10-ms `mel:default` where the rows have it, else the one
    mel preset they hold (none where several others, e.g. `delta` and `stack3`, leave the baseline ambiguous)."""
    mel = rows[(rows["upstream"] == "mel") & (rows["mode"] == "last")]
    presets = set(mel["preset"])
    if MEL_BASELINE_PRESET in presets:
        return mel[mel["preset"] == MEL_BASELINE_PRESET]
    return mel if len(presets) == 1 else mel.iloc[:0]


def _takes_weights(upstream: str) -> bool:
    """A registered upstream built from weights (names no longer registered count as not)."""
    return upstream in FAMILIES and FAMILIES[upstream].takes_weights


def _pretrained(agg: pd.DataFrame) -> pd.Series:
    # By family, not by pretrain_frames: a checkpoint that predates throughput metadata is still pretrained.
    return agg["upstream"].map(_takes_weights).astype(bool)


def _controls(agg: pd.DataFrame) -> pd.DataFrame:
    """The rows of random-init controls, each labelled with the model it controls (the registry's families say
    which), so that they pair with that model's rows."""
    model = agg["upstream"].map(controlled_model)
    return agg[model.notna()].assign(upstream=model[model.notna()])


def _labels(m: pd.DataFrame) -> pd.Series:
    """'mockingjay:small/phone_linear', plus the corpus, budget or checkpoint where the rows hold several."""
    lab = m["upstream"] + ":" + m["preset"].astype(str) + "/" + m["task"]
    if m["corpus"].nunique() > 1:
        lab = lab + " on " + m["corpus"].astype(str)
    if m["budget_a"].nunique() > 1:
        lab = lab + " [" + m["budget_a"].astype(str) + "]"
    if m.groupby("upstream")["ckpt_hash_a"].nunique().max() > 1:
        lab = lab + " @" + m["ckpt_hash_a"].astype(str).str[:8]
    return lab


# labelled training frames within 2 % of each other: the same frames (a 10-ms and a 30-ms front-end differ 3x)
FRAME_MATCH = 0.02


def _model_key(rows: pd.DataFrame) -> pd.Series:
    if rows.empty:
        return pd.Series(index=rows.index, dtype=str)
    return rows[_SAME_MODEL].astype(str).agg("|".join, axis=1)


def _mel_name(preset: str) -> str:
    """'mel:stack3 (30 ms)': a mel preset with its frame period (its front-end's frame rule; none for a preset no
    longer registered)."""
    try:
        rule = FAMILIES["mel"].front_end(preset).frame_rule
    except (KeyError, ValueError, AttributeError):
        return f"mel:{preset}"
    return f"mel:{preset} ({1000 * rule.shift / rule.sample_rate:g} ms)"


def _mel_on_the_same_frames(pre: pd.DataFrame, agg: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """The log-mel baseline of each pretrained checkpoint in `pre` (tagged with its `_model_key`): the mel preset (frozen last layer) whose cells
    were trained on the same labelled frames at the same task and fraction (counts within FRAME_MATCH), so a 30-ms
    Transformer meets mel:stack3 and a 10-ms one the papers' 10-ms mel:default (preferred where several presets
    match). Rows without frame counts (an older runs.csv) meet `_mel`'s baseline. Returns the mel rows, each tagged
    with the checkpoint it pairs with (`_model`), and {checkpoint: its mel preset} of those that have one."""
    mel = agg[(agg["upstream"] == "mel") & (agg["mode"] == "last")]
    out, baseline = [], {}
    for model, g in pre.groupby("_model", sort=True):
        same = []
        for preset, mp in mel.groupby("preset", sort=True):
            j = g.merge(mp, on=_SCENE, suffixes=("", "_mel"))
            ratio = (j["train_frames"] / j["train_frames_mel"]).to_numpy(dtype=float)
            if len(j) and np.isfinite(ratio).all() and (np.abs(ratio - 1) <= FRAME_MATCH).all():
                same.append(preset)
        if same:
            chosen = mel[mel["preset"] == (MEL_BASELINE_PRESET if MEL_BASELINE_PRESET in same else same[0])]
            if len(same) > 1 and MEL_BASELINE_PRESET not in same:
                continue  # e.g. delta and another 10-ms preset: no baseline stands out
        elif g["train_frames"].isna().any() or mel["train_frames"].isna().any():
            chosen = _mel(mel)
        else:
            continue  # no mel preset on this checkpoint's frames
        if len(chosen):
            baseline[model] = str(chosen["preset"].iloc[0])
            out.append(chosen.assign(_model=model))
    return (pd.concat(out) if out else mel.iloc[:0].assign(_model=pd.Series(dtype=str))), baseline


def _scarce_pairs(m: pd.DataFrame) -> tuple[int, int, int, list[str]]:
    """Per pretrained upstream/task of the paired cells `m`: does it beat mel at its smallest fraction, by more than
    at its largest? (wins, pairs judged, wins beyond noise at the scarce end, one line per pair)."""
    parts, wins, n, clear = [], 0, 0, 0
    for label, g in m.groupby("label", sort=True):
        if g["fraction"].nunique() < 2:
            continue
        g = g.sort_values("fraction")
        small, large = g.iloc[0], g.iloc[-1]
        # A narrower loss is not a win: the scarce end must be above mel, and further above than the full end.
        ok = small["gap"] > 0 and small["gap"] > large["gap"]
        wins, n, clear = wins + ok, n + 1, clear + bool(ok and small["clear"])
        above = ", ".join(f"{f:g}" for f in g.loc[g["gap"] > 0, "fraction"])
        parts.append(f"{label}: {small['gap']:+.2f} points at fraction {small['fraction']:g} vs "
                     f"{large['gap']:+.2f} at {large['fraction']:g}, above mel at "
                     f"{'fractions ' + above if above else 'no fraction'} ({'holds' if ok else 'does not hold'})")
    return wins, n, clear, parts


def _against_mel(pre: pd.DataFrame, agg: pd.DataFrame) -> tuple[pd.DataFrame, str, pd.DataFrame, str]:
    """`pre`'s cells paired with the mel on their own frames (labelled with it), and with the papers' 10-ms
    mel:default where that is another preset for some checkpoint (the comparison the papers make, at 3x the
    labelled frames for a 30-ms model), each with its budget note."""
    tagged = pre.assign(_model=_model_key(pre))
    mel, baseline = _mel_on_the_same_frames(tagged, agg)
    m, note = _pairs(tagged, mel.drop(columns=["upstream", "preset", "mode", "layer"]), ["_model", *_SCENE],
                     ("pretrained", "mel"))
    if len(m):
        m = m.assign(label=_labels(m) + " vs " + m["_model"].map(baseline).map(_mel_name))
    papers = agg[(agg["upstream"] == "mel") & (agg["mode"] == "last") & (agg["preset"] == MEL_BASELINE_PRESET)]
    other = tagged.loc[(tagged["_model"].map(baseline) != MEL_BASELINE_PRESET).astype(bool)]
    p, p_note = _pairs(other, papers.drop(columns=["upstream", "preset", "mode", "layer"]), _SCENE,
                       ("pretrained", "mel"))
    if len(p):
        p = p.assign(label=_labels(p) + f" vs mel:{MEL_BASELINE_PRESET}")
    return m, note, p, p_note


def check_scarce_labels(agg: pd.DataFrame) -> Check:
    claim = ("Pretrained features beat log-mel most when labels are scarce: frozen last layer above mel at the "
             "smallest fraction, by more than at the largest (mel on the same frames)")
    pre = agg[_pretrained(agg) & (agg["mode"] == "last")]
    m, note, papers, papers_note = _against_mel(pre, agg)
    if m.empty:
        return Check(claim, "not enough data", "needs mel and pretrained rows, mode=last, at the same fractions and "
                                               "on the same frames")
    wins, n, clear, parts = _scarce_pairs(m)
    if n == 0:
        return Check(claim, "not enough data", "needs mel and a pretrained upstream, mode=last, at >= 2 fractions")
    detail = (f"holds for {wins}/{n} pretrained upstream/task pairs ({clear} with the scarce-end win beyond noise), "
              f"each against the mel preset on its own frames, {note}; gap = pretrained better than mel by, on test: "
              + "; ".join(parts))
    pw, pn, pc, pparts = _scarce_pairs(papers) if len(papers) else (0, 0, 0, [])
    if pn:
        detail += (f". Against the papers' 10-ms mel:{MEL_BASELINE_PRESET} instead (a 30-ms model then has a third "
                   f"of mel's labelled frames): holds for {pw}/{pn} ({pc} beyond noise), {papers_note}: "
                   + "; ".join(pparts))
    return Check(claim, _verdict(wins, n, clear), detail)


def _score(rows: pd.DataFrame, col: str) -> pd.Series:
    """`col` signed by each row's metric direction: larger is better whatever the metric."""
    return rows[col] * rows["metric"].map(lambda m: sign(str(m))) if not rows.empty else rows[col]


def _best(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The best row (on test, in its metric's direction) of every `keys` cell."""
    if rows.empty:
        return rows
    return rows.loc[rows.assign(_s=_score(rows, "test_mean")).groupby(keys, dropna=False)["_s"].idxmax()]


def check_mode_beats(agg: pd.DataFrame, better: str, worse: tuple[str, ...], claim: str) -> Check:
    """`better` mode vs the best (on test) of `worse` modes of the same checkpoint, per task/fraction cell, at the
    same probe budget (see _pairs for mismatched budgets)."""
    keys = [*_SAME_MODEL, *_SCENE]
    b = agg[agg["mode"].isin(worse)]
    m, note = _pairs(agg[agg["mode"] == better], _best(b, [*keys, "budget"]), keys, (better, "/".join(worse)))
    if m.empty:
        return Check(claim, "not enough data", f"no upstream/task/fraction cell has {better} and {'/'.join(worse)}")
    wins, clear, won = _wins(m)
    return Check(claim, _verdict(wins, len(m), clear),
                 f"{better} above {'/'.join(worse)} on test in {won} upstream/task/fraction cells, {note}; "
                 f"gap {_gaps(m)}" + _failing(m, m["gap"] > 0))


def check_finetune(agg: pd.DataFrame) -> Check:
    claim = "Fine-tuning beats the frozen last-layer probe it starts from, on test"
    keys = [*_SAME_MODEL, *_SCENE]
    ft = agg[agg["mode"] == "finetune"]
    m, note = _pairs(ft, agg[agg["mode"] == "last"], keys, ("finetune", "frozen last"))
    if m.empty:
        return Check(claim, "not enough data", "no upstream/task/fraction cell has both finetune and frozen last")
    # a run whose best dev point is step 0 never moved off the frozen probe: whatever its test gap (float32 live
    # features against the float16 cache), fine-tuning did not beat anything there
    stayed = m["best_step_mean_a"] <= 0 if "best_step_mean_a" in m else pd.Series(False, index=m.index)
    m = m.assign(gap=m["gap"].where(~stayed, 0.0))
    wins, clear, won = _wins(m)
    stayed_note = (f" ({int(stayed.sum())} never improved on the start probe: best dev at step 0, counted as no gain)"
                   if stayed.any() else "")
    frozen = _best(agg[agg["mode"].isin(["last", "weighted_sum"])], [*keys, "budget"])
    best, best_note = _pairs(ft, frozen, keys, ("finetune", "best frozen"))
    best_won = _wins(best)[2]
    return Check(claim, _verdict(wins, len(m), clear),
                 f"above frozen last on test in {won} upstream/task/fraction cells{stayed_note}, {note}; test gain {_gaps(m)}; "
                 f"dev gain {_gaps(m, 'dev_gap')} (dev cannot fall below the start probe's by construction: "
                 f"fine-tuning starts from it and reports its best dev point, so only test says whether the gain "
                 f"generalises); against the best frozen mode (the better of last and weighted_sum on test): above it "
                 f"in {best_won}, {best_note}, test gain {_gaps(best)}" + _failing(m, m["gap"] > 0))


def check_aalbert_vs_mockingjay(agg: pd.DataFrame) -> Check:
    claim = ("AALBERT has fewer parameters than Mockingjay and scores within noise of it on test "
             "at the largest fraction, in every task and mode (last, weighted_sum, finetune)")
    a = agg[(agg["upstream"] == "aalbert") & (agg["mode"] != "layer")]
    b = agg[(agg["upstream"] == "mockingjay") & (agg["mode"] != "layer")]
    # "last" is a different layer index in models of different depth: pair on the mode, not the layer.
    m, note = _pairs(a, b, ["mode", *_SCENE], ("aalbert", "mockingjay"))
    m = m[m["fraction"] == m.groupby(["corpus", "task"])["fraction"].transform("max")] if len(m) else m
    if m.empty:
        return Check(claim, "not enough data", "needs aalbert and mockingjay rows of the same task, mode and fraction")
    pa, pb = float(m["params_a"].max()), float(m["params_b"].min())
    if not (np.isfinite(pa) and np.isfinite(pb)):
        return Check(claim, "not enough data", "the rows carry no parameter counts")
    if not pa < pb:
        return Check(claim, "does not hold", f"AALBERT does not have fewer parameters: {pa:,.0f} vs {pb:,.0f}")
    sizes = f"AALBERT {pa:,.0f} params vs Mockingjay {pb:,.0f} ({100 * (1 - pa / pb):.0f}% fewer)"
    judged = m[np.isfinite(m["ci"])]
    if judged.empty:
        return Check(claim, "not enough data", f"{sizes}; no task/mode cell has 95% CIs on both sides (>= 2 seeds)")
    within = int((~judged["clear"]).sum())
    return Check(claim, _verdict(within, len(judged)),
                 f"{sizes}; {within}/{len(judged)} task/mode gaps at the largest fraction within noise, "
                 f"{note} (gap = AALBERT better than Mockingjay by {_gaps(judged)})"
                 + _failing(judged, ~judged["clear"], mode=True, label="beyond noise (failing)")
                 + (f"; {len(m) - len(judged)} cell(s) without CIs not judged" if len(judged) < len(m) else ""))


def check_random_controls(agg: pd.DataFrame) -> Check:
    claim = "Random-init controls score below their pretrained counterparts on test in every mode/task/fraction cell"
    rnd = _controls(agg)
    m, note = _pairs(agg[_pretrained(agg)], rnd, ["upstream", "preset", "mode", "layer", *_SCENE],
                     ("pretrained", "random-init"))
    if m.empty:
        return Check(claim, "not enough data", "no pretrained upstream has random-init rows in the same cells")
    wins, clear, won = _wins(m)
    return Check(claim, _verdict(wins, len(m), clear),
                 f"pretrained above random-init in {won} upstream/mode/task/fraction cells, {note}; "
                 f"gap {_gaps(m)}" + _failing(m, m["gap"] > 0, mode=True))


def check_intermediate_layers(agg: pd.DataFrame) -> Check:
    """Among the Transformer layers 1..L (hidden state 0 is the input block, a projection of the features, so it
    is not an intermediate layer), is the dev-selected best one below the last and better than it on test?"""
    claim = ("An intermediate Transformer layer beats the last one (AALBERT paper): the layer of 1..L chosen on dev "
             "is not L and beats L on test")
    lay = agg[(agg["mode"] == "layer") & _pretrained(agg)]
    chosen, lasts = [], []
    input_best = 0
    for _, g in lay.groupby([*_SAME_MODEL, *_SCENE, "budget"], dropna=False):  # layers of one probe budget only
        if g["layer"].nunique() < 3:
            continue
        g = g.assign(_dev=_score(g, "dev_mean"))
        input_best += int(g.loc[g["_dev"].idxmax(), "layer"] == 0)
        g = g[g["layer"] > 0]
        lasts.append(g.loc[g["layer"].idxmax()])
        chosen.append(g.loc[g["_dev"].idxmax()])  # chosen on dev, judged on test
    if not chosen:
        return Check(claim, "not enough data", "needs mode=layer runs for >= 3 hidden states")
    # the chosen layer against the last, as any two cells are compared (gap in the metric's direction, noise)
    m = _join(pd.DataFrame(chosen), pd.DataFrame(lasts), [*_SAME_MODEL, *_SCENE, "budget"])
    ok = (m["layer_a"] != m["layer_b"]) & (m["gap"] > 0)
    wins, clear = int(ok.sum()), int((ok & m["clear"]).sum())
    best = m["layer_a"].map(lambda k: f"layer {int(k)}").value_counts()
    return Check(claim, _verdict(wins, len(m), clear),
                 f"among Transformer layers 1..L, the dev-selected best is an intermediate one and beats the last on "
                 f"test in {wins}/{len(m)} pretrained upstream/task/fraction cells ({clear} beyond noise; choices: "
                 f"{', '.join(f'{k} x{v}' for k, v in best.items())}; test gain of the chosen layer over the last "
                 f"{_gaps(m)}); the input block (hidden state 0) was the best hidden state of all in "
                 f"{input_best}/{len(m)}" + _failing(m, ok))


def check_weighted_sum_beats_control(agg: pd.DataFrame) -> Check:
    claim = ("The pretrained weighted sum beats its random-init control beyond noise on every task at every "
             "fraction")
    ws = agg[agg["mode"] == "weighted_sum"]
    rnd = _controls(ws)
    m, note = _pairs(ws[_pretrained(ws)], rnd.drop(columns=["layer"]), ["upstream", "preset", "mode", *_SCENE],
                     ("pretrained", "random-init"))
    if m.empty:
        return Check(claim, "not enough data", "needs weighted_sum rows of a pretrained upstream and its control")
    won = (m["gap"] > 0) & m["clear"]
    clear = int(won.sum())
    return Check(claim, _verdict(clear, len(m)),
                 f"beyond noise in {clear}/{len(m)} upstream/task/fraction cells ({int((m['gap'] > 0).sum())} above "
                 f"at all), {note}; gap {_gaps(m)}" + _failing(m, won))


def check_scarce_phones(agg: pd.DataFrame) -> Check:
    claim = ("At the smallest label fraction the pretrained weighted sum beats log-mel on the phone probes "
             "(the papers' headline; mel on the same frames)")
    phones = agg[agg["task"].str.contains("phone")]
    if phones.empty:
        return Check(claim, "not enough data", "no phone-probe rows")
    smallest = phones.groupby(["corpus", "task"])["fraction"].transform("min")
    scarce = phones[phones["fraction"] == smallest]
    pre = scarce[_pretrained(scarce) & (scarce["mode"] == "weighted_sum")]
    m, note, papers, papers_note = _against_mel(pre, scarce)
    if m.empty:
        return Check(claim, "not enough data", "needs mel (last) and pretrained weighted_sum phone rows at the "
                                              "smallest fraction, on the same frames")
    wins, clear, won = _wins(m)
    cells = lambda rows: "; ".join(f"{lab} {g:+.2f} points at fraction {f:g}" for lab, g, f in  # noqa: E731
                                   zip(rows["label"], rows["gap"], rows["fraction"]))
    detail = f"above mel in {won} upstream/task cells, each against the mel preset on its own frames, {note}: {cells(m)}"
    if len(papers):
        detail += (f". Against the papers' 10-ms mel:{MEL_BASELINE_PRESET} instead: above in {_wins(papers)[2]}, "
                   f"{papers_note}: {cells(papers)}")
    return Check(claim, _verdict(wins, len(m), clear), detail)


def check_yardstick(cost: pd.DataFrame | None) -> Check:
    claim = ("Pretrained checkpoints reconstruct masked frames better than a straight line between their unmasked "
             "neighbours (held-out masked L1 below the interpolation yardstick)")
    if cost is None or cost.empty:
        return Check(claim, "not enough data", "no cost.csv with the checkpoints' held-out losses")
    pre = cost[cost["upstream"].map(_takes_weights).astype(bool) & cost["val_l1"].notna()
               & cost["val_l1_interpolate"].notna()]
    if pre.empty:
        return Check(claim, "not enough data", "cost.csv has no pretrained checkpoint with a held-out loss")
    below = pre["val_l1"] < pre["val_l1_interpolate"]
    return Check(claim, _verdict(int(below.sum()), len(pre)),
                 f"below in {int(below.sum())}/{len(pre)} checkpoints: " + "; ".join(
                     f"{u}:{p} {v:.3f} vs {i:.3f}" for u, p, v, i in
                     zip(pre["upstream"], pre["preset"], pre["val_l1"], pre["val_l1_interpolate"])))


def science_checks(agg: pd.DataFrame, cost: pd.DataFrame | None = None) -> list[Check]:
    return [check_yardstick(cost), check_weighted_sum_beats_control(agg), check_scarce_phones(agg),
            check_scarce_labels(agg),
            check_mode_beats(agg, "weighted_sum", ("last",),
                             "Weighted sum of layers beats the last layer on test, per upstream/task/fraction cell"),
            check_finetune(agg), check_aalbert_vs_mockingjay(agg), check_random_controls(agg),
            check_intermediate_layers(agg)]


def checks_markdown(checks: list[Check]) -> str:
    return "".join(f"- **{c.claim}** — *{c.verdict}*: {c.detail}.\n" for c in checks)
