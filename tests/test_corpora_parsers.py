"""Property-based tests of the alignment parsers, and the frame-label rule at boundaries."""
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corpora.alignments import parse_alignment, parse_lab, parse_phn, parse_textgrid
from core.frames import conv_rule, stft_rule
from corpora.labels import frame_labels
from corpora.manifest import Segment, Utterance, read_manifest

SR = 16000
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyzAEIOU@:#", min_size=1, max_size=4)


@st.composite
def segments(draw):
    n = draw(st.integers(1, 12))
    cuts = sorted(draw(st.sets(st.integers(0, 80_000), min_size=n + 1, max_size=n + 1)))
    return [Segment(draw(labels), a, b) for a, b in zip(cuts, cuts[1:])]


def _textgrid_long(segs, sr):
    items = "".join(f'        intervals [{i}]:\n            xmin = {s.start / sr!r}\n            xmax = {s.end / sr!r}\n'
                    f'            text = "{s.phone}"\n' for i, s in enumerate(segs, 1))
    end = segs[-1].end / sr
    return (f'File type = "ooTextFile"\nObject class = "TextGrid"\n\nxmin = 0\nxmax = {end!r}\ntiers? <exists>\n'
            f'size = 1\nitem []:\n    item [1]:\n        class = "IntervalTier"\n        name = "phones"\n'
            f'        xmin = 0\n        xmax = {end!r}\n        intervals: size = {len(segs)}\n' + items)


def _textgrid_short(segs, sr):
    end = segs[-1].end / sr
    body = "".join(f'{s.start / sr!r}\n{s.end / sr!r}\n"{s.phone}"\n' for s in segs)
    return (f'File type = "ooTextFile"\nObject class = "TextGrid"\n\n0\n{end!r}\n<exists>\n2\n'
            f'"TextTier"\n"marks"\n0\n{end!r}\n1\n0.5\n"m"\n'
            f'"IntervalTier"\n"phones"\n0\n{end!r}\n{len(segs)}\n' + body)


@FAST
@given(segs=segments())
def test_textgrid_roundtrip_both_formats(tmp_path, segs):
    for i, make in enumerate((_textgrid_long, _textgrid_short)):
        p = tmp_path / f"x{i}.TextGrid"
        p.write_text(make(segs, SR))
        assert parse_textgrid(p, SR) == segs
        assert parse_alignment(p, SR) == segs


@FAST
@given(segs=segments())
def test_lab_and_phn_roundtrip(tmp_path, segs):
    lab = tmp_path / "x.lab"
    lab.write_text("".join(f"{s.start / SR!r} {s.end / SR!r} {s.phone}\n" for s in segs))
    assert parse_lab(lab, SR) == segs
    htk = tmp_path / "h.lab"
    htk.write_text("".join(f"{s.start * 625} {s.end * 625} {s.phone}\n" for s in segs))  # 100 ns ticks at 16 kHz
    assert parse_lab(htk, SR, units="htk") == segs
    phn = tmp_path / "x.PHN"
    phn.write_text("".join(f"{s.start} {s.end} {s.phone}\n" for s in segs))
    assert [s for s, _ in parse_phn(phn)] == segs


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=300), st.sampled_from(["1 2", "0 1 a\n1 x b", '"ooTextFile" "TextGrid" 0 1 <exists> 9'])))
def test_parsers_reject_garbage_with_value_error_only(tmp_path, text):
    for name in ("g.TextGrid", "g.lab", "g.PHN"):
        p = tmp_path / name
        p.write_text(text, encoding="utf-8")
        try:
            out = parse_alignment(p, SR)
        except ValueError as e:
            assert str(p) in str(e)  # the message names the file
        else:
            assert all(isinstance(s, Segment) for s in out)


@FAST
@given(lines=st.lists(st.one_of(st.text(max_size=40), st.dictionaries(st.sampled_from(["id", "path", "speaker", "split",
       "sample_rate", "num_samples", "alignment"]), st.one_of(st.integers(), st.text(max_size=5), st.none()))),
       max_size=5))
def test_manifest_reader_reports_file_and_line(tmp_path, lines):
    p = tmp_path / "m.jsonl"
    p.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)).replace("\n", " ") + "\n" for ln in lines))
    try:
        read_manifest(p)
    except ValueError as e:
        assert str(p) + ":" in str(e)


def test_textgrid_errors_name_file_and_line(tmp_path):
    p = tmp_path / "bad.TextGrid"
    p.write_text('File type = "ooTextFile"\nObject class = "TextGrid"\nxmin = 0\nxmax = 1\ntiers? <exists>\nsize = 1\n'
                 'item []:\n  item [1]:\n    class = "IntervalTier"\n    name = "phones"\n    xmin = 0\n    xmax = 1\n'
                 '    intervals: size = 1\n    intervals [1]:\n      xmin = "oops"\n')
    with pytest.raises(ValueError, match=r"bad.TextGrid:15: expected a number"):
        parse_textgrid(p, SR)
    with pytest.raises(ValueError, match="no interval tier named 'words'"):
        p.write_text(_textgrid_long([Segment("a", 0, 160)], SR))
        parse_textgrid(p, SR, tier="words")


def _utt(segs, n):
    return Utterance("u", "u.wav", SR, n, "s", "train", tuple(segs))


def test_frame_label_rule_at_boundaries():
    # frame j is centred on sample 160 j; it takes the segment containing that sample (end exclusive)
    idx = {"a": 0, "b": 1, "c": 2}
    lab = frame_labels(_utt([Segment("a", 0, 320), Segment("b", 320, 321), Segment("c", 321, 800)], 800), idx)
    assert lab.tolist() == [0, 0, 1, 2, 2, 2]  # centre 320 is the first sample of "b": b wins at its start
    lab = frame_labels(_utt([Segment("a", 0, 319), Segment("c", 330, 800)], 800), idx)
    assert lab[2] == 0  # centre 320 falls in a gap 319..329: nearest segment ("a" ends at 318, 2 away; "c" 10 away)
    lab = frame_labels(_utt([Segment("a", 0, 316), Segment("c", 325, 800)], 800), idx)
    assert lab[2] == 0  # equidistant (last sample 315 and first sample 325): ties go to the earlier segment
    lab = frame_labels(_utt([Segment("a", 0, 315), Segment("c", 325, 800)], 800), idx)
    assert lab[2] == 2  # one sample closer to "c"
    lab = frame_labels(_utt([Segment("b", 200, 500)], 800), idx)
    assert lab.tolist() == [1] * 6  # before the first / after the last segment: the nearest one
    assert len(frame_labels(_utt([Segment("a", 0, 800)], 800), idx, stft_rule(stack=3))) == (1 + 800 // 160) // 3


def test_frame_labels_match_front_end_frame_count():
    import torch

    from upstream.features import FeatureConfig, LogMelFrontend

    fe = LogMelFrontend(FeatureConfig(norm="none"))
    for n in (399, 400, 1600, 1759):
        u = _utt([Segment("a", 0, n)], n)
        assert len(frame_labels(u, {"a": 0})) == fe.unnormalized(torch.zeros(n) + 0.01).shape[0]
    lab8 = frame_labels(Utterance("u", "u.wav", 8000, 800, "s", "train", (Segment("a", 0, 400), Segment("b", 400, 800))),
                        {"a": 0, "b": 1})
    assert lab8.tolist() == [0] * 5 + [1] * 6  # 8 kHz audio: frames of its 16 kHz resampling, boundary at 0.05 s


def test_frame_labels_follow_any_frame_rule():
    """Stacked 30-ms log-mel frames and 20-ms wav2vec 2.0 frames (400-sample receptive field): the label of frame t is
    the phone at its centre, whatever the hop; boundary at 0.5 s (sample 8000 at 16 kHz, 11025 at 22.05 kHz)."""
    w2v = conv_rule([(10, 5)] + [(3, 2)] * 4 + [(2, 2)] * 2)
    cases = [(stft_rule(), 0.0, 160), (stft_rule(stack=3), 160.0, 480), (w2v, 199.5, 320)]
    for sr in (16000, 22050):
        n = sr  # one second
        u = Utterance("u", "u.wav", sr, n, "s", "train", (Segment("a", 0, n // 2), Segment("b", n // 2, n)))
        for rule, first, shift in cases:
            lab = frame_labels(u, {"a": 0, "b": 1}, rule)
            assert len(lab) == rule.num_frames(16000)
            centres = first + shift * np.arange(len(lab))  # in 16-kHz samples
            assert lab.tolist() == (centres * sr / 16000 >= n // 2).astype(int).tolist(), (sr, rule)
    assert w2v.num_frames(16000) == 49 and w2v.num_frames(399) == 0 and w2v.num_frames(400) == 1
    assert stft_rule(stack=3).num_frames(16000) == 33


def test_frames_of_resampled_audio_are_counted_as_loaded():
    """Frame counts of non-16 kHz audio come from the length torchaudio's resampler gives (ceil), not a rounding:
    at 22.05 kHz half of the lengths round down, and one sample decides a frame at every hop boundary."""
    import torch
    import torchaudio.functional as AF

    from core.frames import resampled_length

    for sr in (8000, 22050, 44100, 48000):
        for n in range(sr // 2, sr // 2 + 400, 13):
            assert resampled_length(n, sr, 16000) == AF.resample(torch.zeros(n), sr, 16000).numel(), (sr, n)
    n = 22052  # 16001.45... samples at 16 kHz: rounding says 16001, torchaudio gives 16002
    assert resampled_length(n, 22050, 16000) == 16002 and round(n * 16000 / 22050) == 16001
    assert stft_rule(hop=2).num_frames_of(n, 22050) == 1 + 16002 // 2
