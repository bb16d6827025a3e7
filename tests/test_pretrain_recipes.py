"""Named pretraining recipes: stacked and Pre-LN recipes train and record what they are; study stopping rules."""
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from analysis.recipe_study import speedups, train_recipe
from pretrain import run_pretraining
from pretrain.config import RECIPES, with_overrides
from tests.fixtures import make_pretrain_corpus
from upstream.checkpoint import read_meta
from upstream.registry import load_upstream
from upstream.transformer import EncoderConfig

TINY = EncoderConfig(hidden_size=32, num_heads=2, intermediate_size=64, num_layers=2)


def tiny(recipe: str, **kw):
    return with_overrides(RECIPES[recipe], steps=6, batch_size=4, crop_frames=40, eval_interval=3, ckpt_interval=3,
                          log_interval=1, val_fraction=0.2, min_frames=10, precision="float32", **kw)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_pretrain_corpus(tmp_path_factory.mktemp("corpus"), n_utts=10, seconds=(1.4, 2.0))


def test_stacked_pre_ln_recipe_records_its_shape_and_counts_10ms_frames(corpus, tmp_path):
    cfg = tiny("preln_stack3")
    out = run_pretraining("aalbert:small", corpus, tmp_path / "ckpt", cfg, device="cpu", encoder=TINY)
    meta = read_meta(out)
    assert meta["pretrain_config"]["recipe"] == "preln_stack3+batch_size,crop_frames,min_frames,val_fraction"
    assert meta["feature"]["downsample"] == 3 and meta["encoder"]["pre_layer_norm"] is True
    assert meta["encoder"]["input_dim"] == 240 and meta["pretrain_cpu_seconds"] > 0
    # every utterance is longer than 3 x 40 frames: each step sees 4 crops of 40 stacked steps = 480 10-ms frames
    assert meta["pretrain_frames"] == 6 * 4 * 40 * 3
    model = load_upstream(out).eval()
    wav = torch.randn(1, 16000)
    hidden, lengths = model(wav, torch.tensor([16000]))
    assert len(hidden) == 3 and hidden[0].shape[1] == int(lengths[0]) == (1 + 16000 // 160) // 3


def test_overrides_mark_the_recipe_but_budget_flags_do_not():
    assert with_overrides(RECIPES["stack3"], steps=9, seed=2).recipe == "stack3"
    assert with_overrides(RECIPES["stack3"], lr=2e-3, batch_size=32).recipe == "stack3+batch_size,lr"
    assert with_overrides(RECIPES["stack3"], lr=RECIPES["stack3"].lr).recipe == "stack3"


def test_cpu_allowance_stops_and_resume_clears_it(corpus, tmp_path):
    cfg = tiny("mainjob")
    out = run_pretraining("mockingjay:small", corpus, tmp_path / "ckpt", cfg, device="cpu", encoder=TINY,
                          max_cpu_seconds=1e-6)
    meta = read_meta(out)
    assert meta["step"] == 1 and not meta["complete"] and "CPU allowance" in meta["stopped"]
    run_pretraining("mockingjay:small", corpus, out, cfg, resume=True, device="cpu", encoder=TINY)
    meta = read_meta(out)
    assert meta["complete"] and meta["step"] == 6 and "stopped" not in meta


def test_until_yardstick_stops_once_the_model_beats_interpolation(tmp_path):
    # white noise: interpolating 7-frame gaps is worse than predicting the mean, which a model learns at once
    rng = np.random.default_rng(0)
    (tmp_path / "wav").mkdir()
    for i in range(12):
        sf.write(tmp_path / "wav" / f"n{i}.wav", (0.1 * rng.standard_normal(24000)).astype(np.float32), 16000)
    cfg = with_overrides(tiny("mainjob"), steps=200, lr=3e-3)
    out = run_pretraining("mockingjay:small", tmp_path / "wav", tmp_path / "ckpt", cfg, device="cpu", encoder=TINY,
                          until_yardstick=True)
    meta = read_meta(out)
    assert meta["step"] < 200 and meta["step"] % 3 == 0 and "interpolation" in meta["stopped"]
    assert meta["val_loss"] < meta["val_baselines"]["interpolate"]


def test_study_reuses_a_stopped_run(corpus, tmp_path, monkeypatch):
    import analysis.recipe_study as study

    monkeypatch.setattr(study, "study_config", lambda recipe, steps, ev: tiny(recipe))
    monkeypatch.setattr(study, "run_pretraining", lambda *a, **k: run_pretraining(*a, **k, encoder=TINY))
    out = train_recipe("mockingjay:small", "mainjob", corpus, tmp_path, 6, 3, 1e-6, progress=False)
    assert "CPU allowance" in read_meta(out)["stopped"]
    stamp = (out / "checkpoint.json").stat().st_mtime_ns
    assert train_recipe("mockingjay:small", "mainjob", corpus, tmp_path, 6, 3, 1e-6, progress=False) == out
    assert (out / "checkpoint.json").stat().st_mtime_ns == stamp  # reused, not trained again


def test_speedups_are_exact_or_lower_bounds():
    t = pd.DataFrame({"upstream": ["m"] * 3, "recipe": ["s3prl", "fast", "never"], "reached": [False, True, False],
                      "cpu_s_to_yardstick": [None, 100.0, None], "cpu_seconds": [600.0, 100.0, 600.0]})
    s = speedups(t).set_index("recipe")
    assert s.loc["fast", "speedup_vs_s3prl"] == pytest.approx(6.0) and bool(s.loc["fast", "speedup_is_bound"])
    assert pd.isna(s.loc["never", "speedup_vs_s3prl"])
    t.loc[0, ["reached", "cpu_s_to_yardstick"]] = [True, 300.0]
    s = speedups(t).set_index("recipe")
    assert s.loc["fast", "speedup_vs_s3prl"] == pytest.approx(3.0) and not bool(s.loc["fast", "speedup_is_bound"])
