"""Probes: fractions, layer modes, heads, flat batches and probe training on a tiny generated corpus."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from core.frames import LOG_MEL
from downstream.data import Targets, frame_batches, length_batches, split_labels
from downstream.fractions import default_fractions, fraction_subset
from downstream.heads import Whitening, segment_mean
from downstream.modes import Featurizer, LayerMode, parse_modes
from downstream.sources import ArraySource, LiveSource, PooledSource, SplitArrays
from downstream.metrics import FRAME_ACC
from downstream.tasks import PHONES, SPEAKERS, TASKS, LabelSource, TaskSpec, get_task, linear_head
from downstream.finetune import finetune_probe
from downstream.config import AdamW, FinetuneAdamW, L2Path, Minibatch, ProbeConfig
from downstream.train import train_probe
from tests.fixtures import make_tiny_corpus
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
    spk = split_labels(tiny, utts, "train", SPEAKERS, LOG_MEL)
    lengths = np.full(len(utts), 2)
    lengths[7] = 3
    y = Targets(TASKS["speaker_frame"], spk, lengths).batch([0, 7])
    assert y.tolist() == [spk.utt[0]] * 2 + [spk.utt[7]] * 3
    assert Targets(TASKS["speaker_frame"], spk, lengths).batch([0, 7], np.array([1, 4])).tolist() == [spk.utt[0], spk.utt[7]]
    phone = split_labels(tiny, utts, "train", PHONES, LOG_MEL)
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
    return {s: split_labels(corpus, corpus.utterances(s), s, task.labels, LOG_MEL) for s in ("train", "dev", "test")}


def array_source(upstream, corpus) -> ArraySource:
    """The upstream's hidden states of every probe split, stored as the feature cache stores them (float16, flat)."""
    live = LiveSource(upstream, corpus, {s: corpus.utterances(s) for s in ("train", "dev", "test")})
    splits = {}
    for s in ("train", "dev", "test"):
        n = len(corpus.utterances(s))
        hidden, lengths = live.batch(s, list(range(n)), list(range(upstream.num_hidden_states)))
        splits[s] = SplitArrays(hidden.detach().numpy().astype(np.float16),
                                np.concatenate([[0], np.cumsum(lengths.numpy())]).astype(np.int64))
    return ArraySource(splits)


def _source(src: ArraySource, task: TaskSpec):
    return PooledSource(src) if task.pooled else src


@pytest.fixture(scope="module")
def mel_src(tiny, mel):
    return array_source(mel, tiny)


@pytest.mark.parametrize("task_name", [t for t in TASKS if TASKS[t].engine == "stacked"])
def test_probe_learns_converges_and_is_deterministic(tiny, mel_src, task_name):
    task = get_task(task_name)
    src = _source(mel_src, task)
    n_cls = len(task.labels.classes(tiny))
    cfg = ProbeConfig(Minibatch(AdamW(lr=3e-2), batch_size=256, min_eval_steps=5), patience=3)
    train_idx = list(range(len(tiny.utterances("train"))))
    a = train_probe(task, LayerMode("last"), src, _labels(tiny, task), train_idx, n_cls, cfg, seed=0)
    b = train_probe(task, LayerMode("last"), src, _labels(tiny, task), train_idx, n_cls, cfg, seed=0)
    assert (a.dev_metric, a.test_metric, a.best_step, a.steps) == (b.dev_metric, b.test_metric, b.best_step, b.steps)
    assert a.dev_metric > 1.5 / n_cls, f"{task_name}: dev accuracy {a.dev_metric} not above chance"
    assert a.converged and a.steps < cfg.max_steps and a.best_step <= a.steps and a.train_utts == len(train_idx)
    assert (a.test_utt_metric is not None) == task.utt_metric


def test_fixed_budget_and_cap_are_not_converged(tiny, mel_src):
    task = get_task("phone_linear")
    labels, n_cls = _labels(tiny, task), len(tiny.phones)
    fixed = train_probe(task, LayerMode("last"), mel_src, labels, [0, 1, 2], n_cls,
                        ProbeConfig(Minibatch(AdamW(lr=1e-2))).with_steps(7), seed=0)
    assert fixed.steps == 7 and not fixed.converged and ProbeConfig().with_steps(7).budget == "steps=7"
    capped = train_probe(task, LayerMode("last"), mel_src, labels, [0, 1, 2], n_cls,
                         ProbeConfig(Minibatch(AdamW(lr=1e-4), min_eval_steps=2), max_steps=6, patience=50), seed=0)
    assert capped.steps == 6 and not capped.converged


def test_whitening_decorrelates():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    mix = torch.diag(torch.logspace(0, 1.5, 16)) @ q  # correlated (rotated), badly scaled: condition number 1000
    x = torch.randn(20000, 16, generator=g) @ mix + 5.0
    w = Whitening(16).fit(x)
    z = w.apply_(x.clone())
    assert torch.allclose(z.mean(0), torch.zeros(16), atol=1e-3)
    assert torch.linalg.cond(torch.corrcoef(x.T)) > 100
    assert torch.allclose(torch.cov(z.T), torch.eye(16), atol=5e-2)  # what the optimiser sees: identity
    assert torch.allclose(w(x[:5]), z[:5], atol=1e-4)
    assert torch.isfinite(Whitening(16).fit(x[:8])(x[8:100])).all()  # fewer examples than dimensions: finite


def test_standardising_keeps_correlations():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5000, 3, generator=g) @ torch.tensor([[1.0, 0.9, 0.0], [0.0, 0.4, 0.0], [0.0, 0.0, 3.0]]) + 2.0
    x = torch.cat([x, torch.full((5000, 1), 7.0)], 1)  # a constant dimension: mapped to zero, not blown up
    w = Whitening(4, decorrelate=False).fit(x)
    z = w.apply_(x.clone())
    assert torch.allclose(w.matrix, torch.diag(torch.diag(w.matrix)))  # per dimension only
    assert torch.allclose(z[:, :3].std(0), torch.ones(3), atol=1e-2) and torch.all(z[:, 3] == 0)
    assert torch.allclose(torch.corrcoef(z[:, :3].T), torch.corrcoef(x[:, :3].T), atol=1e-4)


def test_regularisation_path_is_the_regression_chosen_on_dev(tiny, mel_src):
    """The utterance-level trainer (L-BFGS along an L2 path) reaches, at every point of its grid, what
    scikit-learn's LogisticRegression reaches on the same examples: its dev score is the best of sklearn's."""
    from sklearn.linear_model import LogisticRegression

    task = get_task("speaker_utterance")
    src, labels = PooledSource(mel_src), _labels(tiny, task)
    n_cls, idx = len(tiny.speakers), list(range(len(tiny.utterances("train"))))
    cfg = ProbeConfig(L2Path(l2_grid=(1e-1, 1e-2, 1e-3), rtol=0.01), patience=100)
    r = train_probe(task, LayerMode("last"), src, labels, idx, n_cls, cfg, seed=0)
    assert r.converged and r.steps > 0
    x = {s: src.examples(s)[0].numpy() for s in ("train", "dev")}
    y = {s: Targets(task, labels[s], src.lengths(s)).utt for s in ("train", "dev")}
    devs = [LogisticRegression(C=1 / (l2 * len(idx)), tol=1e-8, max_iter=10000).fit(x["train"], y["train"])
            .score(x["dev"], y["dev"]) for l2 in cfg.trainer.l2_grid]
    assert r.dev_metric == pytest.approx(max(devs), abs=1.01 / len(y["dev"])), (r.dev_metric, devs)
    capped = train_probe(task, LayerMode("last"), src, labels, idx, n_cls, replace(cfg, max_steps=3), seed=0)
    assert capped.steps <= 3 and not capped.converged
    with pytest.raises(ValueError, match="l2_grid"):
        ProbeConfig(L2Path(l2_grid=()))


def test_sources_whiten_frames_and_standardise_means(tiny, mel_src):
    x = mel_src.whitened("train", 0).double()
    assert torch.allclose(x.mean(0), torch.zeros(x.shape[1], dtype=torch.float64), atol=1e-3)
    pooled = PooledSource(mel_src)
    offsets = mel_src.splits["dev"].offsets
    raw = torch.from_numpy(mel_src.splits["dev"].hidden[0].astype(np.float32))
    assert torch.allclose(pooled.means("dev")[0][1], raw[offsets[1]:offsets[2]].mean(0), atol=1e-4)
    u = pooled.examples("train")[0].double()
    assert torch.allclose(u.mean(0), torch.zeros(u.shape[1], dtype=torch.float64), atol=1e-3)
    w = pooled.whitening()[0]
    assert torch.allclose(pooled.examples("dev")[0], w(pooled.means("dev")[0]), atol=1e-4)


def test_a_new_task_is_one_spec(tiny, mel_src):
    """A task the registry does not know (voiced vs silence per frame, from the alignments) trains through the same
    code: label function, head and metric come from the spec alone."""
    def is_silence(corpus, utts, split, rule):
        phones = PHONES.make(corpus, utts, split, rule)
        sil = corpus.phones.index("sil")
        return [(p == sil).astype(np.int64) for p in phones]

    silence = LabelSource("silence", "frame", lambda c: ["speech", "sil"], is_silence)
    task = TaskSpec("silence_linear", silence, "frame", linear_head, FRAME_ACC, linear=True)
    labels = {s: split_labels(tiny, tiny.utterances(s), s, silence, LOG_MEL) for s in ("train", "dev", "test")}
    r = train_probe(task, LayerMode("last"), mel_src, labels, list(range(len(tiny.utterances("train")))), 2,
                    ProbeConfig(Minibatch(AdamW(lr=3e-2), batch_size=256, min_eval_steps=5), patience=3), seed=0)
    majority = max(np.mean(np.concatenate(labels["test"].frames)), 1 - np.mean(np.concatenate(labels["test"].frames)))
    assert r.test_metric > majority + 0.05, (r.test_metric, majority)


def test_weighted_sum_and_finetune_from_the_frozen_probe(tiny, mel):
    up = build_upstream("mockingjay_random:small", feature=mel.feature_cfg).eval()
    src = array_source(up, tiny)
    live = LiveSource(up, tiny, {s: tiny.utterances(s) for s in ("train", "dev", "test")})
    task = get_task("phone_linear")
    labels, n_cls, idx = _labels(tiny, task), len(tiny.phones), [0, 1, 2, 3]
    cfg = ProbeConfig(Minibatch(AdamW(lr=1e-2), batch_size=128, min_eval_steps=3), patience=2)
    ws = train_probe(task, LayerMode("weighted_sum"), src, labels, idx, n_cls, cfg, seed=1)
    assert ws.layer_weights is not None and len(ws.layer_weights) == 4 and sum(ws.layer_weights) == pytest.approx(1)
    assert ws.layer_weights != pytest.approx([0.25] * 4, abs=1e-6)  # trained with the probe
    frozen = train_probe(task, LayerMode("last"), src, labels, idx, n_cls, cfg, seed=1)
    before = {k: v.clone() for k, v in up.state_dict().items()}
    ft = finetune_probe(task, frozen, src.whitening()[3], live, up, labels, idx, n_cls,
                        ProbeConfig(Minibatch(FinetuneAdamW(lr=1e-3, upstream_lr=1e-4), batch_size=2, eval_every=2),
                                    patience=1, max_steps=6),
                        seed=1)
    assert ft.layer_weights is None and 0 < ft.steps <= 6
    # step 0 IS the frozen probe (live float32 features instead of the float16 cache), so dev cannot fall below it
    assert ft.dev_metric >= frozen.dev_metric - 0.01
    assert all(torch.equal(before[k], v) for k, v in up.state_dict().items()), "finetune must restore the upstream"
    with pytest.raises(ValueError, match="frozen probes"):
        train_probe(task, LayerMode("finetune"), src, labels, idx, n_cls, cfg, seed=1)
