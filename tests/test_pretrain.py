"""Pretraining really learns, resumes exactly, and writes loadable checkpoints and loss logs."""
import csv
from dataclasses import replace

import pytest
import torch

from pretrain import PretrainConfig, ensure_pretrained, run_pretraining
from pretrain.masking import interpolate_masked, mask_batch
from pretrain.model import lr_at, make_optimizer, MaskedAcousticModel
from corpora.manifest import load_corpus
from tests.fixtures import make_pretrain_corpus
from upstream.checkpoint import read_meta
from upstream.registry import load_upstream
from upstream.transformer import EncoderConfig

TINY = EncoderConfig(hidden_size=64, num_heads=4, intermediate_size=128, num_layers=2, dropout=0.0,
                     attention_dropout=0.0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_pretrain_corpus(tmp_path_factory.mktemp("corpus"), n_utts=48, seconds=(1.0, 1.5), segment=(0.6, 1.5))


def val_curve(ckpt):
    with open(ckpt / "loss.csv") as f:
        return [(int(r["step"]), float(r["val_loss"])) for r in csv.DictReader(f) if r["val_loss"]]


def test_tiny_model_learns(corpus, tmp_path):
    cfg = PretrainConfig(steps=200, batch_size=8, crop_frames=100, lr=3e-3, warmup=0.05, val_fraction=0.25,
                         val_max_utterances=16, eval_interval=100, ckpt_interval=200, precision="float32")
    out = run_pretraining("mockingjay:small", corpus, tmp_path / "ckpt", cfg, device="cpu", encoder=TINY)
    curve = val_curve(out)
    assert curve[0][0] == 0 and curve[-1][0] == 200
    start, end = curve[0][1], curve[-1][1]
    assert end <= 0.7 * start, f"held-out masked L1 fell only from {start:.3f} to {end:.3f}"
    meta = read_meta(out)
    assert meta["complete"] and meta["step"] == 200 and meta["upstream"] == "mockingjay"
    assert meta["feature"]["norm"] == "corpus" and len(meta["feature"]["norm_mean"]) == 80
    assert meta["pretrain_frames"] > 0 and meta["pretrain_seconds"] > 0 and "git_commit" in meta["provenance"]
    base = meta["val_baselines"]  # yardsticks for the held-out loss, on the same masks
    assert 0 < base["interpolate"] < base["mean"] and abs(base["mean"] - start) < 0.5
    model = load_upstream(out)  # the registry loads what pretraining wrote
    hidden, lengths = model(torch.randn(2, 8000) * 0.1, torch.tensor([8000, 5000]))
    assert len(hidden) == 3 and hidden[-1].shape == (2, 51, 64)


def test_cpu_training_steps_run_with_deterministic_kernels(corpus, tmp_path, monkeypatch):
    """Every CPU training step runs with torch's deterministic algorithms (core.repro.deterministic_kernels: on 2
    threads the same command otherwise trained other weights each time), and the process's setting is restored after;
    a CUDA device is left as it is."""
    import pretrain.train as train
    from core.repro import deterministic_kernels

    seen = []
    step = train.train_step
    monkeypatch.setattr(train, "train_step", lambda run: (seen.append(torch.are_deterministic_algorithms_enabled()),
                                                          step(run))[1])
    cfg = PretrainConfig(steps=3, batch_size=4, crop_frames=50, val_fraction=0.25, val_max_utterances=4,
                         eval_interval=3, ckpt_interval=3, precision="float32")
    assert not torch.are_deterministic_algorithms_enabled()
    run_pretraining("mockingjay:small", corpus, tmp_path / "ckpt", cfg, device="cpu", encoder=TINY)
    assert seen == [True, True, True] and not torch.are_deterministic_algorithms_enabled()
    with deterministic_kernels("cuda"):
        assert not torch.are_deterministic_algorithms_enabled()


def test_interpolation_baseline_is_exact_on_lines_and_respects_padding():
    T = 12
    x = torch.stack([torch.arange(T, dtype=torch.float32) * 0.5, -torch.arange(T, dtype=torch.float32)], -1)
    x = torch.stack([x, x])  # (2, T, 2); the second utterance has 8 valid frames
    lengths = torch.tensor([T, 8])
    mask = torch.zeros(2, T, dtype=torch.bool)
    mask[:, 3:7] = True
    mask[0, 0] = True  # an edge frame copies its only neighbour
    mask[1, 7] = True  # the last valid frame: padding beyond it is never used as a neighbour
    x[1, 8:] = 1e6
    y = interpolate_masked(x, lengths, mask)
    assert torch.allclose(y[0, 3:7], x[0, 3:7])  # a straight line is interpolated exactly
    assert torch.equal(y[0, 0], x[0, 1])  # edge: copied from its only neighbour
    assert torch.equal(y[1, 3:8], x[1, 2].expand(5, 2))  # frames 3-7 end the utterance: the left neighbour
    assert torch.equal(y[~mask], x[~mask])  # unmasked frames are the input
