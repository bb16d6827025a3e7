"""Corrupt, truncated or mismatched checkpoints give errors that name the file and the problem."""
import json

import pytest

from pretrain import PretrainConfig, run_pretraining
from tests.fixtures import make_pretrain_corpus
from upstream.checkpoint import CheckpointError, load_checkpoint, read_meta
from upstream.registry import load_upstream
from upstream.transformer import EncoderConfig

MICRO = EncoderConfig(hidden_size=32, num_heads=2, intermediate_size=64, num_layers=1)
CFG = PretrainConfig(steps=2, batch_size=4, crop_frames=50, ckpt_interval=2, eval_interval=2, precision="float32")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ck")
    corpus = make_pretrain_corpus(root / "corpus", n_utts=6, seconds=(0.8, 1.0))
    return corpus, run_pretraining("mockingjay:small", corpus, root / "ckpt", CFG, device="cpu", encoder=MICRO)


def copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_truncated_weights_are_named(trained, tmp_path):
    ck = copy(trained[1], tmp_path / "c")
    f = ck / read_meta(ck)["files"]["model"]["file"]
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=f"{f.name} is corrupt or truncated"):
        load_upstream(ck)


def test_corrupt_json_and_missing_file_are_named(trained, tmp_path):
    ck = copy(trained[1], tmp_path / "c")
    (ck / read_meta(ck)["files"]["train"]["file"]).unlink()
    with pytest.raises(CheckpointError, match="train-.*missing"):
        load_checkpoint(ck, ("model", "train"))
    (ck / "checkpoint.json").write_text('{"format_version": 1, "fi')
    with pytest.raises(CheckpointError, match="checkpoint.json is corrupt or truncated"):
        load_upstream(ck)


def test_mismatched_config_is_reported(trained, tmp_path):
    ck = copy(trained[1], tmp_path / "c")
    meta = json.loads((ck / "checkpoint.json").read_text())
    meta["encoder"]["hidden_size"] = 64
    (ck / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not match its encoder config"):
        load_upstream(ck)
    meta["format_version"] = 99
    (ck / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format version 99"):
        load_upstream(ck)


def test_resume_and_overwrite_refuse_mismatches(trained, tmp_path):
    corpus, ck = trained
    with pytest.raises(FileExistsError, match="--resume"):
        run_pretraining("mockingjay:small", corpus, ck, CFG, device="cpu", encoder=MICRO)
    other = PretrainConfig(**{**CFG.to_dict(), "lr": 1e-3, "betas": tuple(CFG.betas)})
    with pytest.raises(CheckpointError, match="different pretrain_config"):
        run_pretraining("mockingjay:small", corpus, ck, other, resume=True, device="cpu", encoder=MICRO)
    with pytest.raises(CheckpointError, match="different upstream"):
        run_pretraining("aalbert:small", corpus, ck, CFG, resume=True, device="cpu", encoder=MICRO)


@pytest.mark.parametrize("lr", [0.0, -1e-3, float("nan"), float("inf")])
def test_pretrain_config_rejects_a_bad_learning_rate(lr):
    """The config itself refuses what the command line refuses: a run built in code cannot train with lr <= 0."""
    with pytest.raises(ValueError, match="PretrainConfig.lr"):
        PretrainConfig(lr=lr)
