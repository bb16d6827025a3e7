"""Reference checkpoints: release strips training state, loading checks the pinned hash, the main job uses them
by default (pretraining stays one flag away) and random-init controls copy the architecture they control for."""
from pathlib import Path

import pandas as pd
import pytest

from benchmark.inputs.upstream import control_architecture, planned_checkpoint
from benchmark.record.aggregate import validate_runs
from benchmark.record.schema import RUN_COLUMNS
from core.io import sha256_file
from pretrain import run_pretraining
from pretrain.config import RECIPES, with_overrides
from pretrain.release import release
from pretrain.train import model_configs
from tests.fixtures import make_pretrain_corpus
from upstream.checkpoint import CheckpointError, read_meta
from upstream.reference import SHIPPED_CHECKPOINTS, Reference, verify_reference
from upstream.registry import load_upstream
from upstream.transformer import EncoderConfig

TINY = EncoderConfig(hidden_size=32, num_heads=2, intermediate_size=64, num_layers=2)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    corpus = make_pretrain_corpus(tmp / "corpus", n_utts=8, seconds=(1.4, 2.0))
    cfg = with_overrides(RECIPES["preln_stack3"], steps=4, batch_size=4, crop_frames=30, eval_interval=2,
                         ckpt_interval=2, min_frames=10, val_fraction=0.25, precision="float32")
    return run_pretraining("mockingjay:small", corpus, tmp / "run", cfg, device="cpu", encoder=TINY,
                           show_progress=False)


def test_release_is_model_only_and_pinned_by_hash(run_dir, tmp_path):
    out = tmp_path / "mockingjay-small"
    digest = release(run_dir, out, ["python -m pretrain ..."])
    meta = read_meta(out)
    assert set(meta["files"]) == {"model"} and "train_state" not in meta and meta["complete"]
    assert {p.name for p in out.iterdir()} >= {"checkpoint.json", "loss.csv", "loss.png", "command.txt"}
    assert (out / "command.txt").read_text() == "python -m pretrain ...\n"
    ref = Reference("mockingjay", "small", digest)
    assert verify_reference(ref, out) == out
    load_upstream(out)  # loads like any checkpoint
    with pytest.raises(FileExistsError):
        release(run_dir, out, [])
    meta_file = out / "checkpoint.json"
    meta_file.write_text(meta_file.read_text().replace('"complete": true', '"complete": true '))
    with pytest.raises(CheckpointError, match="checkpoint.json: SHA-256 .* is not the pinned"):
        verify_reference(ref, out)


def test_shipped_references_verify_and_load():
    for ref in SHIPPED_CHECKPOINTS.values():
        model = load_upstream(verify_reference(ref)).eval()
        assert model.num_hidden_states == 4
        assert sha256_file(ref.path / "checkpoint.json") == ref.json_sha256


def test_main_job_plans_references_unless_told_to_pretrain(tmp_path):
    assert planned_checkpoint("aalbert", {}, tmp_path, False) == SHIPPED_CHECKPOINTS["aalbert:small"].path
    assert planned_checkpoint("aalbert", {}, tmp_path, False, pretrain=True) == tmp_path / "aalbert-small"
    assert planned_checkpoint("aalbert", {"aalbert": "x"}, tmp_path, False) == Path("x")
    assert planned_checkpoint("mel", {}, tmp_path, False) is None
    with pytest.raises(ValueError, match="no reference checkpoint ships for mockingjay:base.*--pretrain"):
        planned_checkpoint("mockingjay:base", {}, tmp_path, False)


def test_random_control_copies_the_architecture_it_controls_for(run_dir, tmp_path):
    feature, enc = control_architecture("mockingjay_random", {"mockingjay": str(run_dir)}, tmp_path, False, False)
    meta = read_meta(run_dir)
    assert feature.downsample == 3 and enc.pre_layer_norm and enc.to_dict() == meta["encoder"]
    # its twin's input normalisation too: the statistics of the twin's pretraining corpus, not the probe corpus's
    assert feature.to_dict() == meta["feature"] and feature.has_stats
    # before a --pretrain checkpoint exists: the shape the job's recipe will give it
    feature, enc = control_architecture("aalbert_random", {}, tmp_path, False, True)
    assert enc.share_layers and enc.input_dim == feature.feature_dim and not feature.has_stats


def test_ten_ms_references_are_presets_with_their_own_checkpoints_and_controls(tmp_path):
    planned = planned_checkpoint("mockingjay:small-r1", {}, tmp_path, False)
    assert planned == SHIPPED_CHECKPOINTS["mockingjay:small-r1"].path == Path("checkpoints").resolve() / "mockingjay-small-r1"
    assert planned_checkpoint("aalbert:small", {}, tmp_path, False) != planned_checkpoint("aalbert:small-r1", {}, tmp_path, False)
    for name in ("mockingjay", "aalbert"):
        feature, enc = control_architecture(f"{name}_random:small-r1", {}, tmp_path, False, False)
        meta = read_meta(SHIPPED_CHECKPOINTS[f"{name}:small-r1"].path)
        assert feature.downsample == 1 and feature.to_dict() == meta["feature"] and enc.to_dict() == meta["encoder"]
        stacked, _ = control_architecture(f"{name}_random", {}, tmp_path, False, False)
        assert stacked.downsample == 3


def test_ten_ms_preset_refuses_a_stacking_recipe():
    _, feature, _ = model_configs("aalbert:small-r1", RECIPES["preln"])
    assert feature.downsample == 1
    with pytest.raises(ValueError, match="small-r1: the preset takes 1 frame.*'preln_stack3' stacks 3"):
        model_configs("aalbert:small-r1", RECIPES["preln_stack3"])
    with pytest.raises(ValueError, match="aalbert:small-r1: the preset takes 1 frame"):  # caught while planning
        planned_checkpoint("aalbert:small-r1", {}, Path("runs"), False, pretrain=True)


def test_rows_written_before_the_recipe_column_are_read_as_unrecorded():
    row = {c: "1" for c in RUN_COLUMNS} | {"converged": "True", "budget": "converge", "layer_weights": ""}
    old = pd.DataFrame([{k: v for k, v in row.items() if k != "pretrain_recipe"}])
    assert validate_runs(old)["pretrain_recipe"].tolist() == ["unrecorded"]
    older = pd.DataFrame([{k: v for k, v in row.items() if k not in ("pretrain_recipe", "budget", "converged")}])
    up = validate_runs(older)
    assert up["budget"].tolist() == ["steps=1"] and up["pretrain_recipe"].tolist() == ["unrecorded"]
    with pytest.raises(ValueError, match="columns differ"):
        validate_runs(pd.DataFrame([{k: v for k, v in row.items() if k != "corpus"}]))
