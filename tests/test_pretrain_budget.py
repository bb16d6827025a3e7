"""analysis.pretrain_budget: snapshots along one schedule are reused, finished runs are taken one per budget, and both
are tabulated against mel and plotted against pretraining frames."""
import pandas as pd

import pytest

from analysis.pretrain_budget import budget_checkpoints, budget_table, plot_budget, snapshot_checkpoints
from benchmark.record.aggregate import validate_runs
from corpora.manifest import load_corpus
from tests.fixtures import make_pretrain_corpus
from tests.report_synthetic import synthetic_runs
from upstream.checkpoint import checkpoint_hash, read_meta


def test_snapshots_table_and_plot(tmp_path):
    corpus = load_corpus(make_pretrain_corpus(tmp_path / "c", n_utts=12, seconds=(1.6, 2.2)))  # >= 50 stacked steps
    runs = tmp_path / "runs"
    snaps = snapshot_checkpoints("aalbert:small", corpus, runs, steps=3, snapshots=[2], device="cpu")
    assert sorted(snaps) == [2, 3] and read_meta(snaps[2])["step"] == 2 and not read_meta(snaps[2])["complete"]
    assert read_meta(snaps[3])["complete"] and checkpoint_hash(snaps[2]) != checkpoint_hash(snaps[3])
    mtime = (snaps[2] / "checkpoint.json").stat().st_mtime_ns
    assert snapshot_checkpoints("aalbert:small", corpus, runs, steps=3, snapshots=[2], device="cpu") == snaps
    assert (snaps[2] / "checkpoint.json").stat().st_mtime_ns == mtime  # reused, not retrained

    base = validate_runs(synthetic_runs(upstreams=("mel", "aalbert"), tasks=("phone_linear",), fractions=(0.5, 1.0),
                                        seeds=(0, 1, 2)))
    base = base[base["mode"] == "last"]
    rows = []
    for up, h, acc in (("mel", "m" * 16, 0.6), ("aalbert", checkpoint_hash(snaps[2])[:16], 0.4),
                       ("aalbert", checkpoint_hash(snaps[3])[:16], 0.5), ("aalbert", "other", 0.9)):
        r = base[base["upstream"] == up].assign(ckpt_hash=h)
        r["test_metric"] = acc + 0.01 * r["seed"]
        rows.append(r.where(r["fraction"] == 1.0, r.assign(test_metric=0.1)))  # other fractions are left out
    table = budget_table(pd.concat(rows), snaps)
    assert list(table["pretrain_step"].fillna(-1)) == [-1, 2, 3]  # mel first, then the snapshots; unknown ckpt dropped
    assert table["test_mean"].round(3).tolist() == [0.61, 0.41, 0.51] and (table["n_seeds"] == 3).all()
    assert table["val_l1_interpolate"].iloc[1] == read_meta(snaps[2])["val_baselines"]["interpolate"]
    assert table["pretrain_frames"].iloc[2] == read_meta(snaps[3])["pretrain_frames"] > 0
    both = budget_table(pd.concat(rows), snaps, fractions=(0.5, 1.0))  # the smallest and largest fraction
    assert list(zip(both["fraction"], both["pretrain_step"].fillna(-1))) == [(0.5, -1), (0.5, 2), (0.5, 3),
                                                                             (1.0, -1), (1.0, 2), (1.0, 3)]
    assert both["test_mean"].round(3).tolist()[:3] == [0.1, 0.1, 0.1]
    out = plot_budget(both, "aalbert:small", tmp_path / "budget.png")
    assert out.stat().st_size > 10_000
    # stacked checkpoints are also read against mel on their own frames (mel:stack3), a reference line of its own
    stack = rows[0].assign(preset="stack3", ckpt_hash="s" * 16, test_metric=0.7)
    matched = budget_table(pd.concat([*rows, stack]), snaps, ("mel", "mel:stack3"))
    refs = matched[matched["pretrain_step"].isna()]
    assert list(zip(refs["preset"], refs["test_mean"].round(3))) == [("default", 0.61), ("stack3", 0.7)]
    assert plot_budget(matched, "aalbert:small", tmp_path / "matched.png").stat().st_size > 10_000

    # finished runs, one per budget: the complete one is taken, a stopped one is refused with how to finish it
    assert budget_checkpoints(str(snaps[3]), "aalbert") == {3: snaps[3]}
    with pytest.raises(ValueError, match=r"step-2: pretraining stopped at step 2 of 3; finish it .* --resume"):
        budget_checkpoints(f"{snaps[3]},{snaps[2]}", "aalbert")
    with pytest.raises(ValueError, match="holds aalbert, expected mockingjay"):
        budget_checkpoints(str(snaps[3]), "mockingjay")


def test_bad_arguments_stop_before_any_training(capsys):
    from analysis.pretrain_budget import main

    for argv, expect in ((["--snapshots", "3000", "--steps", "2000"], "must lie in 1..--steps"),
                         (["--snapshots", "a,b"], "comma list of steps"), (["--upstream", "mel"], "not a pretrainable"),
                         (["--tasks", "asr"], "valid: phone_linear"), (["--upstream", "wav2vec"], "valid: mel"),
                         (["--fractions", "0,1"], "outside (0, 1]"),
                         (["--checkpoints", "no/such/dir"], "no/such/dir: not a directory")):
        assert main(argv) == 2 and expect in capsys.readouterr().err, argv
