"""The upstream contract, checked on EVERY registered upstream (parametrised from upstream.registry, tiny sizes):
batched == one by one, frame lengths from the declared frame rule, determinism (two builds, two calls), the declared
hidden-state count and width (known without building), padding zero, and phone labels aligned to the frames."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from corpora.labels import frame_labels
from corpora.manifest import Segment, Utterance
from upstream.checkpoint import save_checkpoint
from upstream.features import FeatureConfig, corpus_stats
from upstream.interface import TransformerUpstream, Upstream
from upstream.registry import build_upstream, static_shape, upstream_identity, upstream_names
from upstream.torchaudio_models import PRESETS
from upstream.transformer import EncoderConfig

LENGTHS = (16000, 11000, 7000, 3000)
TINY_ENC = dict(hidden_size=32, num_heads=4, intermediate_size=64, num_layers=2)


def waves() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    t = torch.arange(max(LENGTHS)) / 16000
    base = 0.3 * torch.sin(2 * torch.pi * 180 * t) * (1 + torch.sin(2 * torch.pi * 4 * t))
    wavs = torch.stack([base.roll(i * 777) + 0.05 * torch.randn(len(t), generator=g) for i in range(len(LENGTHS))])
    lengths = torch.tensor(LENGTHS)
    wavs = wavs * (torch.arange(wavs.shape[1])[None, :] < lengths[:, None])  # padded with zeros
    return wavs, lengths


def mel_feature(**kw) -> FeatureConfig:
    cfg = FeatureConfig(**kw)
    wavs, lengths = waves()
    return cfg.with_stats(*corpus_stats(cfg, [wavs[i, : int(n)] for i, n in enumerate(lengths)]))


def toolkit_ckpt(path: Path, share: bool, stack: int = 3) -> Path:
    """A tiny Mockingjay/AALBERT checkpoint with perturbed weights (stacked by default: a 30-ms frame rule)."""
    feat = mel_feature(downsample=stack)
    enc = EncoderConfig(input_dim=feat.feature_dim, share_layers=share, **TINY_ENC)
    torch.manual_seed(1)
    model = TransformerUpstream(feat, enc)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    meta = {"upstream": "aalbert" if share else "mockingjay", "preset": "test", "encoder": enc.to_dict(),
            "feature": feat.to_dict(), "complete": True}
    return save_checkpoint(path, {"model": {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}}, meta)


def torchaudio_pth(path: Path, family: str) -> Path:
    """torchaudio's state dict format for the tiny preset, perturbed so loading it is visible."""
    torch.manual_seed(2)
    model = PRESETS[family]["tiny"].build()
    state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(state, path)
    return path


def s3prl_ckpt(path: Path) -> Path:
    pytest.importorskip("s3prl")
    from pretrain.export_s3prl import export_s3prl

    export_s3prl(toolkit_ckpt(path.parent / "mj-for-s3prl", share=False, stack=1), path)  # s3prl's expert cannot stack
    return path


# registry name -> (spec, how to make its weights or None, front-end override for weight-free toolkit upstreams)
TINY = {
    "mel": ("mel", None, lambda: mel_feature()),
    "mockingjay": ("mockingjay", lambda d: toolkit_ckpt(d / "mj", share=False), None),
    "aalbert": ("aalbert", lambda d: toolkit_ckpt(d / "al", share=True), None),
    "mockingjay_random": ("mockingjay_random", None, lambda: mel_feature()),
    "aalbert_random": ("aalbert_random", None, lambda: mel_feature()),
    "wav2vec2_base": ("wav2vec2_base:tiny", lambda d: torchaudio_pth(d / "w2v.pth", "wav2vec2"), None),
    "hubert_base": ("hubert_base:tiny", lambda d: torchaudio_pth(d / "hubert.pth", "hubert"), None),
    "wavlm_base": ("wavlm_base:tiny", lambda d: torchaudio_pth(d / "wavlm.pth", "wavlm"), None),
    "wav2vec2_base_random": ("wav2vec2_base_random:tiny", None, None),
    "hubert_base_random": ("hubert_base_random:tiny", None, None),
    "wavlm_base_random": ("wavlm_base_random:tiny", None, None),
    "s3prl": ("s3prl:mockingjay", lambda d: s3prl_ckpt(d / "mj.ckpt"), None),
}


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, tuple[str, Path | None, FeatureConfig | None]]:
    return {}


def instance(name: str, made: dict, tmp_path_factory) -> tuple[str, Path | None, FeatureConfig | None]:
    if name not in made:
        assert name in TINY, f"registered upstream {name!r} has no tiny instance here: add one to TINY"
        spec, weights, feature = TINY[name]
        made[name] = (spec, weights(tmp_path_factory.mktemp(name)) if weights else None, feature() if feature else None)
    return made[name]


def build(spec: str, ckpt: Path | None, feature: FeatureConfig | None) -> Upstream:
    return (build_upstream(spec, ckpt=ckpt, feature=feature) if feature else build_upstream(spec, ckpt=ckpt)).eval()


@pytest.mark.parametrize("name", upstream_names())
def test_upstream_contract(name, made, tmp_path_factory):
    spec, ckpt, feature = instance(name, made, tmp_path_factory)
    model = build(spec, ckpt, feature)
    rule = model.frame_rule
    shape = static_shape(spec, ckpt)
    if feature is None:  # weight-free toolkit upstreams take the corpus front-end at run time, not from the registry
        assert (shape.num_hidden_states, shape.hidden_size, shape.frame_rule) == \
            (model.num_hidden_states, model.hidden_size, rule), "declared shape differs from the built model"
    assert model.sample_rate == rule.sample_rate == 16000
    wavs, lengths = waves()
    with torch.no_grad():
        hidden, out_len = model(wavs, lengths)
        again, _ = model(wavs, lengths)
        other, _ = build(spec, ckpt, feature)(wavs, lengths)  # a second build: same weights (seeded / same file)
    assert out_len.tolist() == [rule.num_frames(n) for n in LENGTHS] == rule.num_frames_tensor(lengths).tolist()
    assert len(hidden) == model.num_hidden_states
    T = max(out_len.tolist())
    for h, a, o in zip(hidden, again, other):
        assert h.shape == (len(LENGTHS), T, model.hidden_size)
        assert torch.equal(h, a) and torch.equal(h, o), "not deterministic"
        for i, n in enumerate(out_len.tolist()):
            assert not h[i, n:].any(), "padded frames must be zero"
    with torch.no_grad():
        for i, n in enumerate(LENGTHS):
            alone, alone_len = model(wavs[i: i + 1, :n], lengths[i: i + 1])
            assert alone_len.tolist() == [out_len[i]]
            for k, (h, a) in enumerate(zip(hidden, alone)):
                diff = (h[i, : int(out_len[i])] - a[0]).abs().max().item()
                assert diff <= 1e-4, f"{spec}: utterance {i} hidden state {k} differs batched vs alone by {diff}"
    ident = upstream_identity(spec, ckpt, model)
    assert ident == upstream_identity(spec, ckpt, build(spec, ckpt, feature))
    assert set(ident) == {"upstream", "preset", "ckpt_hash"} and len(ident["ckpt_hash"]) == 16
    # phone labels: one per output frame, the phone at each frame's centre (boundary at 0.4 s), at 16 and 22.05 kHz
    for sr in (16000, 22050):
        n = round(LENGTHS[0] * sr / 16000)
        b = round(0.4 * sr)
        utt = Utterance("u", "u.wav", sr, n, "s", "train", (Segment("a", 0, b), Segment("b", b, n)))
        lab = frame_labels(utt, {"a": 0, "b": 1}, rule)
        assert len(lab) == out_len[0]
        assert lab.tolist() == (rule.centres(len(lab)) * sr / 16000 >= b).astype(int).tolist()


def test_frame_centres_of_the_three_frame_rules(made, tmp_path_factory):
    """Where frames sit: 10-ms log-mel frames at 160 t, stacked 30-ms frames at 160 (3 t + 1), wav2vec 2.0 frames at
    320 t + 199.5 (the middle of their 400-sample receptive field)."""
    mel = build(*instance("mel", made, tmp_path_factory))
    stacked = build(*instance("mockingjay", made, tmp_path_factory))
    w2v = build(*instance("wav2vec2_base_random", made, tmp_path_factory))
    t = np.arange(4)
    assert np.array_equal(mel.frame_rule.centres(4), 160.0 * t)
    assert np.array_equal(stacked.frame_rule.centres(4), 160.0 * (3 * t + 1))
    assert np.array_equal(w2v.frame_rule.centres(4), 320.0 * t + 199.5)
    assert (mel.frame_shift, stacked.frame_shift, w2v.frame_shift) == (160, 480, 320)


def test_log_mel_identities_and_cache_keys_are_those_of_before_frame_rules(tmp_path):
    """Rows (run ids hash the identity) and caches of log-mel upstreams are reused across the frame-rule change: these
    are the identity hashes and cache directory names commit 8975964 computed for the same inputs."""
    from benchmark.cache.extract import cache_key
    from tests.fixtures import make_tiny_corpus

    corpus = make_tiny_corpus(tmp_path / "c", n_speakers=2, per_speaker={"train": 2, "dev": 1, "test": 1})
    for spec, feat, ident_hash, key in (
            ("mel", FeatureConfig(norm="none"), "850cc19cf095fe0b", "mel-tiny-train-56a801001045902f"),
            ("mockingjay_random", FeatureConfig(norm="none", downsample=3), "2a1261596df0ccd1",
             "mockingjay_random-tiny-train-3759d908d82d773e")):
        up = build_upstream(spec, feature=feat)
        ident = upstream_identity(spec, None, up)
        assert ident["ckpt_hash"] == ident_hash
        assert cache_key(ident, up, corpus, "train", corpus.utterances("train"))[0] == key
