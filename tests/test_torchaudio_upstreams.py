"""torchaudio upstreams (wav2vec 2.0, HuBERT, WavLM): torchaudio's own outputs, local weights only, the two torchaudio
behaviours the adapter works around, bad files, and a benchmark run whose phone labels follow 20-ms frames."""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import pandas as pd
import pytest
import torch

from benchmark.cache.extract import ensure_split
from benchmark.cli import main
from benchmark.plan.config import BenchmarkConfig
from benchmark.record.results import RUNS_FILE, read_rows
from benchmark.report.convergence import cached_frames
from benchmark.run import runner
from core.io import read_json
from downstream.config import ProbeConfig
from tests.fixtures import make_tiny_corpus
from upstream.checkpoint import CheckpointError
from upstream.registry import build_upstream, upstream_identity
from upstream.torchaudio_models import PRESETS


def wav_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([16000, 8000])
    wavs = 0.1 * torch.randn(2, 16000, generator=g)
    wavs[1, 8000:] = 0
    return wavs, lengths


def saved_tiny(path: Path, family: str, seed: int = 5) -> Path:
    torch.manual_seed(seed)
    model = PRESETS[family]["tiny"].build()
    torch.save({k: v + 0.02 * torch.randn_like(v) for k, v in model.state_dict().items()}, path)
    return path


@pytest.mark.parametrize("family", ["wav2vec2", "hubert", "wavlm"])
def test_weights_from_a_local_file_give_torchaudios_own_features(tmp_path, family):
    pth = saved_tiny(tmp_path / f"{family}.pth", family)
    up = build_upstream(f"{family}_base:tiny", ckpt=pth)
    ref = PRESETS[family]["tiny"].build().eval()
    ref.load_state_dict(torch.load(pth, weights_only=True))
    w = wav_batch()[0][:1]
    with torch.no_grad():
        hidden, _ = up(w, torch.tensor([w.shape[1]]))
        layers, _ = ref.extract_features(w)  # torchaudio: one (1, T, D) per Transformer layer
        feats, _ = ref.feature_extractor(w, None)
        projected = ref.encoder.feature_projection(feats)
    assert len(hidden) == len(layers) + 1 == 3
    assert torch.allclose(hidden[0], projected, atol=1e-6)
    for ours, theirs in zip(hidden[1:], layers):
        assert torch.allclose(ours, theirs, atol=1e-6)
    random_ctrl = build_upstream(f"{family}_base_random:tiny")
    with torch.no_grad():
        assert not torch.allclose(random_ctrl(w, torch.tensor([w.shape[1]]))[0][-1], hidden[-1])
    assert upstream_identity(f"{family}_base:tiny", pth, up)["ckpt_hash"] != \
        upstream_identity(f"{family}_base_random:tiny", None, random_ctrl)["ckpt_hash"]


def test_what_the_adapter_works_around_in_torchaudio():
    """If these start failing, torchaudio changed: the per-utterance CNN / WavLM one-at-a-time paths may go."""
    wavs, lengths = wav_batch()
    w2v = PRESETS["wav2vec2"]["tiny"].build().eval()
    with torch.no_grad():
        batched, _ = w2v.extract_features(wavs, lengths)
        alone, _ = w2v.extract_features(wavs[1:2, :8000])
    n = alone[-1].shape[1]
    assert (batched[-1][1, :n] - alone[-1][0]).abs().max() > 1e-2  # GroupNorm over time sees the padding
    wavlm = PRESETS["wavlm"]["tiny"].build().eval()
    with pytest.raises(AssertionError), torch.no_grad():  # pytorch/audio#3700
        wavlm.extract_features(wavs, lengths)


class _Touch:
    """A pickled object whose unpickling would create a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_bad_weight_files_are_one_line_errors_naming_the_file(tmp_path):
    not_torch = tmp_path / "notes.pth"
    not_torch.write_text("not a state dict")
    with pytest.raises(CheckpointError, match="notes.pth: cannot read"):
        build_upstream("wav2vec2_base:tiny", ckpt=not_torch)
    hubert = saved_tiny(tmp_path / "hubert.pth", "hubert")
    with pytest.raises(CheckpointError, match=r"hubert.pth: weights do not fit"):
        build_upstream("wav2vec2_base:base", ckpt=hubert)  # tiny weights, base architecture
    asr = tmp_path / "asr.pth"  # an ASR bundle's file: the encoder plus a CTC head (aux), which is left out
    torch.save({**torch.load(hubert, weights_only=True), "aux.weight": torch.zeros(29, 32), "aux.bias": torch.zeros(29)},
               asr)
    assert build_upstream("hubert_base:tiny", ckpt=asr).num_hidden_states == 3
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pth"
    torch.save({"x": _Touch(marker)}, evil, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(CheckpointError, match="evil.pth: cannot read"):
        build_upstream("wav2vec2_base:tiny", ckpt=evil)
    assert not marker.exists()  # weights_only=True never ran the pickled call
    # an s3prl .ckpt: as s3prl writes it (an argparse Namespace pickled beside the weights: torch refuses it as
    # weights) and as pretrain.export_s3prl writes it (plain data, but no state dict)
    s3prl_state = {"Transformer": {"input_representations.spec_transform.weight": torch.zeros(4, 80)},
                   "Upstream_Config": {"transformer": {}, "audio": {}}, "Step": 1}
    torch.save({**s3prl_state, "Args": argparse.Namespace(config="x.yaml")}, tmp_path / "states-1000.ckpt")
    torch.save(s3prl_state, tmp_path / "exported.ckpt")
    for name in ("states-1000.ckpt", "exported.ckpt"):
        with pytest.raises(CheckpointError) as err:
            build_upstream("wav2vec2_base:tiny", ckpt=tmp_path / name)
        msg = str(err.value)
        assert "\n" not in msg and "\x1b" not in msg and str(tmp_path / name) in msg, msg
        assert "s3prl checkpoint" in msg and f"--upstream s3prl:NAME --ckpt s3prl:NAME={tmp_path / name}" in msg, msg
        assert "python -m pretrain.import_s3prl" in msg, msg
    for bad in (not_torch, evil):  # neither is an s3prl file; both one line, without terminal colour codes
        with pytest.raises(CheckpointError) as err:
            build_upstream("wav2vec2_base:tiny", ckpt=bad)
        assert "\n" not in str(err.value) and "\x1b" not in str(err.value) and "s3prl" not in str(err.value)
    with pytest.raises(CheckpointError, match="evil.pth: .*a pickled file torch refuses to load"):
        build_upstream("wav2vec2_base:tiny", ckpt=evil)


def test_cli_errors_for_torchaudio_upstreams(tmp_path, capsys):
    corpus = make_tiny_corpus(tmp_path / "c", n_speakers=2, per_speaker={"train": 2, "dev": 1, "test": 1})
    base = ["--dry-run", "--corpus", str(corpus.root), "--results-dir", str(tmp_path / "r")]
    cases = [
        (["--upstream", "wav2vec2_base"], "--ckpt wav2vec2_base=PATH"),
        (["--upstream", "wav2vec2_base", "--ckpt", f"wav2vec2_base={tmp_path / 'none.pth'}"], "none.pth: not a torch"),
        (["--upstream", "hubert_base_random", "--ckpt", f"hubert_base_random={tmp_path}"], "takes no weights"),
        (["--upstream", "wavlm_base:huge"], "unknown preset 'huge'"),
    ]
    for extra, msg in cases:
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1, err
    pth = saved_tiny(tmp_path / "w.pth", "wav2vec2")
    assert main(base + ["--upstream", "wav2vec2_base:tiny", "--ckpt", f"wav2vec2_base={pth}", "--mode", "layers",
                        "--task", "phone_linear", "--seeds", "1", "--fractions", "1"]) == 0
    out = capsys.readouterr().out
    assert "wav2vec2_base:tiny: 3 hidden states" in out and "(to pretrain)" not in out


def test_benchmark_run_on_20ms_frames(tmp_path):
    """A tiny benchmark with a random-init wav2vec 2.0 beside mel: phone labels cut by each upstream's frame rule
    (Targets refuses labels more than 2 frames off the features), caches keyed with the rule, rows written."""
    corpus = make_tiny_corpus(tmp_path / "c", n_speakers=2, per_speaker={"train": 3, "dev": 1, "test": 1})
    cfg = BenchmarkConfig(corpus=str(corpus.root), upstreams=("mel", "wav2vec2_base_random:tiny"),
                          tasks=("phone_linear", "speaker_utterance"), modes="last,weighted_sum", fractions=(1.0,),
                          seeds=1, probe=ProbeConfig().with_steps(20), finetune_ends=False, results_dir=tmp_path / "r",
                          cache_dir=tmp_path / "cache", runs_dir=tmp_path / "runs", progress=False, report=False)
    stats = runner.run_benchmark(cfg, log=lambda *_: None)
    rows = read_rows(tmp_path / "r" / RUNS_FILE)
    assert stats.runs_done == len(rows) == 2 + 4  # mel: one hidden state, so last only
    w2v = [r for r in rows if r["upstream"] == "wav2vec2_base_random"]
    assert {r["preset"] for r in w2v} == {"tiny"} and {r["task"] for r in w2v} == {"phone_linear", "speaker_utterance"}
    metas = sorted((tmp_path / "cache").glob("wav2vec2_base_random-*-train-*/meta.json"))
    key = read_json(metas[0], "meta")["key"]
    assert key["frame_rule"]["windows"][0] == {"size": 10, "stride": 5, "centre": 4.5} and key["num_hidden_states"] == 3
    up = build_upstream("wav2vec2_base_random:tiny")
    _, built = ensure_split(tmp_path / "cache", upstream_identity("wav2vec2_base_random:tiny", None, up), up, corpus,
                            "train", corpus.utterances("train"), progress=False)
    assert not built  # the key read back from meta.json (JSON lists, floats) equals the model's: reused, not rebuilt
    assert cached_frames(tmp_path / "cache", pd.Series(w2v[0]), corpus)[1] == up.frame_rule  # what certify cuts
    mel_key = read_json(next((tmp_path / "cache").glob("mel-*-train-*/meta.json")), "meta")["key"]
    assert "frame_rule" not in mel_key and "feature" in mel_key  # log-mel keys as before frame rules existed


def test_hear_api_serves_a_torchaudio_upstream():
    """HEAR timestamps follow the frame rule: wav2vec 2.0 frames centred at 199.5 + 320 t samples (12.47 ms + 20 t)."""
    import hear_api

    model = hear_api.load_model("wav2vec2_base_random:tiny")
    emb, ts = hear_api.get_timestamp_embeddings(wav_batch()[0], model)
    assert emb.shape == (2, 49, 32) and model.timestamp_embedding_size == 32
    assert torch.allclose(ts[0, :3], torch.tensor([12.46875, 32.46875, 52.46875]))


def test_cost_table_takes_torchaudio_upstreams(tmp_path):
    from benchmark.report.cost import measure_costs

    pth = saved_tiny(tmp_path / "w.pth", "wav2vec2")
    df = measure_costs([("wav2vec2_base_random:tiny", None), ("wav2vec2_base:tiny", pth)], tmp_path / "cost.csv",
                       device="cpu", seconds=0.5, n_utts=1)
    assert df["upstream"].tolist() == ["wav2vec2_base_random", "wav2vec2_base"] and (df["params"] > 0).all()
    assert (df["infer_rtf"] > 0).all() and df["val_l1"].isna().all() and (df["pretrain_frames"] == 0).all()
