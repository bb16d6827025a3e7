import torch

from core.frames import LOG_MEL
from upstream.features import FeatureConfig, LogMelFrontend, corpus_stats


def _batch():
    g = torch.Generator().manual_seed(0)
    wavs = torch.randn(3, 16000, generator=g) * 0.1
    lengths = torch.tensor([16000, 9001, 4000])
    return wavs, lengths


def test_frame_count_matches_frame_arithmetic():
    fe = LogMelFrontend(FeatureConfig(norm="none"))
    wavs, lengths = _batch()
    x, fl = fe(wavs, lengths)
    assert fl.tolist() == [1 + int(n) // 160 for n in lengths] == LOG_MEL.num_frames_tensor(lengths).tolist()
    assert x.shape == (3, LOG_MEL.num_frames(16000), 80)


def test_batched_equals_one_by_one_for_every_option():
    wavs, lengths = _batch()
    stats = corpus_stats(FeatureConfig(deltas=True, norm="none"), [wavs[0]])
    for cfg in [FeatureConfig(norm="none"), FeatureConfig(norm="utterance", deltas=True, downsample=3),
                FeatureConfig(deltas=True).with_stats(*stats)]:
        fe = LogMelFrontend(cfg)
        x, fl = fe(wavs, lengths)
        for i, n in enumerate(lengths.tolist()):
            xi, fli = fe(wavs[i : i + 1, :n], lengths[i : i + 1])
            assert fli.item() == fl[i].item()
            torch.testing.assert_close(x[i, : fl[i]], xi[0], atol=1e-5, rtol=1e-5)
            assert x[i, fl[i]:].abs().sum() == 0  # padding stays zero


def test_level_scaling_makes_gain_irrelevant_and_floor_applies():
    fe = LogMelFrontend(FeatureConfig(norm="none"))
    wavs, lengths = _batch()
    a, _ = fe(wavs[:1], lengths[:1])
    b, _ = fe(wavs[:1] * 7.0, lengths[:1])
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    z, _ = fe(torch.zeros(1, 1600), torch.tensor([1600]))
    assert torch.allclose(z, torch.full_like(z, float(torch.log(torch.tensor(1e-10)))))


def test_utterance_cmvn_erases_speaker_offset_but_corpus_norm_keeps_it():
    g = torch.Generator().manual_seed(1)
    low = torch.randn(1, 8000, generator=g) * 0.1
    # a crude "other speaker": same noise through a strong low-pass, so the mean spectrum differs
    high = torch.nn.functional.avg_pool1d(low[None], 9, 1, 4)[0]
    cfg = FeatureConfig(norm="none")
    mean, std = corpus_stats(cfg, [low[0], high[0]])
    lens = torch.tensor([8000])
    utt = LogMelFrontend(FeatureConfig(norm="utterance"))
    cor = LogMelFrontend(FeatureConfig().with_stats(mean, std))
    gap_utt = (utt(low, lens)[0].mean(1) - utt(high, lens)[0].mean(1)).abs().max()
    gap_cor = (cor(low, lens)[0].mean(1) - cor(high, lens)[0].mean(1)).abs().max()
    assert gap_utt < 1e-4 < 0.5 < gap_cor


def test_corpus_norm_without_stats_is_a_clear_error():
    fe = LogMelFrontend(FeatureConfig(norm="corpus"))
    wavs, lengths = _batch()
    try:
        fe(wavs, lengths)
    except ValueError as e:
        assert "norm_mean" in str(e)
    else:
        raise AssertionError("expected ValueError")


def test_corpus_stats_are_rounded_so_last_bit_noise_does_not_change_the_config():
    wavs, lengths = _batch()
    cfg = FeatureConfig(norm="none")
    mean, std = corpus_stats(cfg, [wavs[0]])
    # ~1 ulp of float32 noise on the audio's spectrum (what another thread count gives) leaves the stats as they were
    noise = 1e-6 * wavs[0].abs().max() * torch.randn(wavs[0].shape, generator=torch.Generator().manual_seed(0))
    mean2, std2 = corpus_stats(cfg, [wavs[0] + noise])
    assert torch.equal(mean, mean2) and torch.equal(std, std2)
    assert torch.equal(mean, mean.double().round(decimals=4).float())
