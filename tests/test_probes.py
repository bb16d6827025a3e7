"""Probes: fractions, layer modes, heads, flat batches and probe training on a tiny generated corpus."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from downstream.data import Targets, frame_batches, length_batches, split_labels
from downstream.fractions import default_fractions, fraction_subset
from downstream.heads import segment_mean
from downstream.modes import Featurizer, LayerMode, parse_modes
from downstream.sources import LiveSource
from downstream.tasks import TASKS, get_task
from downstream.train import ProbeConfig, train_probe
from tests.test_probes_corpus import make_tiny_corpus
from upstream.features import FeatureConfig, corpus_stats
from upstream.registry import build_upstream


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_corpus(tmp_path_factory.mktemp("tiny") / "c")


@pytest.fixture(scope="module")
def mel(tiny):
    from core.audio import load_audio

    cfg = FeatureConfig()
    mean, std = corpus_stats(cfg, [load_audio(tiny.audio_path(u)) for u in tiny.utterances("train")])
    return build_upstream("mel", feature=cfg.with_stats(mean, std)).eval()


def test_fractions_nested_stratified_and_floor():
    rng = np.random.default_rng(1)
    speakers = [f"s{int(i)}" for i in rng.integers(0, 7, 200)]
    prev: set[int] = set()
    for f in (0.001, 0.01, 0.05, 0.2, 0.5, 1.0):
        sub = fraction_subset(speakers, f, seed=3, per_speaker_floor=True)
        cur = set(sub.indices)
        assert prev <= cur, "smaller fractions must be contained in larger ones"
        assert {speakers[i] for i in cur} == set(speakers), "every speaker keeps a training utterance"
        assert len(cur) == max(round(f * 200), 7) and sub.raised == (round(f * 200) < 7)
        prev = cur
    phone = fraction_subset(speakers, 0.001, seed=3, per_speaker_floor=False)
    assert len(phone.indices) == 1 and set(phone.indices) <= set(fraction_subset(speakers, 0.001, 3, True).indices)
    assert fraction_subset(speakers, 0.3, 4, True).indices != fraction_subset(speakers, 0.3, 5, True).indices
    assert fraction_subset(speakers, 0.3, 4, True) == fraction_subset(speakers, 0.3, 4, True)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        fraction_subset(speakers, 0.0, 0, True)


def test_default_fractions_rule():
    kept, dropped = default_fractions(1200, 100)
    assert kept == [0.01, 0.05, 0.125, 1.0] and dropped == [0.001, 0.005]  # >= 10 utterances each
    assert default_fractions(100_000, 50)[1] == []


def test_modes_parse_and_weighted_sum():
    assert parse_modes("last,layer=2,weighted_sum,finetune") == [LayerMode("last"), LayerMode("layer", 2),
                                                                 LayerMode("weighted_sum"), LayerMode("finetune")]
    assert [m.layer for m in parse_modes("layers", 4)] == [0, 1, 2, 3]
    for bad, msg in (("lst", "valid: last"), ("layer=x", "integer"), ("layer=-1", ">= 0"), ("", "empty")):
        with pytest.raises(ValueError, match=msg):
            parse_modes(bad, 3)
    with pytest.raises(ValueError, match="hidden states 0..2"):
        LayerMode("layer", 5).resolved_layer(3)
    f = Featurizer(LayerMode("weighted_sum"), 3)
    h = torch.stack([torch.full((5, 2), float(i)) for i in range(3)])
    assert torch.allclose(f(h), torch.ones(5, 2))  # zero init -> uniform softmax -> mean of 0, 1, 2
    assert f.layer_weights() == pytest.approx([1 / 3] * 3)
    assert torch.equal(Featurizer(LayerMode("last"), 3)(h), h[2])


def test_segment_mean_and_targets(tiny):
    x = torch.arange(10, dtype=torch.float32)[:, None]
    assert segment_mean(x, torch.tensor([3, 7])).flatten().tolist() == pytest.approx([1.0, 6.0])
    utts = tiny.utterances("train")
    spk = split_labels(tiny, utts, "train", "speaker", 160, 1)
    lengths = np.full(len(utts), 2)
    lengths[7] = 3
    y = Targets(TASKS["speaker_frame"], spk, lengths).batch([0, 7])
    assert y.tolist() == [spk.utt[0]] * 2 + [spk.utt[7]] * 3
    assert Targets(TASKS["speaker_frame"], spk, lengths).batch([0, 7], np.array([1, 4])).tolist() == [spk.utt[0], spk.utt[7]]
    phone = split_labels(tiny, utts, "train", "phone", 160, 1)
    n = np.array([len(f) for f in phone.frames])
    n[0] += 1  # one frame more than the labels (resampling rounding): the last label is repeated
    t = Targets(TASKS["phone_linear"], phone, n).batch([1, 0])
    assert t.tolist() == phone.frames[1].tolist() + phone.frames[0].tolist() + [phone.frames[0][-1]]
    n[0] += 5
    with pytest.raises(ValueError, match="#0: .* label frames but .* feature frames"):
        Targets(TASKS["phone_linear"], phone, n, "train")


def test_length_batches_cover_and_group():
    lengths = np.array([5, 1, 9, 3, 7, 2])
    b = length_batches(lengths, [0, 1, 2, 3, 4, 5], 2)
    assert b == [[1, 5], [3, 0], [4, 2]]
    assert frame_batches(lengths, 8) == [[1, 5, 3], [0], [4], [2]]  # length order, <= 8 frames or one utterance
    shuffled = length_batches(lengths, [0, 2, 4], 2, np.random.default_rng(0))
    assert sorted(i for x in shuffled for i in x) == [0, 2, 4]


def test_live_source_flat_batch_equals_one_by_one(tiny, mel):
    utts = {"train": tiny.utterances("train")}
    src = LiveSource(mel, tiny, utts)
    (x,), lens = src.batch("train", [0, 5, 9], [0])
    assert x.shape[0] == int(lens.sum()) and lens.tolist() == src.lengths("train")[[0, 5, 9]].tolist()
    parts = [src.batch("train", [i], [0])[0][0] for i in (0, 5, 9)]
    assert torch.allclose(x, torch.cat(parts), atol=1e-5)  # no padding leaks into any frame


def _labels(corpus, task):
    return {s: split_labels(corpus, corpus.utterances(s), s, task.labels, 160, 1) for s in ("train", "dev", "test")}


@pytest.mark.parametrize("task_name", list(TASKS))
def test_probe_learns_and_is_deterministic(tiny, mel, task_name):
    task = get_task(task_name)
    src = LiveSource(mel, tiny, {s: tiny.utterances(s) for s in ("train", "dev", "test")})
    n_cls = len(tiny.phones) if task.labels == "phone" else len(tiny.speakers)
    cfg = ProbeConfig(lr=3e-3, max_steps=30, eval_every=10, batch_size=8)
    train_idx = list(range(len(tiny.utterances("train"))))
    a = train_probe(task, LayerMode("last"), src, _labels(tiny, task), train_idx, n_cls, cfg, seed=0)
    b = train_probe(task, LayerMode("last"), src, _labels(tiny, task), train_idx, n_cls, cfg, seed=0)
    assert (a.dev_metric, a.test_metric, a.best_step) == (b.dev_metric, b.test_metric, b.best_step)
    assert a.dev_metric > 1.5 / n_cls, f"{task_name}: dev accuracy {a.dev_metric} not above chance"
    assert a.steps == 30 and a.best_step in (10, 20, 30) and a.train_utts == len(train_idx)
    assert (a.test_utt_metric is not None) == task.utt_metric


def test_weighted_sum_and_finetune_restore_upstream(tiny, mel):
    up = build_upstream("mockingjay_random:small", feature=mel.feature_cfg).eval()
    src = LiveSource(up, tiny, {s: tiny.utterances(s) for s in ("train", "dev", "test")})
    task = get_task("phone_linear")
    cfg = ProbeConfig(max_steps=4, eval_every=2, batch_size=4)
    ws = train_probe(task, LayerMode("weighted_sum"), src, _labels(tiny, task), [0, 1, 2, 3], 4, cfg, seed=1)
    assert ws.layer_weights is not None and len(ws.layer_weights) == 4 and sum(ws.layer_weights) == pytest.approx(1)
    assert ws.layer_weights != pytest.approx([0.25] * 4, abs=1e-6)  # trained with the probe
    before = {k: v.clone() for k, v in up.state_dict().items()}
    ft = train_probe(task, LayerMode("finetune"), src, _labels(tiny, task), [0, 1, 2, 3], 4, cfg, seed=1, upstream=up)
    assert ft.layer_weights is None and ft.steps == 4
    assert all(torch.equal(before[k], v) for k, v in up.state_dict().items()), "finetune must restore the upstream"
    with pytest.raises(ValueError, match="needs the upstream"):
        train_probe(task, LayerMode("finetune"), src, _labels(tiny, task), [0], 4, cfg, seed=1)
