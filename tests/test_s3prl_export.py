"""Export to s3prl: s3prl 0.4.18's own mockingjay expert loads the file and reproduces our hidden states; export and
import are inverse; stacking, Pre-LN, shared layers, factorised embeddings and corpus statistics survive the trip."""
import pytest
import torch

from pretrain.export_s3prl import export_s3prl, main
from pretrain.import_s3prl import import_s3prl
from pretrain.model import MaskedAcousticModel
from upstream.checkpoint import load_checkpoint, read_meta, save_checkpoint
from upstream.features import FeatureConfig, LogMelFrontend, corpus_stats
from upstream.registry import load_upstream
from upstream.s3prl_compat import Placeholder, safe_torch_load
from upstream.transformer import EncoderConfig

s3m = pytest.importorskip("s3prl.upstream.mockingjay.model")
expert_mod = pytest.importorskip("s3prl.upstream.mockingjay.expert")
TINY = dict(hidden_size=32, num_heads=4, intermediate_size=64, num_layers=3)
TOL = 1e-4


def wavs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    t = torch.arange(16000) / 16000
    tone = 0.3 * torch.sin(2 * torch.pi * 220 * t) * (1 + torch.sin(2 * torch.pi * 3 * t))  # non-stationary
    return [tone + 0.05 * torch.randn(16000, generator=g), 0.2 * torch.randn(12345, generator=g)]


def make_ckpt(path, feat: FeatureConfig, **enc_kw):
    """A toolkit checkpoint with perturbed (non-trivial) encoder and head weights."""
    if feat.norm == "corpus":
        feat = feat.with_stats(*corpus_stats(feat, wavs()))
    enc = EncoderConfig(input_dim=feat.feature_dim, **{**TINY, **enc_kw})
    torch.manual_seed(0)
    model = MaskedAcousticModel(enc, feat.feature_dim)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    tensors = {**{f"encoder.{k}": v for k, v in model.encoder.state_dict().items()},
               **{f"head.{k}": v for k, v in model.head.state_dict().items()}}
    meta = {"upstream": "aalbert" if enc.share_layers else "mockingjay", "preset": "test", "encoder": enc.to_dict(),
            "feature": feat.to_dict(), "step": 42, "complete": True}
    return save_checkpoint(path, {"model": tensors}, meta)


def s3prl_expert(path):
    return expert_mod.UpstreamExpert(str(path)).eval()  # s3prl's runner puts a frozen upstream in eval mode


def assert_states_close(ours, theirs, n: int, what: str) -> None:
    assert len(ours) == len(theirs), what
    for i, (a, b) in enumerate(zip(ours, theirs)):
        diff = (a[0, :n] - b[0, :n]).abs().max().item()
        assert diff <= TOL, f"{what}: hidden state {i} differs by {diff}"


@pytest.mark.parametrize("norm,enc_kw", [
    ("corpus", {}),
    ("corpus", {"pre_layer_norm": True, "share_layers": True}),
    ("none", {"pre_layer_norm": True}),
    ("corpus", {"share_layers": True, "embed_dim": 16}),
], ids=["corpus-postln", "corpus-preln-shared", "none-preln", "corpus-shared-factorised"])
def test_s3prl_expert_reproduces_our_hidden_states_from_the_waveform(tmp_path, norm, enc_kw):
    ckpt = make_ckpt(tmp_path / "ckpt", FeatureConfig(norm=norm, deltas=norm == "none"), **enc_kw)
    export_s3prl(ckpt, tmp_path / "out.ckpt")
    ours, expert = load_upstream(ckpt).eval(), s3prl_expert(tmp_path / "out.ckpt")
    for w in wavs():  # one utterance per call: see s3prl_caveats for batches without cmvn
        with torch.no_grad():
            hidden, lengths = ours(w[None], torch.tensor([len(w)]))
            theirs = expert([w])["hidden_states"]
        assert theirs[0].shape[1] == int(lengths[0])
        assert_states_close(hidden, theirs, int(lengths[0]), f"{norm} {enc_kw} {len(w)} samples")


def test_utterance_cmvn_model_matches_on_identical_features(tmp_path):
    """With cmvn on, s3prl's front-end and ours differ only in the CMVN std (documented in docs/interop.md): the
    models are compared on s3prl's own features, and s3prl's features are checked to be what the docs say."""
    ckpt = make_ckpt(tmp_path / "ckpt", FeatureConfig(norm="utterance"), pre_layer_norm=True)
    _, caveats = export_s3prl(ckpt, tmp_path / "out.ckpt")
    assert caveats == []
    ours, expert = load_upstream(ckpt).eval(), s3prl_expert(tmp_path / "out.ckpt")
    raw_frontend = LogMelFrontend(FeatureConfig(norm="none"))
    for w in wavs():
        tr = expert.transformer
        feats = tr.extracter(tr._normalize_wav_decibel(w)[None, None], wavs_len=[len(w)])[0]  # (1, T, 80)
        raw = raw_frontend(w[None], torch.tensor([len(w)]))[0][0]
        documented = (raw - raw.mean(0)) / (raw.std(0) + 1e-10)  # unbiased std + eps 1e-10 (OnlinePreprocessor)
        assert (feats[0] - documented).abs().max() <= 1e-4
        with torch.no_grad():
            _, theirs = tr._forward(feats)
            hidden, _ = ours.encoder(feats, torch.tensor([feats.shape[1]]))
        assert_states_close(hidden, list(theirs), feats.shape[1], f"utterance cmvn, {len(w)} samples")


def test_stacked_frames_map_to_downsample_rate(tmp_path):
    ckpt = make_ckpt(tmp_path / "ckpt", FeatureConfig(downsample=3), pre_layer_norm=True)
    _, caveats = export_s3prl(ckpt, tmp_path / "out.ckpt")
    assert any("downsample_rate 3" in c for c in caveats)
    states = torch.load(tmp_path / "out.ckpt", weights_only=True)
    cfg = states["Upstream_Config"]
    assert cfg["transformer"]["downsample_rate"] == 3 and cfg["audio"]["input"]["cmvn"] is False
    ref = s3m.TransformerModel(s3m.TransformerConfig(cfg["transformer"]), input_dim=240).eval()
    ref.load_state_dict(states["Transformer"])  # strict: every s3prl key, Pre-LN aliases included
    ours = load_upstream(ckpt).eval()
    raw = LogMelFrontend(FeatureConfig(norm="none", downsample=3))  # what the file's weights expect: raw log-mels
    from s3prl.upstream.mockingjay.builder import position_encoding

    for w in wavs():
        with torch.no_grad():
            hidden, lengths = ours(w[None], torch.tensor([len(w)]))
            x, n = raw(w[None], torch.tensor([len(w)]))
            theirs = ref(x, position_encoding(x.shape[1], 32)[None], torch.ones(1, x.shape[1]))
        assert x.shape[1] == int(lengths[0]) == (1 + len(w) // 160) // 3
        assert_states_close(hidden, theirs, int(n[0]), f"stacked, {len(w)} samples")
    back = import_s3prl(tmp_path / "out.ckpt", tmp_path / "back")
    assert load_upstream(back).feature_cfg.downsample == 3
    with pytest.raises(RuntimeError, match="NOT loaded"):  # the documented limit of s3prl 0.4.18's expert
        s3prl_expert(tmp_path / "out.ckpt")


def s3prl_file(path, share: bool, pre_ln: bool) -> dict:
    """An s3prl-made checkpoint: s3prl's TransformerModel and SpecHead, cmvn on, 160-dim mel + delta input."""
    t = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4, "hidden_act": "gelu",
         "intermediate_size": 64, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
         "initializer_range": 0.02, "layer_norm_eps": 1e-12, "share_layer": share, "pre_layer_norm": pre_ln}
    torch.manual_seed(1)
    conf = s3m.TransformerConfig(t)
    model, head = s3m.TransformerModel(conf, input_dim=160), s3m.TransformerSpecPredictionHead(conf, output_dim=160)
    with torch.no_grad():
        for p in [*model.parameters(), *head.parameters()]:
            p.add_(0.05 * torch.randn_like(p))
    inp = {"feat_type": "mel", "channel": 0, "log": True, "delta": 1, "cmvn": True}
    states = {"Transformer": model.state_dict(), "SpecHead": head.state_dict(), "Step": 7,
              "Upstream_Config": {"transformer": t, "task": {"sequence_length": 1500},
                                  "audio": {"target_level": -25, "win_ms": 25, "hop_ms": 10, "n_freq": 201,
                                            "n_mels": 80, "input": inp, "target": inp}},
              "Config": {"runner": {"total_steps": 10}}}
    torch.save(states, path)
    return states


@pytest.mark.parametrize("share,pre_ln", [(False, False), (True, True)], ids=["postln", "preln-shared"])
def test_import_export_import_is_the_identity(tmp_path, share, pre_ln):
    original = s3prl_file(tmp_path / "s3prl.ckpt", share, pre_ln)
    first = import_s3prl(tmp_path / "s3prl.ckpt", tmp_path / "first")
    export_s3prl(first, tmp_path / "again.ckpt")
    second = import_s3prl(tmp_path / "again.ckpt", tmp_path / "second")
    (m1, t1), (m2, t2) = load_checkpoint(first), load_checkpoint(second)
    assert m1["encoder"] == m2["encoder"] and m1["feature"] == m2["feature"] and m1["step"] == m2["step"] == 7
    assert set(t1["model"]) == set(t2["model"])
    assert all(torch.equal(t1["model"][k], t2["model"][k]) for k in t1["model"])
    again = torch.load(tmp_path / "again.ckpt", weights_only=True)  # plain data only
    for group in ("Transformer", "SpecHead"):  # s3prl's own keys and tensors, bit for bit
        assert set(again[group]) == set(original[group])
        assert all(torch.equal(again[group][k], v) for k, v in original[group].items()), group


def test_export_then_import_keeps_hidden_states_and_reconstructions(tmp_path):
    ckpt = make_ckpt(tmp_path / "ckpt", FeatureConfig(), share_layers=True, embed_dim=16)
    export_s3prl(ckpt, tmp_path / "out.ckpt")
    back = import_s3prl(tmp_path / "out.ckpt", tmp_path / "back")
    a, b = load_upstream(ckpt).eval(), load_upstream(back).eval()
    assert b.feature_cfg.norm == "none" and b.encoder_cfg.embed_dim is None and b.encoder_cfg.share_layers
    w = wavs()[0]
    with torch.no_grad():
        ha, n = a(w[None], torch.tensor([len(w)]))
        hb, _ = b(w[None], torch.tensor([len(w)]))
    assert_states_close(ha, hb, int(n[0]), "round trip")
    # the head predicted normalised features; the exported one predicts raw log-mels: s * p + m
    feat = a.feature_cfg
    heads = []
    for d in (ckpt, back):
        t = load_checkpoint(d)[1]["model"]
        heads.append(MaskedAcousticModel(load_upstream(d).encoder_cfg, 80).head)
        heads[-1].load_state_dict({k.removeprefix("head."): v for k, v in t.items() if k.startswith("head.")})
    with torch.no_grad():
        pa, pb = heads[0](ha[-1]), heads[1](hb[-1])
    mean, std = torch.tensor(feat.norm_mean), torch.tensor(feat.norm_std)
    assert (pa * std + mean - pb).abs().max() <= 1e-3 * (1 + pb.abs().max())


def test_export_is_plain_data_and_reads_safely(tmp_path):
    ckpt = make_ckpt(tmp_path / "ckpt", FeatureConfig(), pre_layer_norm=True)
    assert main([str(ckpt), str(tmp_path / "out.ckpt")]) == 0
    plain = torch.load(tmp_path / "out.ckpt", weights_only=True)
    safe = safe_torch_load(tmp_path / "out.ckpt")

    def walk(o):
        yield o
        for v in (o.values() if isinstance(o, dict) else o if isinstance(o, list) else ()):
            yield from walk(v)

    assert not any(isinstance(v, Placeholder) for v in walk(safe))
    assert sorted(plain) == ["Config", "SpecHead", "Step", "Transformer", "Upstream_Config"] and plain["Step"] == 42
    assert plain["Config"]["speechprobe_export"]["model_sha256"] == read_meta(ckpt)["files"]["model"]["sha256"]
    assert plain["Upstream_Config"]["task"]["sequence_length"] == 0  # s3prl encodes inputs whole, as we do


def test_export_errors_name_the_culprit(tmp_path, capsys):
    ckpt = make_ckpt(tmp_path / "ckpt", FeatureConfig())
    cases = [([str(tmp_path / "nowhere"), str(tmp_path / "o.ckpt")], ["nowhere", "not a directory"]),
             ([str(ckpt), str(tmp_path)], ["is a directory"])]
    (tmp_path / "taken.ckpt").write_bytes(b"keep")
    cases.append(([str(ckpt), str(tmp_path / "taken.ckpt")], ["taken.ckpt", "--force"]))
    raw = make_ckpt(tmp_path / "raw", FeatureConfig(norm="none", target_dbfs=None))
    cases.append(([str(raw), str(tmp_path / "r.ckpt")], ["raw", "target level"]))
    for argv, culprits in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and all(c in err for c in culprits), err
    assert (tmp_path / "taken.ckpt").read_bytes() == b"keep" and not (tmp_path / "r.ckpt").exists()
    assert main([str(ckpt), str(tmp_path / "taken.ckpt"), "--force"]) == 0
