"""Report builder on small synthetic result rows: validation, aggregation, ranking, checks and files written."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.record.aggregate import AGG_COLUMNS, aggregate_runs, read_runs, validate_runs
from benchmark.record.schema import RUN_COLUMNS
from benchmark.report.build import build_report, main
from benchmark.report.checks import science_checks
from benchmark.report.plots import mean_layer_weights
from benchmark.report.tables import LEADERBOARD_COLUMNS, leaderboard
from tests.report_synthetic import synthetic_runs

SMALL = dict(upstreams=("mel", "mockingjay", "aalbert", "mockingjay_random"), tasks=("phone_linear", "speaker_utterance"),
             fractions=(0.1, 1.0), seeds=(0, 1))


def _write(tmp_path: Path, df: pd.DataFrame) -> Path:
    df.to_csv(tmp_path / "runs.csv", index=False)
    return tmp_path


def test_aggregate_mean_std_ci_over_seeds():
    df = validate_runs(synthetic_runs(upstreams=("mel",), tasks=("phone_linear",), fractions=(1.0,), seeds=(0, 1, 2)))
    df["test_metric"] = [0.5, 0.6, 0.7]
    agg = aggregate_runs(df)
    assert list(agg.columns) == list(AGG_COLUMNS) and len(agg) == 1
    r = agg.iloc[0]
    assert r["n_seeds"] == 3 and r["test_mean"] == pytest.approx(0.6) and r["test_std"] == pytest.approx(0.1)
    assert r["test_ci95"] == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)  # t(0.975, 2 dof)


def test_aggregate_one_seed_has_no_ci_and_duplicates_count_once():
    df = validate_runs(synthetic_runs(upstreams=("mel",), tasks=("phone_linear",), fractions=(1.0,), seeds=(0,)))
    agg = aggregate_runs(pd.concat([df, df]))  # the same run recorded twice
    assert agg.iloc[0]["n_seeds"] == 1 and math.isnan(agg.iloc[0]["test_ci95"])


def test_other_checkpoints_and_probe_budgets_are_kept_apart():
    df = validate_runs(synthetic_runs(upstreams=("mockingjay",), tasks=("phone_linear",), fractions=(1.0,), seeds=(0, 1)))
    df = df[df["mode"] == "last"]
    snap = df.assign(ckpt_hash="0123456789abcdef", test_metric=0.9)  # another checkpoint of the same upstream
    longer = df.assign(budget="steps=800", test_metric=0.1)  # the same checkpoint, a fixed-budget probe
    agg = aggregate_runs(pd.concat([df, snap, longer]))
    assert len(agg) == 3 and (agg["n_seeds"] == 2).all()  # nothing merged, nothing dropped as a "duplicate"
    assert sorted(agg["test_mean"].round(6)) == sorted([round(df["test_metric"].mean(), 6), 0.9, 0.1])


def test_aggregate_groups_by_leaderboard_keys():
    df = validate_runs(synthetic_runs(**SMALL))
    agg = aggregate_runs(df)
    assert len(agg) == len(df.drop_duplicates(["upstream", "task", "mode", "layer", "fraction"]))
    assert (agg["n_seeds"] == 2).all()


def test_read_runs_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="runs.csv"):
        read_runs(tmp_path / "runs.csv")
    df = synthetic_runs(**SMALL)
    df.drop(columns=["seed"]).to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(ValueError, match=r"a\.csv.*missing \['seed'\]"):
        read_runs(tmp_path / "a.csv")
    df.assign(test_metric="oops").to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(ValueError, match=r"b\.csv.*'test_metric'"):
        read_runs(tmp_path / "b.csv")
    df.head(0).to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(ValueError, match="no result rows"):
        read_runs(tmp_path / "c.csv")


def test_leaderboard_is_ranked_and_picks_best_layer_on_dev():
    df = validate_runs(synthetic_runs(**SMALL))
    sel = (df["upstream"] == "mockingjay") & (df["mode"] == "layer")
    df.loc[sel & (df["layer"] == 1), ["dev_metric", "test_metric"]] = [0.99, 0.10]  # best on dev, bad on test
    df.loc[sel & (df["layer"] == 2), ["dev_metric", "test_metric"]] = [0.20, 0.98]  # best on test only
    lb = leaderboard(aggregate_runs(df), "phone_linear")
    assert list(lb.columns) == list(LEADERBOARD_COLUMNS)
    assert list(lb["rank"]) == list(range(1, len(lb) + 1))
    assert (np.diff(lb["test_mean"].to_numpy()) <= 0).all()
    assert (lb["fraction"] == 1.0).all()
    mj_layer = lb[(lb["upstream"] == "mockingjay") & (lb["mode"] == "layer")]
    assert list(mj_layer["layer"]) == [1]
    assert set(lb[lb["upstream"] == "mockingjay"]["mode"]) == {"last", "weighted_sum", "finetune", "layer"}


def test_mean_layer_weights_parse_and_reject_garbage():
    df = validate_runs(synthetic_runs(**SMALL))
    w = mean_layer_weights(df)
    sums = w.groupby(["upstream", "task"])["weight_mean"].sum()
    assert np.allclose(sums, 1.0, atol=1e-3) and set(w["hidden_state"]) == {0, 1, 2, 3}
    df.loc[df["mode"] == "weighted_sum", "layer_weights"] = "0.5;x"
    with pytest.raises(ValueError, match="layer_weights"):
        mean_layer_weights(df)


def test_science_checks_follow_the_rows():
    df = validate_runs(synthetic_runs(**SMALL))
    verdicts = {c.claim: c.verdict for c in science_checks(aggregate_runs(df))}
    ws = next(k for k in verdicts if k.startswith("Weighted sum"))
    assert verdicts[ws].startswith("holds")  # in every cell on the means ("holds, within noise": not beyond it)
    flipped = df.copy()
    last = flipped["mode"] == "last"
    flipped.loc[last, "test_metric"] += 0.5  # make the last layer win everywhere
    verdicts = {c.claim: c.verdict for c in science_checks(aggregate_runs(flipped))}
    assert verdicts[ws] == "does not hold"
    only_mel = aggregate_runs(df[df["upstream"] == "mel"])
    assert all(c.verdict == "not enough data" for c in science_checks(only_mel))


def test_input_block_is_not_an_intermediate_layer():
    from benchmark.report.checks import check_intermediate_layers

    df = validate_runs(synthetic_runs(**SMALL))
    lay = df["mode"] == "layer"
    assert check_intermediate_layers(aggregate_runs(df)).verdict.startswith("holds")  # the rows peak in the middle
    falling = df.copy()  # every Transformer layer loses information: hidden state 0 best, then 1, 2, ...
    for col in ("dev_metric", "test_metric"):
        falling.loc[lay, col] = 0.9 - 0.1 * falling.loc[lay, "layer"]
    c = check_intermediate_layers(aggregate_runs(falling))
    assert "layer 1" in c.detail and "hidden state 0) was the best hidden state of all in 4/4" in c.detail
    flat0 = falling.copy()  # only the input block is good; the Transformer layers are equal: nothing to claim
    flat0.loc[lay & (flat0["layer"] > 0), ["dev_metric", "test_metric"]] = 0.3
    assert check_intermediate_layers(aggregate_runs(flat0)).verdict == "does not hold"


def test_build_report_writes_everything(tmp_path):
    results = _write(tmp_path, synthetic_runs(**SMALL))
    (results / "command.txt").write_text("python run_benchmark.py --seeds 0 1\n")
    out = build_report(results)
    assert out == results / "REPORT.md"
    text = out.read_text()
    for section in ("## Data-size ablation", "## Leaderboards", "## Layer analysis", "## Attention", "## Cost",
                    "## Science checks", "python run_benchmark.py --seeds 0 1", "plots/ablation.png"):
        assert section in text
    for png in ("ablation", "layer_weights", "layer_probe"):
        assert (results / "plots" / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for task in SMALL["tasks"]:
        assert (results / "tables" / f"{task}.md").read_text().startswith("| rank |")
        tab = pd.read_csv(results / "tables" / f"{task}.csv")
        assert list(tab.columns) == list(LEADERBOARD_COLUMNS) and len(tab) > 0
    assert not list(results.rglob("*.tmp"))  # atomic writes leave no temp files behind


def test_a_forced_rerun_supersedes_its_row_everywhere_in_the_report(tmp_path):
    """A --force re-run appends its rows: the report counts, averages and plots the later row only."""
    df = synthetic_runs(**SMALL)
    ws = (df["mode"] == "weighted_sum") & (df["upstream"] == "mockingjay") & (df["task"] == "phone_linear")
    rerun = df[ws].assign(layer_weights="0.7;0.1;0.1;0.1", test_metric=0.123)
    results = _write(tmp_path, pd.concat([df, rerun]))
    text = build_report(results).read_text()
    assert f"{len(df)}/{len(df)} runs trained until dev stopped improving" in text
    weights = pd.read_csv(results / "tables" / "layer_weights.csv")
    mj = weights[(weights["upstream"] == "mockingjay") & (weights["task"] == "phone_linear")]
    assert mj["weight_mean"].round(6).tolist() == [0.7, 0.1, 0.1, 0.1] and (mj["weight_std"] == 0).all()
    table = pd.read_csv(results / "tables" / "phone_linear.csv")
    assert set(table.loc[(table["upstream"] == "mockingjay") & (table["mode"] == "weighted_sum"), "test_mean"]
               .round(3)) == {0.123}


def test_build_report_drops_stale_plots_and_includes_cost_and_attention(tmp_path):
    df = synthetic_runs(**SMALL)
    results = _write(tmp_path, df)
    build_report(results)
    _write(tmp_path, df[df["mode"].isin(["last"])])  # no layer / weighted-sum rows any more
    pd.DataFrame([{"upstream": "mel", "preset": "default", "ckpt_hash": "ab", "params": 0, "pretrain_frames": 0,
                   "pretrain_seconds": 0, "pretrain_frames_per_s": float("nan"), "infer_rtf": 0.0123,
                   "infer_audio_seconds": 15, "device": "cpu x2", "date": "2026-01-01"}]).to_csv(results / "cost.csv",
                                                                                            index=False)
    (results / "attention").mkdir()
    (results / "attention" / "attention_stats.md").write_text("| model | layer |\n|---|---|\n| mj | 1 |\n")
    text = build_report(results).read_text()
    assert not (results / "plots" / "layer_probe.png").exists()
    assert not (results / "plots" / "layer_weights.png").exists()
    assert "0.0123" in text and "| mj | 1 |" in text


def test_build_report_includes_the_studies_beside_the_rows(tmp_path):
    results = _write(tmp_path, synthetic_runs(**SMALL))
    assert "## Studies behind the rows" not in build_report(results).read_text()  # none there: no empty section
    (results / "recipe_study").mkdir()
    (results / "recipe_study" / "recipes.md").write_text("| upstream | recipe |\n|---|---|\n| mj | s3prl |\n")
    heads = results / "attention" / "heads"
    heads.mkdir(parents=True)
    (heads / "head_mix.md").write_text("# Attention head types\n\n## Removing heads\n\nglobal heads removed: -3.2 points\n")
    (heads / "command.txt").write_text("python -m analysis.attention_heads --ablate mj\n# 12 s\n")
    text = build_report(results).read_text()
    assert "## Studies behind the rows" in text and "| mj | s3prl |" in text and "-3.2 points" in text
    assert "`python -m analysis.attention_heads --ablate mj`" in text and "`# 12 s`" not in text
    assert "\n### Attention head types" in text and "\n#### Removing heads" in text  # nested under the section
    assert "recipes.png" not in text  # a figure that is not there is not linked
    (results / "budget_curve_aalbert").mkdir()
    (results / "budget_curve_aalbert" / "budget.md").write_text("| task | pretraining frames |\n|---|---|\n| phone | 9 |\n")
    (results / "budget_curve_aalbert" / "pretrain_budget.png").write_bytes(b"png")
    text = build_report(results).read_text()
    assert "### Pretraining budget: AALBERT" in text and "| phone | 9 |" in text
    assert "(budget_curve_aalbert/pretrain_budget.png)" in text and "Pretraining budget: Mockingjay" not in text


def test_cli_reports_bad_input(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "runs.csv" in capsys.readouterr().err
    _write(tmp_path, synthetic_runs(**SMALL)[list(RUN_COLUMNS)[::-1]])
    assert main([str(tmp_path)]) == 2
    assert "order differs" in capsys.readouterr().err


def test_several_corpora_stay_apart(tmp_path):
    a, b = synthetic_runs(**SMALL), synthetic_runs(**SMALL, seed=1).assign(corpus="other")
    build_report(_write(tmp_path, pd.concat([a, b])))
    names = sorted(p.name for p in (tmp_path / "tables").glob("*.csv") if p.name != "layer_weights.csv")
    assert names == sorted(f"{c}-{t}.csv" for c in ("synthetic", "other") for t in SMALL["tasks"])
