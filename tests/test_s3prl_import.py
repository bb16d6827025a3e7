"""Importing s3prl .ckpt files: no pickle code runs, weights and configs convert, the registry loads the result."""
import argparse
import sys
import types

import pytest
import torch

from pretrain.import_s3prl import import_s3prl, main
from upstream.registry import load_upstream
from upstream.s3prl_compat import Placeholder, safe_torch_load

s3m = pytest.importorskip("s3prl.upstream.mockingjay.model")
CALLED = []


def _evil_module() -> types.ModuleType:
    mod = types.ModuleType("evil_s3prl_mod")

    def boom(*args):
        CALLED.append(args)
        return args

    class WarmupLinearSchedule:  # pickles as a call to boom: a plain unpickler would run it
        def __reduce__(self):
            return (boom, ("side effect",))

    boom.__module__ = WarmupLinearSchedule.__module__ = "evil_s3prl_mod"
    boom.__qualname__ = "boom"
    WarmupLinearSchedule.__qualname__ = "WarmupLinearSchedule"
    mod.boom, mod.WarmupLinearSchedule = boom, WarmupLinearSchedule
    return mod


def fake_ckpt(path, share: bool, config_key: str, pre_ln: bool = False):
    t = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4, "hidden_act": "gelu",
         "intermediate_size": 64, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
         "initializer_range": 0.02, "layer_norm_eps": 1e-12, "share_layer": share, "pre_layer_norm": pre_ln}
    torch.manual_seed(0)
    conf = s3m.TransformerConfig(t)
    model = s3m.TransformerModel(conf, input_dim=80)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    head = s3m.TransformerSpecPredictionHead(conf, output_dim=80)
    upstream_cfg = {"transformer": t, "task": {"sequence_length": 1500},
                    "audio": {"target_level": -25, "win_ms": 25, "hop_ms": 10, "n_freq": 201, "n_mels": 80,
                              "input": {"feat_type": "mel", "channel": 0, "log": True, "delta": 0, "cmvn": True}}}
    mod = _evil_module()
    sys.modules["evil_s3prl_mod"] = mod
    try:
        states = {"Transformer": model.state_dict(), "SpecHead": head.state_dict(), "Step": 1234,
                  "Args": argparse.Namespace(config="x.yaml", seed=1337), "Optimizer": {"sched": mod.WarmupLinearSchedule()}}
        if config_key == "Upstream_Config":
            states.update({"Upstream_Config": upstream_cfg, "Config": {"runner": {"total_steps": 10}}})
        else:  # legacy hub files: Config is the model config, Runner the runner's
            states.update({"Config": upstream_cfg, "Runner": {"total_steps": 10}})
        torch.save(states, path)
    finally:
        del sys.modules["evil_s3prl_mod"]
    return model.eval()


def test_loading_executes_and_imports_nothing(tmp_path):
    path = tmp_path / "states.ckpt"
    fake_ckpt(path, False, "Upstream_Config")
    CALLED.clear()
    sys.modules["evil_s3prl_mod"] = _evil_module()  # importable: a plain unpickler WOULD call boom
    try:
        ckpt = safe_torch_load(path)
    finally:
        del sys.modules["evil_s3prl_mod"]
    assert CALLED == []
    assert isinstance(ckpt["Optimizer"]["sched"], Placeholder) and "evil_s3prl_mod.boom" in repr(ckpt["Optimizer"]["sched"])
    assert isinstance(ckpt["Args"], Placeholder)  # argparse.Namespace never rebuilt
    assert repr(ckpt["Args"]) == "<unloaded argparse.Namespace>" and ckpt["Args"].state == {"config": "x.yaml", "seed": 1337}
    with pytest.raises(ModuleNotFoundError):  # what a plain unpickler does with the missing module
        torch.load(path, weights_only=False)
    assert "evil_s3prl_mod" not in sys.modules
    safe_torch_load(path)
    assert "evil_s3prl_mod" not in sys.modules


@pytest.mark.parametrize("share,config_key,pre_ln", [(False, "Upstream_Config", False), (True, "Config", False),
                                                    (False, "Upstream_Config", True), (True, "Upstream_Config", True)])
def test_import_matches_s3prl_model(tmp_path, share, config_key, pre_ln):
    ref = fake_ckpt(tmp_path / "in.ckpt", share, config_key, pre_ln)
    assert main([str(tmp_path / "in.ckpt"), str(tmp_path / "out")]) == 0
    up = load_upstream(tmp_path / "out").eval()
    assert up.feature_cfg.norm == "utterance" and up.encoder_cfg.share_layers == share
    assert up.encoder_cfg.pre_layer_norm == pre_ln
    assert len(up.encoder.layers) == (1 if share else 3)
    from s3prl.upstream.mockingjay.builder import position_encoding

    x, lengths = torch.randn(2, 40, 80), torch.tensor([40, 21])
    with torch.no_grad():
        ours, _ = up.encoder(x, lengths)
        theirs = ref(x, position_encoding(40, 32).expand(2, 40, 32), (torch.arange(40)[None] < lengths[:, None]).float())
    for a, b in zip(ours, theirs):
        assert (a[1, :21] - b[1, :21]).abs().max() <= 1e-4 and (a[0] - b[0]).abs().max() <= 1e-4


def test_bad_s3prl_files_give_clear_errors(tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="bad.ckpt"):
        import_s3prl(bad, tmp_path / "o1")
    torch.save({"Transformer": {}}, tmp_path / "nocfg.ckpt")
    assert main([str(tmp_path / "nocfg.ckpt"), str(tmp_path / "o2")]) == 2
    assert "nocfg.ckpt" in capsys.readouterr().err
