"""Attention statistics on hand-made maps, and the analysis CLI end to end on tiny random-init models."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from analysis.attention import analyse, main
from analysis.attention_stats import head_stats
from upstream.checkpoint import save_checkpoint
from upstream.features import FeatureConfig
from upstream.interface import TransformerUpstream
from upstream.transformer import EncoderConfig

FEAT = FeatureConfig(norm="utterance")
TINY = dict(hidden_size=32, num_heads=2, intermediate_size=64, num_layers=2)


def _wav(seconds: float, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(int(16000 * seconds)).astype(np.float32) * 0.1)


def test_stats_of_identity_and_uniform_attention():
    n = 7
    eye = torch.eye(n)[None, None]  # (1, 1, n, n)
    s = head_stats(eye, torch.tensor([n]))
    assert s["mean_distance_frames"].item() == pytest.approx(0) and s["entropy_nats"].item() == pytest.approx(0)
    assert s["diag_share"].item() == pytest.approx(1) and s["neighbour_share"].item() == pytest.approx(0)
    uni = torch.full((1, 1, n, n), 1 / n)
    s = head_stats(uni, torch.tensor([n]))
    assert s["entropy_nats"].item() == pytest.approx(math.log(n), rel=1e-5)
    assert s["mean_distance_frames"].item() == pytest.approx((n * n - 1) / (3 * n), rel=1e-5)
    assert s["mean_distance_frames"].item() == pytest.approx(s["uniform_distance_frames"].item(), rel=1e-5)
    assert s["diag_share"].item() == pytest.approx(1 / n) and s["neighbour_share"].item() == pytest.approx(12 / n / n)


def test_stats_ignore_padding():
    torch.manual_seed(0)
    model = TransformerUpstream(FEAT, EncoderConfig(**TINY)).eval()
    a, b = _wav(0.5, 0), _wav(0.3, 1)
    wavs = torch.zeros(2, len(a))
    wavs[0], wavs[1, : len(b)] = a, b
    with torch.inference_mode():
        w_batch, len_batch = model.attention(wavs, torch.tensor([len(a), len(b)]))
        w_one, len_one = model.attention(b[None], torch.tensor([len(b)]))
    for wb, wo in zip(w_batch, w_one):
        sb, so = head_stats(wb, len_batch), head_stats(wo, len_one)
        for k in so:
            assert torch.allclose(sb[k][1], so[k][0], atol=1e-4), k


def test_analyse_writes_maps_and_stats(tmp_path):
    torch.manual_seed(0)
    models = {"mj": TransformerUpstream(FEAT, EncoderConfig(**TINY)),
              "al": TransformerUpstream(FEAT, EncoderConfig(**TINY, share_layers=True))}
    utts = [(f"u{i}", _wav(0.4 + 0.1 * i, i)) for i in range(3)]
    summary = analyse(models, utts[0][1], utts, tmp_path)
    for name in ("attention_maps.png", "attention_stats.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    table = pd.read_csv(tmp_path / "attention_stats.csv")
    assert len(table) == len(summary) == 4 and set(table["model"]) == {"mj", "al"}
    assert (table["n_utts"] == 3).all() and (table["n_heads"] == 2).all()
    assert (table["entropy_nats"] <= table["uniform_entropy_nats"] + 1e-5).all()  # uniform is the maximum
    assert np.allclose(table["mean_distance_ms"], table["mean_distance_frames"] * 10)
    per_head = pd.read_csv(tmp_path / "attention_stats_per_head.csv")
    assert len(per_head) == 2 * 2 * 2 * 3  # models x layers x heads x utterances
    assert (tmp_path / "attention_stats.md").read_text().startswith("| model | layer |")


def test_cli_with_checkpoint_and_spec(tmp_path, capsys):
    torch.manual_seed(0)
    enc = EncoderConfig(**TINY)
    model = TransformerUpstream(FEAT, enc)
    ckpt = save_checkpoint(tmp_path / "ckpt", {"model": {"encoder." + k: v for k, v in model.encoder.state_dict().items()}},
                           {"upstream": "mockingjay", "encoder": enc.to_dict(), "feature": FEAT.to_dict()})
    sf.write(tmp_path / "a.wav", _wav(0.4, 3).numpy(), 16000)
    out = tmp_path / "out"
    rc = main(["--ckpt", f"tiny={ckpt}", "--upstream", "aalbert_random", "--audio", str(tmp_path / "a.wav"),
               "--out", str(out)])
    assert rc == 0
    table = pd.read_csv(out / "attention_stats.csv")
    assert set(table["model"]) == {"tiny", "aalbert_random"}
    assert "analysis.attention" in (out / "command.txt").read_text()


def test_cli_errors_name_the_argument(tmp_path, capsys):
    assert main(["--upstream", "mockingjay_random", "--audio", str(tmp_path / "missing.wav"), "--out", str(tmp_path)]) == 2
    assert "missing.wav" in capsys.readouterr().err
    sf.write(tmp_path / "a.wav", _wav(0.2, 0).numpy(), 16000)
    assert main(["--ckpt", "nopath", "--audio", str(tmp_path / "a.wav"), "--out", str(tmp_path)]) == 2
    assert "NAME=CKPT_DIR" in capsys.readouterr().err
    assert main(["--upstream", "mel", "--audio", str(tmp_path / "a.wav"), "--out", str(tmp_path)]) == 2
    assert "no self-attention" in capsys.readouterr().err


def test_cli_samples_a_corpus(tmp_path):
    from corpora.manifest import Utterance, write_corpus_info, write_manifest

    root = tmp_path / "corpus"
    (root / "wav").mkdir(parents=True)
    utts = []
    for i in range(4):
        wav = _wav(0.3 + 0.05 * i, 10 + i).numpy()
        sf.write(root / "wav" / f"u{i}.wav", wav, 16000)
        utts.append(Utterance(id=f"u{i}", path=f"wav/u{i}.wav", sample_rate=16000, num_samples=len(wav),
                              speaker="s0", split="test"))
    write_manifest(root / "test.jsonl", utts)
    write_corpus_info(root, "tiny", ["a"], ["s0"], {})
    out = tmp_path / "out"
    rc = main(["--upstream", "aalbert_random", "--audio", str(root / "wav" / "u0.wav"), "--corpus", str(root),
               "--n", "3", "--out", str(out)])
    assert rc == 0
    per_head = pd.read_csv(out / "attention_stats_per_head.csv")
    assert per_head["utt"].nunique() == 3 and set(per_head["utt"]) <= {f"u{i}" for i in range(4)}
    assert main(["--upstream", "aalbert_random", "--audio", str(root / "wav" / "u0.wav"), "--corpus", str(root),
                 "--split", "train", "--out", str(out)]) == 2
