"""An interrupted then resumed run equals an uninterrupted one; matching checkpoints are reused, not retrained."""
import csv

import torch

from pretrain import PretrainConfig, ensure_pretrained, run_pretraining
from corpora.manifest import load_corpus
from tests.fixtures import make_pretrain_corpus
from upstream.checkpoint import load_checkpoint, read_meta
from upstream.transformer import EncoderConfig

MICRO = EncoderConfig(hidden_size=32, num_heads=2, intermediate_size=64, num_layers=2)  # dropout on: RNG matters
CFG = PretrainConfig(steps=8, batch_size=4, accumulation=2, crop_frames=50, ckpt_interval=4, eval_interval=4,
                     log_interval=1, val_fraction=0.2, precision="float32", lr=1e-3)


def rows(ckpt):
    with open(ckpt / "loss.csv") as f:
        return {int(r["step"]): r for r in csv.DictReader(f)}


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    corpus = make_pretrain_corpus(tmp_path / "corpus", n_utts=10, seconds=(0.8, 1.2))
    full = run_pretraining("aalbert:small", corpus, tmp_path / "full", CFG, device="cpu", encoder=MICRO)
    part = run_pretraining("aalbert:small", corpus, tmp_path / "part", CFG, device="cpu", encoder=MICRO,
                           stop_at_step=5)
    meta = read_meta(part)
    assert meta["step"] == 5 and not meta["complete"]
    run_pretraining("aalbert:small", corpus, part, CFG, resume=True, device="cpu", encoder=MICRO)
    a, b = rows(full), rows(part)
    assert sorted(a) == sorted(b) and max(a) == 8
    for step in (6, 8):  # bit-identical: same losses, same weights, not merely close
        assert a[step]["train_loss"] == b[step]["train_loss"]
    assert a[8]["val_loss"] == b[8]["val_loss"]
    ma, mb = read_meta(full), read_meta(part)
    assert ma["step"] == mb["step"] == 8 and ma["pretrain_frames"] == mb["pretrain_frames"]
    wa, wb = load_checkpoint(full)[1]["model"], load_checkpoint(part)[1]["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_ensure_pretrained_reuses_resumes_or_retrains(tmp_path):
    corpus = load_corpus(make_pretrain_corpus(tmp_path / "corpus", n_utts=8, seconds=(0.8, 1.2)))
    cfg = PretrainConfig(steps=4, batch_size=4, crop_frames=60, ckpt_interval=2, eval_interval=2, precision="float32")
    out = tmp_path / "ckpt"
    run_pretraining("mockingjay:small", corpus, out, cfg, device="cpu", encoder=MICRO, stop_at_step=2)
    assert ensure_pretrained("mockingjay:small", corpus, out, cfg, encoder=MICRO) == out  # resumes the incomplete one
    meta = read_meta(out)
    assert meta["complete"] and meta["step"] == 4
    stamp = (out / "checkpoint.json").stat().st_mtime_ns
    ensure_pretrained("mockingjay:small", corpus, out, cfg, encoder=MICRO)  # complete and matching: reused as is
    assert (out / "checkpoint.json").stat().st_mtime_ns == stamp
    other = PretrainConfig(**{**cfg.to_dict(), "seed": 1, "betas": tuple(cfg.betas)})
    ensure_pretrained("mockingjay:small", corpus, out, other, encoder=MICRO)  # different config: old one moved aside
    assert read_meta(out)["pretrain_config"]["seed"] == 1
    assert len(list(tmp_path.glob("ckpt.replaced-*"))) == 1


def test_a_resumed_run_keeps_its_precision_where_auto_would_pick_another(tmp_path, monkeypatch):
    """"auto" is bfloat16 autocast on CPUs that multiply bfloat16 natively and float32 elsewhere: a run started on one
    kind of machine and resumed on the other keeps the precision it started in."""
    import pretrain.train

    corpus = make_pretrain_corpus(tmp_path / "corpus", n_utts=10, seconds=(0.8, 1.2))
    auto = PretrainConfig(**{**CFG.to_dict(), "precision": "auto", "betas": tuple(CFG.betas)})
    monkeypatch.setattr(pretrain.train, "fast_bfloat16", lambda device: False)
    out = run_pretraining("aalbert:small", corpus, tmp_path / "run", auto, device="cpu", encoder=MICRO, stop_at_step=4)
    assert read_meta(out)["precision"] == "float32"
    monkeypatch.setattr(pretrain.train, "fast_bfloat16", lambda device: True)
    assert pretrain.train.autocast_dtype(auto, torch.device("cpu")) is torch.bfloat16  # a fresh run would take bf16
    run_pretraining("aalbert:small", corpus, out, auto, resume=True, device="cpu", encoder=MICRO)
    assert read_meta(out)["precision"] == "float32" and read_meta(out)["step"] == 8
    fresh = run_pretraining("aalbert:small", corpus, tmp_path / "fresh", auto, device="cpu", encoder=MICRO)
    assert read_meta(fresh)["precision"] == "bfloat16"
