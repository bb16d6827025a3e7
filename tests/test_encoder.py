import pytest
import torch

from upstream.registry import FAMILIES, build_upstream
from upstream.transformer import EncoderConfig, TransformerEncoder, count_parameters

TINY = dict(hidden_size=32, num_heads=4, intermediate_size=64, num_layers=3)


@pytest.mark.parametrize("cfg,expected", [
    (EncoderConfig(), 21_327_360),
    (EncoderConfig(num_layers=12), 85_118_208),
    (EncoderConfig(share_layers=True), 7_151_616),
    (EncoderConfig(share_layers=True, num_layers=6), 7_151_616),
    (EncoderConfig(input_dim=160), 21_388_800),
    (EncoderConfig(input_dim=480, num_layers=12), 85_425_408),
    (EncoderConfig(input_dim=480, share_layers=True), 7_458_816),
])
def test_parameter_counts_equal_reference(cfg, expected):
    with torch.device("meta"):
        assert count_parameters(TransformerEncoder(cfg)) == expected


def test_registry_presets_match_reference_counts():
    with torch.device("meta"):
        assert count_parameters(TransformerEncoder(FAMILIES["mockingjay"].architecture("base")[1])) == 21_327_360
        assert count_parameters(TransformerEncoder(FAMILIES["mockingjay"].architecture("large")[1])) == 85_118_208
        assert count_parameters(TransformerEncoder(FAMILIES["aalbert"].architecture("base6")[1])) == 7_151_616


@pytest.mark.parametrize("share,pre_ln", [(False, False), (True, False), (False, True), (True, True)])
def test_padding_never_changes_valid_outputs(share, pre_ln):
    torch.manual_seed(0)
    enc = TransformerEncoder(EncoderConfig(input_dim=20, share_layers=share, pre_layer_norm=pre_ln, **TINY)).eval()
    x = torch.randn(3, 40, 20)
    lengths = torch.tensor([40, 25, 7])
    hidden, _ = enc(x, lengths)
    assert len(hidden) == 4
    for i, n in enumerate(lengths.tolist()):
        alone, _ = enc(x[i : i + 1, :n], lengths[i : i + 1])
        for h, a in zip(hidden, alone):
            torch.testing.assert_close(h[i, :n], a[0], atol=1e-5, rtol=1e-5)
            assert h[i, n:].abs().sum() == 0


def test_attention_weights_path_matches_sdpa_path():
    torch.manual_seed(0)
    enc = TransformerEncoder(EncoderConfig(input_dim=20, **TINY)).eval()
    x, lengths = torch.randn(2, 30, 20), torch.tensor([30, 12])
    h1, w0 = enc(x, lengths)
    h2, w = enc(x, lengths, need_weights=True)
    assert not w0 and len(w) == 3 and w[0].shape == (2, 4, 30, 30)
    for a, b in zip(h1, h2):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w[1].sum(-1), torch.ones(2, 4, 30))
    assert w[1][1, :, :, 12:].abs().max() == 0  # no attention on padding


def test_shared_layers_are_one_module_and_factorised_embedding_is_optional():
    shared = TransformerEncoder(EncoderConfig(input_dim=20, share_layers=True, **TINY))
    assert shared.layer(0) is shared.layer(2) and len(shared.layers) == 1
    fact = TransformerEncoder(EncoderConfig(input_dim=20, embed_dim=8, **TINY))
    plain = TransformerEncoder(EncoderConfig(input_dim=20, **TINY))
    assert count_parameters(plain) - count_parameters(fact) == (20 * 32) - (20 * 8 + 8 * 32)


def test_upstream_interface_attributes():
    from upstream.features import FeatureConfig

    mel = build_upstream("mel", feature=FeatureConfig(norm="utterance"))
    assert (mel.num_hidden_states, mel.hidden_size, mel.frame_shift, mel.sample_rate) == (1, 80, 160, 16000)
    rnd = build_upstream("aalbert_random", feature=FeatureConfig(norm="utterance"))
    hidden, lengths = rnd(torch.randn(2, 4000) * 0.1, torch.tensor([4000, 2000]))
    assert len(hidden) == rnd.num_hidden_states == 4
    assert lengths.tolist() == [26, 13] and hidden[-1].shape == (2, 26, rnd.hidden_size)
    with pytest.raises(ValueError, match="needs a checkpoint"):
        build_upstream("mockingjay")
    with pytest.raises(ValueError, match="valid"):
        build_upstream("wav2vec9")


@pytest.mark.parametrize("share", [False, True])
def test_pre_layer_norm_reports_normalised_states_with_one_norm_per_depth(share):
    torch.manual_seed(0)
    cfg = EncoderConfig(input_dim=20, share_layers=share, pre_layer_norm=True, **TINY)
    enc = TransformerEncoder(cfg).eval()
    post = TransformerEncoder(EncoderConfig(input_dim=20, share_layers=share, **TINY))
    # N + 1 output LayerNorms (even with shared layers) and nothing else added
    assert count_parameters(enc) - count_parameters(post) == (cfg.num_layers + 1) * 2 * cfg.hidden_size
    with torch.no_grad():
        for norm in enc.out_norms:
            norm.weight.fill_(1.0)
            norm.bias.zero_()
        enc.layers[0].ffn_out.bias.fill_(3.0)  # the residual stream drifts; the reported states do not
    hidden, _ = enc(torch.randn(2, 30, 20), torch.tensor([30, 30]))
    for h in hidden:
        torch.testing.assert_close(h.mean(-1), torch.zeros(2, 30), atol=1e-4, rtol=0)
        torch.testing.assert_close(h.var(-1, unbiased=False), torch.ones(2, 30), atol=1e-3, rtol=0)
