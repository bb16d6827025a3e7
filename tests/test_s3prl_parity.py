"""Our encoder reproduces s3prl's own TransformerModel hidden states after the checkpoint key mapping."""
import pytest
import torch

from upstream.s3prl_compat import ours_to_s3prl, s3prl_to_ours
from upstream.transformer import EncoderConfig, TransformerEncoder

s3m = pytest.importorskip("s3prl.upstream.mockingjay.model")


def s3prl_model(cfg: EncoderConfig) -> torch.nn.Module:
    conf = s3m.TransformerConfig({
        "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "hidden_act": "gelu", "intermediate_size": cfg.intermediate_size,
        "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.attention_dropout,
        "initializer_range": cfg.initializer_range, "layer_norm_eps": cfg.layer_norm_eps,
        "share_layer": cfg.share_layers, "pre_layer_norm": cfg.pre_layer_norm})
    return s3m.TransformerModel(conf, input_dim=cfg.input_dim)


def s3prl_positions(T: int, H: int) -> torch.Tensor:
    from s3prl.upstream.mockingjay.builder import position_encoding  # s3prl's own table

    return position_encoding(T, H)


@pytest.mark.parametrize("pre_ln", [False, True], ids=["post_ln", "pre_ln"])
@pytest.mark.parametrize("share", [False, True], ids=["unshared", "shared"])
def test_all_hidden_states_match_s3prl(share, pre_ln):
    torch.manual_seed(0)
    cfg = EncoderConfig(input_dim=24, hidden_size=32, num_heads=4, intermediate_size=64, num_layers=3,
                        share_layers=share, pre_layer_norm=pre_ln)
    ref = s3prl_model(cfg).eval()
    # Non-trivial LayerNorm/bias values so a wrong mapping cannot pass by symmetry.
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ours = TransformerEncoder(cfg).eval()
    missing, unexpected = ours.load_state_dict(s3prl_to_ours(ref.state_dict(), cfg), strict=True)
    assert not missing and not unexpected

    x, lengths = torch.randn(3, 50, 24), torch.tensor([50, 33, 9])
    mask = (torch.arange(50)[None] < lengths[:, None]).float()
    pos = s3prl_positions(50, 32).expand(3, 50, 32)
    with torch.no_grad():
        expected = ref(x, pos, mask, output_all_encoded_layers=True)
        got, _ = ours(x, lengths)
    assert len(got) == len(expected) == cfg.num_layers + 1
    for i, (a, b) in enumerate(zip(got, expected)):
        for j, n in enumerate(lengths.tolist()):
            diff = (a[j, :n] - b[j, :n]).abs().max().item()
            assert diff <= 1e-4, f"hidden state {i}, utterance {j}: max abs diff {diff}"


@pytest.mark.parametrize("pre_ln", [False, True], ids=["post_ln", "pre_ln"])
@pytest.mark.parametrize("share", [False, True], ids=["unshared", "shared"])
def test_key_mapping_round_trips(share, pre_ln):
    cfg = EncoderConfig(input_dim=24, hidden_size=32, num_heads=4, intermediate_size=64, num_layers=3,
                        share_layers=share, pre_layer_norm=pre_ln)
    ref = s3prl_model(cfg)
    back = ours_to_s3prl(s3prl_to_ours(ref.state_dict(), cfg), cfg)
    assert set(back) == set(ref.state_dict())
    for k, v in ref.state_dict().items():
        assert torch.equal(back[k], v), k


def test_shared_model_with_differing_layers_is_rejected():
    cfg = EncoderConfig(input_dim=24, hidden_size=32, num_heads=4, intermediate_size=64, num_layers=2)
    state = s3prl_model(cfg).state_dict()  # unshared weights
    with pytest.raises(ValueError, match="layer 1 differs"):
        s3prl_to_ours(state, EncoderConfig(**{**cfg.to_dict(), "share_layers": True}))


def test_pre_ln_flag_that_contradicts_the_weights_is_named():
    cfg = EncoderConfig(input_dim=24, hidden_size=32, num_heads=4, intermediate_size=64, num_layers=2,
                        pre_layer_norm=True)
    state = s3prl_model(cfg).state_dict()
    with pytest.raises(ValueError, match="pre_layer_norm=False"):
        s3prl_to_ours(state, EncoderConfig(**{**cfg.to_dict(), "pre_layer_norm": False}))
    state["encoder.layer.1.attention.LayerNorm.weight"] = state["encoder.layer.1.attention.LayerNorm.weight"] + 1
    with pytest.raises(ValueError, match="registers it twice"):  # an alias that is not a copy of its original
        s3prl_to_ours(state, cfg)
