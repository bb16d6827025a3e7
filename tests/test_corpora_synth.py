"""Built-in eSpeak corpus: phone mapping coverage, silence fix, determinism, idempotency, splits."""
import hashlib
import random
from pathlib import Path

import numpy as np
import pytest

from corpora import ensure_default_corpus, load_corpus, prepare_corpus
from corpora.labels import frame_labels
from corpora.synth import signal
from corpora.synth.build import SynthConfig, quick_config
from corpora.trials import read_trials
from corpora.synth.espeak import ESpeak
from corpora.synth.phones import CLASSES, to_class
from corpora.synth.text import all_words, sentence

TINY = dict(probe_speakers=3, train_per_speaker=8, dev_per_speaker=1, test_per_speaker=1, pretrain_speakers=2,
            pretrain_hours=0.004, trial_speakers=4, trial_per_speaker=2)


def test_every_grammar_word_maps_to_a_class():
    es = ESpeak()
    words = all_words()
    seen = set()
    for w in random.Random(0).sample(words, 120):
        _, events = es.synth(w)
        seen.update(to_class(p) for p, _ in events)  # KeyError on an unmapped phoneme
    assert seen <= set(CLASSES) and len(seen) > 30


def test_unknown_phoneme_raises_with_its_name():
    with pytest.raises(KeyError, match="zz9"):
        to_class("zz9")
    assert to_class("'aI") == "ay" and to_class("_:") == "sil"


def test_silence_fix_relabels_zero_runs_inside_a_phone():
    sr = 22050
    wav = np.ones(2000, np.int16)
    wav[500:900] = 0  # 18 ms of digital silence at the end of "p"'s interval (a stop closure)
    wav[1500:1600] = 0  # 4.5 ms: too short, stays
    segs = signal.event_segments(wav, [("s", 100), ("p", 300), ("'a", 900)], sr)
    assert segs == [("sil", 0, 100), ("s", 100, 300), ("p", 300, 500), ("sil", 500, 900), ("ae", 900, 2000)]


def test_resampled_segments_stay_contiguous_and_cover_the_audio():
    segs = [("sil", 0, 100), ("s", 100, 333), ("ae", 333, 22050)]
    out = signal.resample_segments(segs, 22050, 16000, 16000)
    assert out[0][1] == 0 and out[-1][2] == 16000
    assert all(a[2] == b[1] for a, b in zip(out, out[1:]))


def test_sentences_are_deterministic_and_in_range():
    a = [sentence(random.Random(3)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    r = random.Random(1)
    assert all(8 <= len(sentence(r).split()) <= 15 for _ in range(50))


def _digest(root: Path, skip=lambda p: False) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "corpus.json" and not skip(p.relative_to(root)):  # corpus.json: the build time
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "c"
    return prepare_corpus("synth", root, workers=2, progress=False, **TINY)


def test_synth_corpus_is_deterministic_and_idempotent(tiny, tmp_path):
    other = prepare_corpus("synth", tmp_path / "c2", workers=1, progress=False, **TINY)
    assert _digest(tiny.root) == _digest(other.root)  # byte-identical audio and labels, any worker count
    mtime = (tiny.root / "corpus.json").stat().st_mtime_ns
    again = prepare_corpus("synth", tiny.root, workers=2, progress=False, **TINY)
    assert (tiny.root / "corpus.json").stat().st_mtime_ns == mtime and again.info == tiny.info
    changed = prepare_corpus("synth", tmp_path / "c3", workers=2, progress=False, **{**TINY, "seed": 1})
    assert _digest(changed.root) != _digest(tiny.root)


def test_trial_speakers_add_files_and_change_none(tiny, tmp_path):
    """The held-out trial speakers are synthesised last: without them (the config of a corpus prepared before they
    existed) every other file is the same bytes; with them only trials.jsonl, trials.txt and their audio are added."""
    without = prepare_corpus("synth", tmp_path / "c0", workers=2, progress=False, **{**TINY, "trial_speakers": 0})
    assert "trial_speakers" not in without.info["config"] and not (without.root / "trials.jsonl").exists()
    trial_files = lambda p: p.name.startswith("trials.") or p.parts[:2] in {("audio", "t000"), ("audio", "t001"),  # noqa: E731
                                                                            ("audio", "t002"), ("audio", "t003")}
    assert _digest(tiny.root, trial_files) == _digest(without.root)
    utts, trials = read_trials(tiny)
    assert [len(utts[s]) for s in ("dev", "test")] == [4, 4]  # 2 speakers x 2 utterances per trial split
    for s in ("dev", "test"):
        assert not {u.speaker for u in utts[s]} & set(tiny.speakers)
        assert sum(t.same for t in trials[s]) == sum(not t.same for t in trials[s]) == 2  # balanced
    assert tiny.info["trials"]["test"] == {"utterances": 4, "speakers": 2, "target": 2, "nontarget": 2}
    with pytest.raises(ValueError, match=r"trials\.jsonl: missing: corpus 'synth' has no held-out trial speakers"):
        read_trials(without)


def test_synth_splits_speakers_and_labels(tiny):
    c = load_corpus(tiny.root)
    tr, dv, te, pre = (c.utterances(s) for s in ("train", "dev", "test", "pretrain"))
    probe = {u.speaker for u in tr}
    assert {u.speaker for u in dv} == {u.speaker for u in te} == probe == set(c.speakers)
    assert not probe & {u.speaker for u in pre} and pre
    assert set(c.phones) <= set(CLASSES) and "sil" in c.phones
    idx = {p: i for i, p in enumerate(c.phones)}
    for u in tr[:3]:
        assert u.sample_rate == 16000 and not Path(u.path).is_absolute()
        assert c.audio_path(u).is_file()
        lab = frame_labels(u, idx)
        assert len(lab) == 1 + u.num_samples // 160 and len(set(lab.tolist())) > 5


def test_config_mismatch_and_unknown_options(tiny, tmp_path):
    with pytest.raises(ValueError, match="different config"):
        prepare_corpus("synth", tiny.root, workers=1, progress=False, **{**TINY, "seed": 5})
    with pytest.raises(ValueError, match="unknown keys"):
        prepare_corpus("synth", tmp_path / "x", speakers=3)
    with pytest.raises(ValueError, match="valid names"):
        prepare_corpus("nope", tmp_path / "x")
    with pytest.raises(ValueError, match="probe_speakers"):
        SynthConfig(probe_speakers=0)


def test_quick_config_is_small():
    q = quick_config()
    assert q.probe_speakers >= 30 and q.pretrain_hours * 60 >= 10 - 1e-9
    d = SynthConfig()
    assert d.probe_speakers >= 100 and d.pretrain_hours >= 2


def test_ensure_default_corpus_uses_existing(tmp_path, monkeypatch):
    import corpora.registry as reg

    calls = []

    def fake(out, cfg, workers, progress, force=False):
        calls.append((Path(out).name, cfg, force))
        return "corpus"

    monkeypatch.setattr(reg, "prepare_synth_config", fake)
    assert ensure_default_corpus(tmp_path, quick=True) == "corpus"
    assert calls[0][0] == "synth_quick" and calls[0][1] == quick_config()
    ensure_default_corpus(tmp_path)
    assert calls[1][0] == "synth" and calls[1][1] == SynthConfig()


def test_the_built_in_keyword_corpus_is_built_on_demand_in_its_own_folder(tmp_path, monkeypatch):
    """The main job's keyword spotting asks for `synth_keywords` by name: built into data/synth_keywords when missing
    (one folder, --quick or not), rebuilt when an older generator left another config there; a dry run builds nothing."""
    import corpora.registry as reg
    from benchmark.inputs.corpus import check_corpus, resolve_corpus
    from corpora.build import ConfigMismatch

    calls = []

    def fake(out, workers, progress, force=False):
        calls.append((Path(out).name, force))
        if not force and len(calls) == 3:
            raise ConfigMismatch("older generator")
        return "keywords corpus"

    monkeypatch.setattr(reg, "prepare_synth_keywords", fake)
    check_corpus("synth_keywords", tmp_path, quick=False)  # planning: built on demand, nothing to check yet
    assert resolve_corpus("synth_keywords", tmp_path, quick=False, prepare=False) is None and calls == []
    assert resolve_corpus("synth_keywords", tmp_path, quick=False) == "keywords corpus"
    assert resolve_corpus("synth_keywords", tmp_path, quick=True) == "keywords corpus"
    assert reg.ensure_builtin("synth_keywords", tmp_path) == "keywords corpus"
    assert calls == [("synth_keywords", False)] * 3 + [("synth_keywords", True)]
    with pytest.raises(ValueError, match="'mine' is not a built-in corpus"):
        reg.builtin_dir("mine", tmp_path)


def test_resolve_corpus_passes_no_progress_to_the_build(tmp_path, monkeypatch):
    """`run_benchmark.py --no-progress` must silence the built-in corpus's progress bars too (logs on disk)."""
    import corpora.registry as reg
    from benchmark.inputs.corpus import resolve_corpus

    seen = []
    monkeypatch.setattr(reg, "prepare_synth_config", lambda out, cfg, workers, progress, force=False: seen.append(progress))
    resolve_corpus("synth", tmp_path, quick=True, progress=False)
    resolve_corpus("synth", tmp_path, quick=True)
    assert seen == [False, True]


def _f0(wav: np.ndarray, sr: int) -> float:
    x = wav.astype(np.float64)
    spec = np.fft.rfft(x, 2 * len(x))
    ac = np.fft.irfft(spec * np.conj(spec))[: len(x)]
    lo, hi = sr // 400, sr // 50
    return sr / (lo + int(np.argmax(ac[lo:hi])))


def test_generated_voices_are_really_used(tmp_path):
    """A voice file that failed to load would silently give the default voice: its pitch must show."""
    import dataclasses

    from corpora.synth.voices import sample_voice, voice_file_text

    es = ESpeak()
    f0 = []
    for k, (lo, hi) in enumerate(((70, 78), (240, 250))):
        v = dataclasses.replace(sample_voice(f"v{k}", random.Random(k)), pitch_base=lo, pitch_top=hi)
        vf = tmp_path / f"v{k}"
        vf.write_text(voice_file_text(v))
        es.set_voice_file(vf)
        f0.append(_f0(es.synth("Hello, we are all here all along.")[0], es.sample_rate))
    assert f0[0] < 110 < 180 < f0[1], f0
    with pytest.raises(Exception, match="could not load voice file"):
        es.set_voice_file(tmp_path / "missing")


def test_a_built_in_corpus_from_an_older_generator_is_rebuilt_not_read(tmp_path, monkeypatch):
    """data/synth is the toolkit's own folder: one left by an older generator version (another config, e.g. before
    trial speakers existed) is rebuilt by a run, and a dry run plans as for a corpus still to be built, instead of
    reading the old one and leaving out the tasks it cannot serve."""
    import corpora.registry as reg
    from benchmark.inputs.corpus import resolve_corpus
    from tests.fixtures import make_tiny_corpus

    make_tiny_corpus(tmp_path / "synth_quick")  # a prepared corpus, not the one the generator makes
    assert reg.current_builtin("synth", tmp_path, quick=True) is None
    built = []

    def fake(out, cfg, workers, progress, force=False):  # as the real one: refuses a folder of another config
        built.append(force)
        if not force:
            raise reg.ConfigMismatch(f"{out} already holds a corpus prepared with a different config")
        return "rebuilt"

    monkeypatch.setattr(reg, "prepare_synth_config", fake)
    assert resolve_corpus("synth", tmp_path, quick=True, prepare=False) is None
    assert built == []
    assert resolve_corpus("synth", tmp_path, quick=True) == "rebuilt"
    assert built == [False, True]
