"""The pretraining loss with unmasked frames weighted in (HuBERT's alpha), and checkpoints that predate a config
field still matching a run that leaves it at its default."""
import json

import pytest
import torch

from pretrain import run_pretraining
from pretrain.__main__ import main as pretrain_main
from pretrain.masking import masked_l1, reconstruction_l1
from pretrain.train import _mismatch, run_identity
from pretrain.data import resolve_source
from tests.fixtures import make_pretrain_corpus
from tests.test_pretrain_recipes import TINY, tiny
from upstream.checkpoint import META_FILE, read_meta


def test_unmasked_weight_mixes_the_two_l1s_and_ignores_padding():
    g = torch.Generator().manual_seed(0)
    x, pred = torch.randn(2, 6, 3, generator=g), torch.randn(2, 6, 3, generator=g)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 1], mask[1, 0] = True, True
    lengths = torch.tensor([6, 4])  # the second utterance's frames 4 and 5 are padding
    assert torch.equal(reconstruction_l1(pred, x, mask, lengths), masked_l1(pred, x, mask))
    err = (pred - x).abs()
    masked = (err[0, 1].sum() + err[1, 0].sum()) / 6
    unmasked = (err[0, [0, 2, 3, 4, 5]].sum() + err[1, [1, 2, 3]].sum()) / (8 * 3)
    got = reconstruction_l1(pred, x, mask, lengths, 0.25)
    assert torch.allclose(got, 0.75 * masked + 0.25 * unmasked)
    pred[1, 4:] += 100.0  # padding never reaches the loss
    assert torch.allclose(reconstruction_l1(pred, x, mask, lengths, 0.25), got)


def test_a_checkpoint_without_a_newer_field_matches_its_default(tmp_path):
    corpus = make_pretrain_corpus(tmp_path / "corpus", n_utts=6, seconds=(1.4, 2.0))
    cfg = tiny("preln_stack3")
    out = run_pretraining("aalbert:small", corpus, tmp_path / "ckpt", cfg, device="cpu", encoder=TINY,
                          stop_at_step=2, show_progress=False)
    meta = read_meta(out)
    assert meta["pretrain_config"]["unmasked_weight"] == 0.0
    older = {**meta, "pretrain_config": {k: v for k, v in meta["pretrain_config"].items() if k != "unmasked_weight"}}
    ident = run_identity("aalbert:small", resolve_source(corpus), cfg, TINY)
    assert _mismatch(older, ident) == []
    other = run_identity("aalbert:small", resolve_source(corpus), tiny("preln_stack3", unmasked_weight=0.5), TINY)
    assert _mismatch(older, other) == ["pretrain_config"]
    # and the resume check itself: the older checkpoint (field removed on disk) continues
    path = out / META_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "pretrain_config": older["pretrain_config"]}))
    run_pretraining("aalbert:small", corpus, out, cfg, resume=True, device="cpu", encoder=TINY, show_progress=False)
    assert read_meta(out)["complete"]


def test_unmasked_weight_flag_is_checked_and_recorded(tmp_path, capsys):
    corpus = make_pretrain_corpus(tmp_path / "corpus", n_utts=6, seconds=(1.4, 2.0))
    assert pretrain_main(["--upstream", "aalbert:small", "--corpus", str(corpus), "--out", str(tmp_path / "bad"),
                          "--unmasked-weight", "1"]) == 2
    assert "--unmasked-weight must be in [0, 1), got 1.0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_a_run_with_unmasked_weight_records_it_in_its_recipe(tmp_path):
    corpus = make_pretrain_corpus(tmp_path / "corpus", n_utts=6, seconds=(1.4, 2.0))
    out = run_pretraining("aalbert:small", corpus, tmp_path / "ckpt", tiny("preln_stack3", unmasked_weight=0.5),
                          device="cpu", encoder=TINY, show_progress=False)
    cfg = read_meta(out)["pretrain_config"]
    assert cfg["unmasked_weight"] == 0.5 and "unmasked_weight" in cfg["recipe"]
    with pytest.raises(ValueError, match="unmasked_weight must be in"):
        tiny("preln_stack3", unmasked_weight=-0.1)
