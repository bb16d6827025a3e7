"""Cost table: parameter counts, throughput from checkpoint meta, a measured real-time factor, atomic CSV."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from benchmark.report.cost import COST_COLUMNS, cost_markdown, measure_costs, read_costs
from upstream.checkpoint import save_checkpoint
from upstream.features import FeatureConfig
from upstream.interface import TransformerUpstream
from upstream.transformer import EncoderConfig, count_parameters


def _ckpt(tmp_path, extra_meta):
    feat, enc = FeatureConfig(norm="utterance"), EncoderConfig(hidden_size=32, num_heads=2, intermediate_size=64,
                                                               num_layers=2, share_layers=True)
    torch.manual_seed(0)
    model = TransformerUpstream(feat, enc)
    path = save_checkpoint(tmp_path / "al", {"model": {"encoder." + k: v for k, v in model.encoder.state_dict().items()}},
                           {"upstream": "aalbert", "encoder": enc.to_dict(), "feature": feat.to_dict(), **extra_meta})
    return path, count_parameters(model)


def test_measure_costs(tmp_path):
    ckpt, n_params = _ckpt(tmp_path, {"pretrain_frames": 120_000, "pretrain_seconds": 60.0, "val_loss": 0.61234,
                                      "val_baselines": {"mean": 0.81, "interpolate": 0.52}})
    out = tmp_path / "cost.csv"
    df = measure_costs([("mel", None), ("aalbert", ckpt)], out, device="cpu", seconds=0.5, n_utts=2)
    table = read_costs(out)
    assert list(table.columns) == list(COST_COLUMNS) and len(table) == 2
    mel, al = table.iloc[0], table.iloc[1]
    assert mel["params"] == 0 and mel["pretrain_frames"] == 0 and math.isnan(mel["pretrain_frames_per_s"])
    assert al["params"] == n_params and al["pretrain_frames_per_s"] == pytest.approx(2000.0)
    assert (table["infer_rtf"] > 0).all() and (table["infer_audio_seconds"] == 1.0).all()
    assert math.isnan(mel["val_l1"]) and (al["val_l1"], al["val_l1_interpolate"]) == (0.61234, 0.52)
    md = cost_markdown(df)
    assert "2,000" in md and "0.612 (0.810 / 0.520)" in md and not list(tmp_path.glob("*.tmp"))


def test_random_control_costs_the_architecture_of_the_checkpoint_it_controls_for(tmp_path):
    ckpt, n_params = _ckpt(tmp_path, {})
    df = measure_costs([("aalbert", ckpt), ("aalbert_random", None)], tmp_path / "cost.csv", device="cpu",
                       seconds=0.3, n_utts=1)
    assert df.iloc[1]["params"] == n_params  # the tiny 2 x 32 encoder of the checkpoint, not the small preset's
    alone = measure_costs([("aalbert_random", None)], tmp_path / "alone.csv", device="cpu", seconds=0.3, n_utts=1)
    from upstream.reference import SHIPPED_CHECKPOINTS
    from upstream.registry import load_upstream

    reference = count_parameters(load_upstream(SHIPPED_CHECKPOINTS["aalbert:small"].path))
    assert alone.iloc[0]["params"] == reference != n_params  # without one: the shipped reference's architecture


def test_checkpoint_without_throughput_meta_reports_unknown(tmp_path):
    ckpt, _ = _ckpt(tmp_path, {})
    df = measure_costs([("aalbert", ckpt)], tmp_path / "cost.csv", device="cpu", seconds=0.3, n_utts=1)
    assert math.isnan(df.iloc[0]["pretrain_frames"]) and math.isnan(df.iloc[0]["pretrain_frames_per_s"])
    assert math.isnan(df.iloc[0]["val_l1"]) and math.isnan(df.iloc[0]["val_l1_interpolate"])


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="no upstreams"):
        measure_costs([], tmp_path / "cost.csv")
    with pytest.raises(ValueError, match="unknown upstream"):
        measure_costs([("wav2vec", None)], tmp_path / "cost.csv")
    pd.DataFrame({"upstream": ["x"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"bad\.csv.*missing columns"):
        read_costs(tmp_path / "bad.csv")
