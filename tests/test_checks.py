"""Science checks on hand-made aggregated rows: for each claim, rows where it must hold and rows where it must not."""
from __future__ import annotations

import math

import pandas as pd

from benchmark.record.aggregate import AGG_COLUMNS
from benchmark.report.checks import (Check, check_aalbert_vs_mockingjay, check_finetune, check_intermediate_layers,
                                     check_mode_beats, check_random_controls, check_scarce_labels, checks_markdown,
                                     science_checks)

_PARAMS = {"mel": 0, "mockingjay": 4_000_000, "aalbert": 1_500_000, "mockingjay_random": 4_000_000,
           "aalbert_random": 1_500_000}
_LAST = {"mel": 0, "mockingjay": 3, "aalbert": 3, "mockingjay_random": 3, "aalbert_random": 3}


def row(upstream: str, test: float, *, mode: str = "last", fraction: float = 1.0, task: str = "phone_linear",
        dev: float | None = None, layer: int | None = None, budget: str = "converge", ci: float = 0.005,
        params: int | None = None, best_step: float = 100.0, period_ms: int = 10) -> dict:
    """One aggregated row (AGG_COLUMNS); accuracies in [0, 1], so 0.01 is one point; its labelled frames those of
    `period_ms` frames."""
    if layer is None:
        layer = -1 if mode == "weighted_sum" else _LAST[upstream]
    return dict(corpus="c", upstream=upstream, preset="default" if upstream == "mel" else "small",
                ckpt_hash=f"{upstream}-hash", task=task, mode=mode, layer=layer, fraction=fraction, budget=budget,
                metric="frame_acc", n_seeds=3, train_utts=round(2000 * fraction),
                train_frames=round(2000 * fraction) * 300 // period_ms, test_mean=test,
                test_std=ci, test_ci95=ci, dev_mean=test + 0.01 if dev is None else dev, dev_std=ci,
                test_utt_mean=math.nan, steps_mean=200.0, best_step_mean=best_step, n_converged=3 if budget == "converge" else 0,
                params=_PARAMS[upstream] if params is None else params,
                pretrain_frames=3_600_000 if upstream in ("mockingjay", "aalbert") else 0, pretrain_seconds=0.0)


def agg(*rows: dict) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=list(AGG_COLUMNS))


def scarce(mel: tuple[float, float], pre: tuple[float, float], up: str = "mockingjay") -> list[dict]:
    """mel and a pretrained upstream, frozen last layer, at fractions 0.01 and 1.0."""
    return [row("mel", mel[0], fraction=0.01), row("mel", mel[1]),
            row(up, pre[0], fraction=0.01), row(up, pre[1])]


# --- pretrained vs log-mel when labels are scarce ---

def test_scarce_holds_when_pretrained_is_above_mel_and_most_at_the_smallest_fraction():
    c = check_scarce_labels(agg(*scarce(mel=(0.40, 0.70), pre=(0.50, 0.75))))  # +10 at 0.01, +5 at 1.0
    assert c.verdict == "holds"
    assert "+10.00 points at fraction 0.01 vs +5.00 at 1" in c.detail and "above mel at fractions 0.01, 1" in c.detail


def test_scarce_narrower_loss_is_not_a_win():
    # the case: pretrained never beats mel; the gap merely narrows from -22 (full) to -14 (scarce)
    c = check_scarce_labels(agg(*scarce(mel=(0.62, 0.80), pre=(0.48, 0.58))))
    assert c.verdict == "does not hold"
    assert "-14.00 points at fraction 0.01 vs -22.00 at 1" in c.detail and "above mel at no fraction" in c.detail


def test_scarce_smaller_win_at_the_scarce_end_does_not_hold():
    c = check_scarce_labels(agg(*scarce(mel=(0.40, 0.70), pre=(0.42, 0.75))))  # +2 at 0.01, +5 at 1.0
    assert c.verdict == "does not hold" and "above mel at fractions 0.01, 1" in c.detail


def test_scarce_mixed_over_upstreams_and_needs_two_fractions():
    rows = scarce(mel=(0.40, 0.70), pre=(0.50, 0.75)) + scarce((0.40, 0.70), (0.38, 0.60), up="aalbert")[2:]
    assert check_scarce_labels(agg(*rows)).verdict == "mixed"
    one_fraction = [r for r in rows if r["fraction"] == 1.0]
    assert check_scarce_labels(agg(*one_fraction)).verdict == "not enough data"


def test_scarce_pairs_on_the_probe_budget():
    rows = scarce(mel=(0.40, 0.70), pre=(0.50, 0.75))
    fixed = [dict(r, budget="steps=200", test_mean=r["test_mean"] - 0.3) for r in rows[2:]]  # short probes lose
    c = check_scarce_labels(agg(*rows, *fixed))
    assert c.verdict == "holds" and "matched probe budgets (converge)" in c.detail
    assert "2 pretrained cell(s) with only mismatched budgets left out" in c.detail
    only_fixed = check_scarce_labels(agg(*rows[:2], *fixed))
    assert "NOT at a matched probe budget" in only_fixed.detail and "steps=200" in only_fixed.detail


# --- weighted sum vs last layer ---

def _ws(ws: float, last: float, ws_budget: str = "converge", last_budget: str = "converge") -> Check:
    return check_mode_beats(agg(row("mockingjay", ws, mode="weighted_sum", budget=ws_budget),
                                row("mockingjay", last, budget=last_budget)), "weighted_sum", ("last",), "ws")


def test_weighted_sum_holds_and_fails_with_the_rows():
    won = _ws(0.60, 0.55)
    assert won.verdict == "holds" and "1/1 (1 beyond noise)" in won.detail
    assert _ws(0.55, 0.60).verdict == "does not hold"
    close = _ws(0.552, 0.55)  # a win inside the CIs still counts as a win, but not as beyond them
    assert close.verdict == "holds, within noise" and "1/1 (0 beyond noise)" in close.detail


def test_weighted_sum_compares_at_the_same_budget_and_flags_mismatches():
    rows = [row("mockingjay", 0.60, mode="weighted_sum"), row("mockingjay", 0.55),
            row("mockingjay", 0.70, budget="steps=200")]  # a last layer at another budget is not the comparison
    assert check_mode_beats(agg(*rows), "weighted_sum", ("last",), "ws").verdict == "holds"
    c = _ws(0.60, 0.55, last_budget="steps=200")
    assert "NOT at a matched probe budget" in c.detail and "weighted_sum converge, last steps=200" in c.detail
    assert check_mode_beats(agg(row("mockingjay", 0.5)), "weighted_sum", ("last",), "ws").verdict == "not enough data"


# --- fine-tuning vs the frozen probe it starts from ---

def test_finetune_holds_on_test_and_reports_the_best_frozen_mode():
    c = check_finetune(agg(row("mockingjay", 0.60, mode="finetune", dev=0.66), row("mockingjay", 0.55, dev=0.60),
                           row("mockingjay", 0.65, mode="weighted_sum")))
    assert c.verdict == "holds" and c.claim.startswith("Fine-tuning beats the frozen last-layer probe")
    assert "test gain mean +5.00" in c.detail and "dev gain mean +6.00" in c.detail
    assert "dev cannot fall below" in c.detail and "above it in 0/1" in c.detail  # weighted_sum is better still


def test_finetune_dev_gain_without_test_gain_does_not_hold():
    c = check_finetune(agg(row("mockingjay", 0.53, mode="finetune", dev=0.70), row("mockingjay", 0.55, dev=0.60)))
    assert c.verdict == "does not hold" and "dev gain mean +10.00" in c.detail


def test_finetune_budget_pairing_and_missing_data():
    c = check_finetune(agg(row("mockingjay", 0.60, mode="finetune", budget="steps=400"), row("mockingjay", 0.55)))
    assert c.verdict == "holds" and "NOT at a matched probe budget" in c.detail
    assert check_finetune(agg(row("mockingjay", 0.55))).verdict == "not enough data"


# --- AALBERT vs Mockingjay ---

def _aalbert(gap_full: float, gap_small: float = -0.10, **kw) -> Check:
    return check_aalbert_vs_mockingjay(agg(
        row("mockingjay", 0.60), row("mockingjay", 0.40, fraction=0.1),
        row("aalbert", 0.60 + gap_full, layer=2, **kw), row("aalbert", 0.40 + gap_small, fraction=0.1, layer=2, **kw)))


def test_aalbert_close_at_the_largest_fraction_holds():
    c = _aalbert(-0.003)  # -0.3 points, combined CI 0.71; the -10 at fraction 0.1 is not the claim
    assert c.verdict == "holds" and "62% fewer" in c.detail and "1/1 task/mode gaps" in c.detail


def test_aalbert_far_or_not_smaller_does_not_hold():
    assert _aalbert(-0.05).verdict == "does not hold"
    bigger = _aalbert(-0.003, params=5_000_000)
    assert bigger.verdict == "does not hold" and "does not have fewer parameters" in bigger.detail


def test_aalbert_needs_cis_and_both_models():
    assert _aalbert(-0.003, ci=math.nan).verdict == "not enough data"
    assert check_aalbert_vs_mockingjay(agg(row("aalbert", 0.6))).verdict == "not enough data"


# --- random-init controls ---

def _random(gaps: list[float]) -> Check:
    rows = []
    for i, gap in enumerate(gaps):
        f = (0.1, 1.0, 0.5)[i]
        rows += [row("mockingjay", 0.6, fraction=f), row("mockingjay_random", 0.6 - gap, fraction=f)]
    return check_random_controls(agg(*rows))


def test_random_controls_hold_only_in_every_cell():
    c = _random([0.10, 0.002])
    assert c.verdict == "holds, within noise" and "2/2 (1 beyond noise)" in c.detail  # the +0.2 is inside the CIs
    assert _random([0.10, 0.05]).verdict == "holds"
    mixed = _random([0.10, -0.02])
    assert mixed.verdict == "mixed" and mixed.detail.endswith("failing: mockingjay:small/phone_linear last at 1 (-2.00, CI 0.71)")
    assert _random([-0.10, -0.02]).verdict == "does not hold"
    assert check_random_controls(agg(row("mockingjay", 0.6))).verdict == "not enough data"


# --- intermediate layers ---

def _layers(scores: list[float]) -> Check:
    return check_intermediate_layers(agg(*[row("aalbert", s, mode="layer", layer=k) for k, s in enumerate(scores)]))


def test_intermediate_layer_holds_when_the_middle_wins_on_dev_and_test():
    assert _layers([0.50, 0.60, 0.70, 0.62]).verdict == "holds"
    assert _layers([0.50, 0.55, 0.60, 0.70]).verdict == "does not hold"  # the last layer is best


def test_input_block_is_not_an_intermediate_layer():
    c = _layers([0.90, 0.80, 0.70, 0.60])  # hidden state 0 best of all; among 1..3 layer 1 still beats 3
    assert c.verdict == "holds" and "layer 1 x1" in c.detail and "best hidden state of all in 1/1" in c.detail
    assert _layers([0.90, 0.30, 0.30, 0.30]).verdict == "does not hold"  # only the input block is good
    assert _layers([0.50, 0.60]).verdict == "not enough data"


# --- the whole list ---

def test_not_enough_data_everywhere_without_comparable_rows():
    for table in (agg(), agg(row("mel", 0.5), row("mel", 0.4, fraction=0.1))):
        checks = science_checks(table)
        assert len(checks) == 9 and all(c.verdict == "not enough data" for c in checks)


def test_markdown_lists_every_check():
    checks = science_checks(agg(*scarce(mel=(0.62, 0.80), pre=(0.48, 0.58))))
    md = checks_markdown(checks)
    lines = md.splitlines()
    assert md.count("\n- **") == 8 and len(lines) == 9
    assert "— *does not hold*: " in next(ln for ln in lines if "most when labels are scarce" in ln)


def test_finetune_that_never_left_its_start_is_no_gain():
    from benchmark.report.checks import check_finetune

    agg = pd.DataFrame([row("mockingjay", 0.6002, mode="finetune", best_step=0.0), row("mockingjay", 0.6000)])
    c = check_finetune(agg)
    assert c.verdict == "does not hold" and "never improved on the start probe" in c.detail
    moved = pd.DataFrame([row("mockingjay", 0.62, mode="finetune", best_step=40.0), row("mockingjay", 0.60)])
    assert check_finetune(moved).verdict == "holds"


# --- the papers' shape (reference checkpoints): weighted sum vs control, scarce phones vs mel, yardstick ---

def test_weighted_sum_beats_control_needs_every_cell_beyond_the_cis():
    from benchmark.report.checks import check_weighted_sum_beats_control

    rows = [row("mockingjay", 0.60, mode="weighted_sum"), row("mockingjay_random", 0.55, mode="weighted_sum"),
            row("mockingjay", 0.30, mode="weighted_sum", task="speaker_utterance"),
            row("mockingjay_random", 0.20, mode="weighted_sum", task="speaker_utterance")]
    assert check_weighted_sum_beats_control(agg(*rows)).verdict == "holds"
    rows[1] = row("mockingjay_random", 0.598, mode="weighted_sum")  # above, but within the CIs: not a clear win
    c = check_weighted_sum_beats_control(agg(*rows))
    assert c.verdict == "mixed" and "beyond noise in 1/2" in c.detail and "2 above at all" in c.detail


def test_identical_seeds_and_a_five_utterance_gap_are_within_noise():
    """Two upstreams whose every seed scores the same (zero-width CIs) and 5 of 120 test utterances apart: the
    interval holds none of the test set's noise, so the gap is never called beyond it."""
    from benchmark.report.checks import check_weighted_sum_beats_control

    rows = [row("mockingjay", 65 / 120, mode="weighted_sum", task="speaker_utterance", ci=0.0),
            row("mockingjay_random", 60 / 120, mode="weighted_sum", task="speaker_utterance", ci=0.0)]
    c = check_weighted_sum_beats_control(agg(*rows))
    assert c.verdict == "does not hold" and "beyond noise in 0/1" in c.detail and "1 above at all" in c.detail
    rows = [r | {"test_ci95": 0.01} for r in rows]  # the same gap with seed spread around it: beyond it
    assert check_weighted_sum_beats_control(agg(*rows)).verdict == "holds"


def test_scarce_phones_compares_the_smallest_fraction_only():
    from benchmark.report.checks import check_scarce_phones

    rows = [row("mel", 0.44, fraction=0.01), row("mel", 0.62),
            row("aalbert", 0.46, mode="weighted_sum", fraction=0.01), row("aalbert", 0.60, mode="weighted_sum")]
    c = check_scarce_phones(agg(*rows))
    assert c.verdict == "holds" and "+2.00 points at fraction 0.01" in c.detail
    rows[2] = row("aalbert", 0.40, mode="weighted_sum", fraction=0.01)
    assert check_scarce_phones(agg(*rows)).verdict == "does not hold"


def test_mel_baseline_is_the_10ms_preset_when_there_are_several():
    from benchmark.report.checks import check_scarce_phones

    stacked = lambda test, fraction: {**row("mel", test, fraction=fraction), "preset": "stack3"}  # noqa: E731
    rows = [row("mel", 0.44, fraction=0.01), row("mel", 0.62), stacked(0.50, 0.01), stacked(0.70, 1.0),
            row("aalbert", 0.46, mode="weighted_sum", fraction=0.01), row("aalbert", 0.60, mode="weighted_sum")]
    c = check_scarce_phones(agg(*rows))  # against mel:default only (one pair, not two), though stack3 is higher
    assert c.verdict == "holds" and c.detail.count("points at fraction") == 1 and "+2.00 points" in c.detail
    assert check_scarce_phones(agg(*rows[2:])).verdict == "does not hold"  # stack3 alone is the baseline then
    ambiguous = [{**r, "preset": "delta"} for r in rows[:2]] + rows[2:]
    assert check_scarce_phones(agg(*ambiguous)).verdict == "not enough data"  # delta and stack3: no baseline


def test_yardstick_check_reads_the_cost_table():
    from benchmark.report.checks import check_yardstick

    cost = pd.DataFrame({"upstream": ["mel", "mockingjay", "aalbert"], "preset": ["default", "small", "small"],
                         "val_l1": [math.nan, 0.50, 0.60], "val_l1_interpolate": [math.nan, 0.52, 0.52]})
    c = check_yardstick(cost)
    assert c.verdict == "mixed" and "below in 1/2" in c.detail and "aalbert:small 0.600 vs 0.520" in c.detail
    assert check_yardstick(cost.iloc[:2]).verdict == "holds"
    assert check_yardstick(None).verdict == "not enough data"


def test_mel_is_matched_on_frames_and_the_papers_baseline_is_stated_beside():
    """A 30-ms Transformer meets mel:stack3 (the same labelled frames), a 10-ms one mel:default; the detail states
    both pairings and, for the 30-ms model, the papers' comparison with 10-ms mel as well."""
    from benchmark.report.checks import check_scarce_phones

    stack3 = lambda test, fraction: {**row("mel", test, fraction=fraction, period_ms=30), "preset": "stack3"}  # noqa: E731
    rows = [row("mel", 0.44, fraction=0.01), row("mel", 0.62), stack3(0.38, 0.01), stack3(0.66, 1.0),
            row("aalbert", 0.40, mode="weighted_sum", fraction=0.01, period_ms=30),
            row("aalbert", 0.68, mode="weighted_sum", period_ms=30),
            row("mockingjay", 0.47, mode="weighted_sum", fraction=0.01),
            row("mockingjay", 0.63, mode="weighted_sum")]
    c = check_scarce_phones(agg(*rows))
    assert c.verdict == "holds" and "above mel in 2/2" in c.detail
    assert "aalbert:small/phone_linear vs mel:stack3 (30 ms) +2.00 points" in c.detail
    assert "mockingjay:small/phone_linear vs mel:default (10 ms) +3.00 points" in c.detail
    assert "Against the papers' 10-ms mel:default instead: above in 0/1" in c.detail
    assert "aalbert:small/phone_linear vs mel:default -4.00 points" in c.detail
    # no mel on a 30-ms model's frames: it is not compared with a mel on other frames
    alone = check_scarce_phones(agg(*[r for r in rows if r["preset"] != "stack3" and r["upstream"] != "mockingjay"]))
    assert alone.verdict == "not enough data" and "on the same frames" in alone.detail


def test_a_mixed_verdict_names_the_failing_cells_and_holds_on_means_says_so():
    from benchmark.report.checks import check_weighted_sum_beats_control

    rows = [row("mockingjay", 0.60, mode="weighted_sum"), row("mockingjay_random", 0.55, mode="weighted_sum"),
            row("mockingjay", 0.30, mode="weighted_sum", fraction=0.1),
            row("mockingjay_random", 0.298, mode="weighted_sum", fraction=0.1)]
    c = check_weighted_sum_beats_control(agg(*rows))
    assert c.verdict == "mixed" and c.detail.endswith("failing: mockingjay:small/phone_linear at 0.1 (+0.20, CI 0.71)")
    layers = _layers([0.50, 0.60, 0.603, 0.60])  # the dev-chosen layer 2 beats the last by 0.3 points: noise
    assert layers.verdict == "holds, within noise" and "(0 beyond noise;" in layers.detail
