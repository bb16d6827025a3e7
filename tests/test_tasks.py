"""Task specs beyond accuracy: metrics and their direction, the CTC engine, sequence labels and the tasks' checks."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from core.frames import LOG_MEL
from downstream.data import split_labels
from downstream.metrics import EER, PER, Metric, accuracy, edit_distance, equal_error_rate, min_dcf, phone_error_rate
from downstream.modes import LayerMode
from downstream.config import AdamW, L2Path, Minibatch, ProbeConfig
from downstream.stopping import Stopping
from downstream.tasks import (ALL_TASKS, PHONES, TASKS, LabelSource, TaskSpec, ctc_greedy, ctc_loss, get_task, linear_head,
                              phone_classes)
from downstream.train import train_probe
from corpora.manifest import load_corpus, read_manifest, write_manifest
from tests.fixtures import make_tiny_corpus
from tests.test_probes import array_source, mel, tiny  # noqa: F401  (module fixtures)

SPLITS = ("train", "dev", "test")


@pytest.fixture(scope="module")
def mel_src(tiny, mel):  # noqa: F811
    return array_source(mel, tiny)


def _labels(corpus, task):
    return {s: split_labels(corpus, corpus.utterances(s), s, task.labels, LOG_MEL) for s in SPLITS}


def test_phone_error_rate_on_known_sequences():
    assert edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert edit_distance([1, 3], [1, 2, 3]) == 1  # a deletion
    assert edit_distance([1, 2, 4, 3], [1, 2, 3]) == 1  # an insertion
    assert edit_distance([3, 2, 1], [1, 2, 3]) == 2  # two substitutions
    assert edit_distance([], [1, 2]) == 2 and edit_distance([5, 6, 7], []) == 3
    # summed over the split, then divided: (0 + 1 + 2) / (3 + 3 + 2)
    assert phone_error_rate([[1, 2, 3], [1, 3], [9, 9]], [[1, 2, 3], [1, 2, 3], [4, 5]]) == pytest.approx(3 / 8)
    assert phone_error_rate([[1, 1, 1, 1]], [[2]]) == 4.0  # insertions: PER is not bounded by 1
    with pytest.raises(ValueError, match="no phones"):
        phone_error_rate([[1]], [[]])
    assert PER.direction == "lower" and not PER.higher_is_better and str(PER) == "per"


def _textbook_distance(a, b) -> int:
    if not a or not b:
        return len(a) + len(b)
    return min(_textbook_distance(a[1:], b) + 1, _textbook_distance(a, b[1:]) + 1,
               _textbook_distance(a[1:], b[1:]) + (a[0] != b[0]))


def test_edit_distance_equals_the_textbook_recursion():
    rng = np.random.default_rng(0)
    for _ in range(200):
        a, b = (rng.integers(0, 4, rng.integers(0, 7)).tolist() for _ in range(2))
        assert edit_distance(a, b) == _textbook_distance(a, b), (a, b)
    assert edit_distance([40, 41], [41, 40, 300]) == 2  # phone ids beyond a character range


def test_equal_error_rate_and_min_dcf_on_known_scores():
    from sklearn.metrics import roc_curve

    same = np.array([1, 1, 1, 0, 0, 0])
    assert equal_error_rate([0.9, 0.8, 0.7, 0.3, 0.2, 0.1], same) == 0.0  # separable
    assert equal_error_rate([0.1, 0.2, 0.3, 0.7, 0.8, 0.9], same) == 1.0  # inverted
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 4000)
    assert abs(equal_error_rate(rng.standard_normal(4000), y) - 0.5) < 0.03  # scores unrelated to the labels
    # against scikit-learn's roc_curve read directly: at the crossing, fpr and fnr agree with the EER
    s = y + rng.standard_normal(4000)
    eer = equal_error_rate(s, y)
    fpr, tpr, _ = roc_curve(y, s)
    k = np.argmin(np.abs((1 - tpr) - fpr))
    assert abs(eer - fpr[k]) < 2e-3 and abs(eer - (1 - tpr[k])) < 2e-3 and 0.2 < eer < 0.4
    assert min_dcf([0.9, 0.8, 0.7, 0.3, 0.2, 0.1], same) == 0.0
    assert 0 < min_dcf(s, y) <= 1.0 + 1e-9  # normalised: accepting or rejecting everything costs 1
    with pytest.raises(ValueError, match="both target"):
        equal_error_rate([0.1, 0.2], [1, 1])
    assert EER.direction == "lower"


def test_early_stopping_keeps_the_minimum_of_a_lower_is_better_metric():
    cfg = ProbeConfig(patience=3, min_delta=0.01)
    lower = Stopping(1, cfg, PER)
    kept = []
    for step, v in enumerate([0.9, 0.5, 0.7, 0.495, 0.6]):
        lower.steps[0] = step + 1
        kept.append(lower.update(0, v))
    # 0.495 is a new minimum (kept) but gains < min_delta over 0.5, so it does not reset the patience: after three
    # evaluations without a real gain (0.7, 0.495, 0.6) the probe has converged, its best point the minimum
    assert kept == [True, True, False, True, False] and lower.best[0] == 0.495 and lower.best_step[0] == 4
    assert lower.done[0] and lower.converged[0]
    higher = Stopping(1, cfg, TASKS["phone_linear"].metric)
    for step, v in enumerate([0.1, 0.5, 0.3]):
        higher.steps[0] = step + 1
        higher.update(0, v)
    assert higher.best[0] == 0.5 and higher.best_step[0] == 2


def test_phone_sequences_collapse_runs_and_drop_silence(tiny):  # noqa: F811
    task = get_task("phone_ctc")
    assert phone_classes(tiny) == ["a", "b", "c"] and task.outputs(3) == 4  # + the CTC blank
    utt = tiny.utterances("train")[0]
    seq = task.labels.make(tiny, [utt], "train", LOG_MEL)[0]
    runs = [s.phone for k, s in enumerate(utt.alignment) if k == 0 or s.phone != utt.alignment[k - 1].phone]
    assert [phone_classes(tiny)[i] for i in seq] == [p for p in runs if p != "sil"]
    # greedy decoding: best class per valid frame, runs merged, blanks (0) dropped, labels shifted back to 0..C-1
    lp = torch.full((1, 7, 4), -9.0)
    for t, k in enumerate([0, 2, 2, 0, 2, 3, 1]):
        lp[0, t, k] = 0.0
    assert ctc_greedy(lp, torch.tensor([6])) == [[1, 1, 2]]
    # a padded batch: each utterance decoded as alone, on its own frames
    g = torch.Generator().manual_seed(0)
    lp, lengths = torch.randn(5, 30, 4, generator=g), torch.tensor([30, 1, 17, 0, 29])
    alone = [[int(k) - 1 for k in torch.unique_consecutive(b[:n].argmax(-1)) if k != 0] for b, n in zip(lp, lengths)]
    assert ctc_greedy(lp, lengths) == alone and alone[3] == [] and sum(map(len, alone)) > 20


def test_ctc_probe_learns_and_its_per_decreases(tiny, mel_src):  # noqa: F811
    """phone_ctc (sequence level, PER: lower is better) trains through downstream.train to a phone error rate far
    below the untrained head's (which emits nothing: PER 1), on the last layer and at a label fraction."""
    task = get_task("phone_ctc")
    labels, n_cls = _labels(tiny, task), len(phone_classes(tiny))
    cfg = ProbeConfig(Minibatch(AdamW(lr=3e-2), batch_size=4, min_eval_steps=5), patience=5)
    idx = list(range(len(tiny.utterances("train"))))
    r = train_probe(task, LayerMode("last"), mel_src, labels, idx, n_cls, cfg, seed=0)
    # the zero-initialised head emits only blanks (every phone deleted): PER 1
    assert phone_error_rate([[]] * len(labels["dev"].seqs), labels["dev"].seqs) == 1.0
    assert r.dev_metric < 0.4 and r.test_metric < 0.4, (r.dev_metric, r.test_metric)
    assert r.converged and r.best_step <= r.steps and r.train_utts == len(idx)
    again = train_probe(task, LayerMode("last"), mel_src, labels, idx, n_cls, cfg, seed=0)
    assert (again.dev_metric, again.test_metric, again.steps) == (r.dev_metric, r.test_metric, r.steps)
    # a label fraction trains too (12 utterances of this corpus are too few for a CTC head to beat PER 1)
    half = train_probe(task, LayerMode("last"), mel_src, labels, idx[::2], n_cls, cfg, seed=1)
    assert half.train_utts == len(idx[::2]) and half.best_step > 0 and np.isfinite(half.dev_metric)


def test_ctc_on_the_weighted_sum(tiny, mel):  # noqa: F811
    from upstream.registry import build_upstream

    up = build_upstream("mockingjay_random:small", feature=mel.feature_cfg).eval()
    src = array_source(up, tiny)
    task = get_task("phone_ctc")
    r = train_probe(task, LayerMode("weighted_sum"), src, _labels(tiny, task), list(range(24)), 3,
                    ProbeConfig(Minibatch(AdamW(lr=3e-2), batch_size=4, min_eval_steps=3),
                                patience=2, max_steps=60), seed=0)
    assert r.layer_weights is not None and sum(r.layer_weights) == pytest.approx(1.0) and r.dev_metric < 1.0
    with pytest.raises(ValueError, match="minibatches"):
        train_probe(task, LayerMode("last"), src, _labels(tiny, task), [0, 1], 3, ProbeConfig(L2Path()), 0)


def test_a_new_task_with_a_new_level_and_a_lower_is_better_metric(tiny, mel_src):  # noqa: F811
    """Two tasks defined here alone: a sequence task (broad classes, scored by a sequence error rate) in the CTC
    engine, and a frame task scored by an ERROR rate in the stacked engine. Both run through downstream.train, and
    the stacked one's dev score is the minimum of its evaluations: a consumer that assumed accuracy (keeping the
    maximum) would report the untrained head's error."""
    def broad(corpus, utts, split, rule):  # vowel "a" (0) vs consonant "b"/"c" (1), runs merged, silence dropped
        seqs = []
        for u in utts:
            s = [0 if seg.phone == "a" else 1 for seg in u.alignment if seg.phone != "sil"]
            seqs.append(np.array([c for k, c in enumerate(s) if k == 0 or c != s[k - 1]], dtype=np.int64))
        return seqs

    def sentence_error(hyps, refs):
        return float(np.mean([list(h) != list(r) for h, r in zip(hyps, refs)]))

    ser = Metric("ser", "lower", sentence_error, description="share of utterances not transcribed exactly")
    seq_task = TaskSpec("broad_ctc", LabelSource("broad", "sequence", lambda c: ["vowel", "consonant"], broad),
                        "sequence", linear_head, ser, linear=False, loss=ctc_loss, decode=ctc_greedy, engine="ctc")
    labels = {s: split_labels(tiny, tiny.utterances(s), s, seq_task.labels, LOG_MEL) for s in SPLITS}
    r = train_probe(seq_task, LayerMode("last"), mel_src, labels, list(range(24)), 2,
                    ProbeConfig(Minibatch(AdamW(lr=3e-2), batch_size=4, min_eval_steps=5), patience=5), seed=0)
    blank = {s: sentence_error([[]] * len(labels[s].seqs), labels[s].seqs) for s in ("dev", "test")}  # untrained
    assert r.dev_metric < blank["dev"] and r.test_metric < blank["test"], (r.dev_metric, r.test_metric, blank)

    def error_tally(pred, y):
        return (pred != y).sum(-1), torch.tensor(y.shape[-1])

    err = Metric("frame_err", "lower", lambda p, y: 1 - accuracy(p, y), tally=error_tally)
    frame_task = TaskSpec("phone_err", PHONES, "frame", linear_head, err, linear=True)
    labels = _labels(tiny, frame_task)
    cfg = ProbeConfig(Minibatch(AdamW(lr=3e-2), batch_size=256, min_eval_steps=5), patience=3)
    e = train_probe(frame_task, LayerMode("last"), mel_src, labels, list(range(24)), len(tiny.phones), cfg, seed=0)
    a = train_probe(TASKS["phone_linear"], LayerMode("last"), mel_src, labels, list(range(24)), len(tiny.phones), cfg,
                    seed=0)
    # the same probe scored the other way round: error = 1 - accuracy at the same best point
    assert e.dev_metric == pytest.approx(1 - a.dev_metric, abs=1e-6) and e.best_step == a.best_step
    assert e.test_metric == pytest.approx(1 - a.test_metric, abs=1e-9) and e.dev_metric < 0.5


def test_task_specs_declare_what_differs():
    assert set(TASKS) == {"phone_linear", "phone_1hidden", "speaker_utterance", "speaker_frame"}  # the legacy probes
    for t in ALL_TASKS.values():
        assert isinstance(t.metric, Metric) and t.metric.direction in ("higher", "lower")
        assert t.level in ("frame", "utterance", "sequence")
    assert get_task("phone_ctc").metric is PER and get_task("phone_ctc").level == "sequence"
    assert get_task("speaker_utterance").pooled and not get_task("phone_ctc").pooled
    with pytest.raises(TypeError, match="Metric"):
        TaskSpec("bad", PHONES, "frame", linear_head, "frame_acc", linear=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sequence"):
        TaskSpec("bad", PHONES, "sequence", linear_head, PER, linear=False, engine="ctc")


# ---------------------------------------------------------------- clean errors, before any extraction


def test_phone_ctc_on_a_manifest_without_transcriptions_names_the_file(tmp_path):
    corpus = make_tiny_corpus(tmp_path / "c")
    dev = read_manifest(corpus.root / "dev.jsonl")
    write_manifest(corpus.root / "dev.jsonl", [replace(u, alignment=None) for u in dev])
    for name in ("phone_ctc", "phone_linear"):
        with pytest.raises(ValueError, match=rf"task {name}: .*dev\.jsonl: {len(dev)} of {len(dev)} utterances have "
                                             rf"no phone transcription"):
            get_task(name).check(corpus)
    get_task("speaker_utterance").check(corpus)  # speakers need no transcription


def test_closed_set_speaker_task_on_open_set_speakers_is_refused(tmp_path):
    corpus = make_tiny_corpus(tmp_path / "c")
    for name in ("speaker_utterance", "speaker_frame"):
        get_task(name).check(corpus)
    info = json.loads((corpus.root / "corpus.json").read_text())
    info["info"]["closed_set_speakers"] = False  # as `corpora prepare timit` writes it
    (corpus.root / "corpus.json").write_text(json.dumps(info))
    open_set = load_corpus(corpus.root)
    for name in ("speaker_utterance", "speaker_frame"):
        with pytest.raises(ValueError, match=r"corpus\.json: its speakers are open-set"):
            get_task(name).check(open_set)
    get_task("phone_ctc").check(open_set)


# ---------------------------------------------------------------- speaker verification


@pytest.fixture(scope="module")
def trial_corpus(tmp_path_factory):
    return make_tiny_corpus(tmp_path_factory.mktemp("trials") / "c", trial_speakers=4)


def test_trial_speakers_leave_the_tiny_corpus_as_it_was(tmp_path, trial_corpus):
    plain = make_tiny_corpus(tmp_path / "c")
    for s in SPLITS:
        assert (plain.root / f"{s}.jsonl").read_bytes() == (trial_corpus.root / f"{s}.jsonl").read_bytes()


def _source_of(upstream, corpus, task):
    """The upstream's hidden states of the utterances each split of `task` reads (the trial utterances in dev and
    test for speaker verification), stored as the feature cache stores them."""
    from downstream.sources import ArraySource, LiveSource, SplitArrays

    utts = {s: task.utterances(corpus, s) for s in SPLITS}
    live = LiveSource(upstream, corpus, utts)
    splits = {}
    for s in SPLITS:
        hidden, lengths = live.batch(s, list(range(len(utts[s]))), list(range(upstream.num_hidden_states)))
        splits[s] = SplitArrays(hidden.detach().numpy().astype(np.float16),
                                np.concatenate([[0], np.cumsum(lengths.numpy())]).astype(np.int64))
    labels = {s: split_labels(corpus, utts[s], s, task.labels, LOG_MEL) for s in SPLITS}
    return ArraySource(splits), labels


def test_speaker_verification_trains_on_train_speakers_and_scores_held_out_trials(trial_corpus, mel):  # noqa: F811
    task = get_task("speaker_verification")
    task.check(trial_corpus)
    src, labels = _source_of(mel, trial_corpus, task)
    assert labels["dev"].trials is not None and labels["dev"].trials.shape[1] == 3
    assert {u.speaker for u in task.utterances(trial_corpus, "test")}.isdisjoint(trial_corpus.speakers)
    cfg = ProbeConfig(Minibatch(AdamW(lr=1e-2), batch_size=8, min_eval_steps=3), patience=4)
    r = train_probe(task, LayerMode("last"), src, labels, list(range(24)), len(trial_corpus.speakers), cfg, seed=0)
    # chance is 0.5; the test trials (12, of the two speakers whose timbres this generator separates least) score
    # coarser than dev
    assert r.dev_metric < 0.25 and r.test_metric < 0.5, (r.dev_metric, r.test_metric)
    again = train_probe(task, LayerMode("last"), src, labels, list(range(24)), len(trial_corpus.speakers), cfg, seed=0)
    assert (again.dev_metric, again.test_metric, again.steps) == (r.dev_metric, r.test_metric, r.steps)
    assert not task.finetunable and not task.pooled and task.metric is EER


def test_speaker_verification_without_trial_speakers_names_the_file(tmp_path):
    corpus = make_tiny_corpus(tmp_path / "c")
    with pytest.raises(ValueError, match=r"task speaker_verification: .*trials\.jsonl: missing: corpus 'tiny' has no "
                                         r"held-out trial speakers"):
        get_task("speaker_verification").check(corpus)


def _fields(r):
    return (r.dev_metric, r.test_metric, r.best_step, r.steps, r.converged, tuple(r.layer_weights or ()))


def test_utterance_probes_of_a_sweep_train_as_one_group_with_the_results_of_each_alone(tiny, trial_corpus, mel):  # noqa: F811
    """The CTC and verification probes of a sweep (fractions x seeds) train together: each probe's row is exactly
    its row trained alone, whether the frames are held in memory or read from the cache for every batch."""
    from downstream.probe import ProbeSpec
    from downstream.train import train_probes
    from upstream.registry import build_upstream

    up = build_upstream("mockingjay_random:small", feature=mel.feature_cfg).eval()
    ctc, ver = get_task("phone_ctc"), get_task("speaker_verification")
    cases = [(ctc, array_source(up, tiny), _labels(tiny, ctc), len(phone_classes(tiny)),
              ProbeConfig(Minibatch(AdamW(lr=3e-2), batch_size=4, min_eval_steps=3),
                          patience=2, max_steps=40), list(range(24))),
             (ver, *_source_of(mel, trial_corpus, ver), len(trial_corpus.speakers),
              ProbeConfig(Minibatch(AdamW(lr=1e-2), batch_size=8, min_eval_steps=3),
                          patience=2, max_steps=40), list(range(24)))]
    for task, src, labels, n_cls, cfg, idx in cases:
        specs = [ProbeSpec(tuple(idx), 0), ProbeSpec(tuple(idx[::3]), 1), ProbeSpec(tuple(idx), 2)]
        mode = LayerMode("weighted_sum" if src.num_hidden_states > 1 else "last")
        group = train_probes(task, mode, src, labels, specs, n_cls, cfg)
        streamed = train_probes(task, mode, src, labels, specs, n_cls, cfg, memory=0)
        for spec, g, s in zip(specs, group, streamed):
            alone = train_probes(task, mode, src, labels, [spec], n_cls, cfg)[0]
            assert _fields(g) == _fields(alone) == _fields(s), (task.name, spec.seed)
        for a, b in ((0, 1), (0, 2)):  # three different probes (subset, seed), not one result copied
            assert any(not torch.equal(group[a].state[k], group[b].state[k]) for k in group[a].state)


def test_ctc_padding_is_pad_sequence_with_one_gather():
    """downstream.ctc.padded gives pad_sequence's tensor and the same gradient (one scatter, not a copy per utterance)."""
    from torch.nn.utils.rnn import pad_sequence

    from downstream.ctc import padded

    lengths = torch.tensor([5, 1, 3])
    rows = torch.randn(9, 4, generator=torch.Generator().manual_seed(0))
    w = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(1))
    grads = []
    for pad in (lambda r: padded(r, lengths), lambda r: pad_sequence(list(torch.split(r, [5, 1, 3])), batch_first=True)):
        x = rows.clone().requires_grad_(True)
        out = pad(x)
        (out * w).sum().backward()
        grads.append((out.detach(), x.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
