"""Bad audio input: resampling, down-mixing, skipped empty/short files, clear errors naming the file."""
import numpy as np
import pytest
import soundfile as sf
import torch

from core.audio import AudioError, load_audio
from pretrain.data import load_features, resolve_source
from upstream.features import FeatureConfig

FEAT = FeatureConfig(norm="utterance")


def tone(sr, seconds=0.5, f=440.0):
    t = np.arange(int(sr * seconds)) / sr
    return (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)


def test_other_rates_are_resampled(tmp_path):
    sf.write(tmp_path / "a.wav", tone(8000), 8000)
    sf.write(tmp_path / "b.flac", tone(22050), 22050)
    a, b = load_audio(tmp_path / "a.wav"), load_audio(tmp_path / "b.flac")
    assert a.shape == (8000,) and abs(b.shape[0] - 8000) <= 1
    spec = torch.fft.rfft(a).abs()
    assert abs(int(spec.argmax()) * 16000 / a.shape[0] - 440) < 5  # the pitch survives resampling


def test_multichannel_is_downmixed(tmp_path):
    left, right = tone(16000), tone(16000, f=880.0)
    sf.write(tmp_path / "st.wav", np.stack([left, right], 1), 16000, subtype="FLOAT")
    torch.testing.assert_close(load_audio(tmp_path / "st.wav"), torch.from_numpy((left + right) / 2))


def test_nan_and_unreadable_files_name_the_file(tmp_path):
    x = tone(16000)
    x[100] = np.nan
    sf.write(tmp_path / "nan.wav", x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav holds 1 NaN/inf"):
        load_audio(tmp_path / "nan.wav")
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x00\x00garbage")
    with pytest.raises(AudioError, match=r"junk\.wav"):
        load_audio(tmp_path / "junk.wav")
    with pytest.raises(AudioError, match=r"missing\.wav"):
        load_audio(tmp_path / "missing.wav")


def test_pretraining_skips_empty_and_short_files_and_counts_them(tmp_path, caplog):
    d = tmp_path / "audio"
    d.mkdir()
    sf.write(d / "ok1.wav", tone(16000, 1.0), 16000)
    sf.write(d / "ok2.wav", tone(44100, 1.0), 44100)
    sf.write(d / "empty.wav", np.zeros(0, np.float32), 16000)
    sf.write(d / "short.wav", tone(16000, 0.1), 16000)
    src = resolve_source(d)
    assert len(src.paths) == 4
    feats, skipped = load_features(src.paths, FEAT, min_frames=50)
    assert len(feats) == 2 and skipped == {"empty": 1, "too_short": 1}
    assert "skipped 1 empty and 1 too-short" in caplog.text
    assert {f.shape[0] for f in feats} == {101}
    (tmp_path / "list.txt").write_text("audio/ok1.wav\naudio/nan.wav\n")
    x = tone(16000)
    x[5] = np.inf
    sf.write(d / "nan.wav", x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav"):
        load_features(resolve_source(tmp_path / "list.txt").paths, FEAT, min_frames=50)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        resolve_source(tmp_path / "nowhere")
