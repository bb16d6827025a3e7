"""HEAR 2021 API (hear_api): what each model_file_path loads, the timestamp and layer rules, and the two HEAR tools
run as their users run them: hearvalidator 2021.0.6 and heareval 2021.1.3's embedding runner on a generated task
folder (each in a subprocess with the tensorflow stub of tests/stubs on its path)."""
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import hear_api
from pretrain.model import MaskedAcousticModel
from upstream.checkpoint import save_checkpoint
from upstream.features import FeatureConfig, corpus_stats
from upstream.registry import build_upstream, load_upstream
from upstream.transformer import EncoderConfig

ROOT = Path(__file__).resolve().parents[1]
PINNED = {"hearvalidator": "2021.0.6", "heareval": "2021.1.3"}  # requirements-interop.txt


def require(package: str) -> None:
    """The interop tools come from requirements-interop.txt: missing is a skip locally, a failure in CI."""
    try:
        version = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        message = f"{package} not installed (README: pip install --no-deps ... -r requirements-interop.txt)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    assert version == PINNED[package], f"{package} {version} installed, tests are pinned to {PINNED[package]}"


def run_tool(args: list[str], timeout: int = 600) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "stubs"), str(ROOT)]),
           "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args[:3]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny Pre-LN Mockingjay with 3-frame stacking and corpus statistics (30 ms output frames)."""
    g = torch.Generator().manual_seed(0)
    feat = FeatureConfig(downsample=3)
    feat = feat.with_stats(*corpus_stats(feat, [0.1 * torch.randn(16000, generator=g) for _ in range(2)]))
    enc = EncoderConfig(input_dim=feat.feature_dim, hidden_size=32, num_heads=4, intermediate_size=64, num_layers=2,
                        pre_layer_norm=True)
    torch.manual_seed(0)
    model = MaskedAcousticModel(enc, feat.feature_dim)
    tensors = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
    meta = {"upstream": "mockingjay", "preset": "test", "encoder": enc.to_dict(), "feature": feat.to_dict(), "step": 1}
    return save_checkpoint(tmp_path_factory.mktemp("hear") / "mj", {"model": tensors}, meta)


def audio(n_sounds: int, seconds: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n_sounds, int(seconds * 16000), generator=g) * 2 - 1


def test_checkpoint_model_reports_its_hidden_states_at_frame_centres(ckpt):
    model = hear_api.load_model(str(ckpt))
    x = audio(2, 1.07)
    emb, ts = hear_api.get_timestamp_embeddings(x, model)
    n_frames = (1 + x.shape[1] // 160) // 3
    assert emb.shape == (2, n_frames, 32) and emb.dtype == torch.float32 and ts.shape == (2, n_frames)
    assert torch.allclose(ts[0], 10 + 30 * torch.arange(n_frames, dtype=torch.float32))  # centre of frames 3t..3t+2
    assert ts[0, -1] <= 1000 * x.shape[1] / 16000
    with torch.no_grad():
        hidden, _ = load_upstream(ckpt).eval()(x, torch.tensor([x.shape[1]] * 2))
    assert torch.allclose(emb, hidden[-1], atol=1e-5)
    alone, _ = hear_api.get_timestamp_embeddings(x[1:], model)  # a sound's embedding does not depend on its batch
    assert torch.allclose(alone[0], emb[1], atol=1e-5)
    scene = hear_api.get_scene_embeddings(x, model)
    assert scene.shape == (2, model.scene_embedding_size) and torch.allclose(scene, emb.mean(1))


def test_layer_rules_and_weight_free_models(ckpt, tmp_path):
    x = audio(1, 0.5)
    up = build_upstream("aalbert_random", feature=FeatureConfig(norm="none")).eval()
    with torch.no_grad():
        hidden, _ = up(x, torch.tensor([x.shape[1]]))
    expected = {"last": hidden[-1], 1: hidden[1], -4: hidden[0], "mean": torch.stack(hidden).mean(0),
                "concat": torch.cat(hidden, -1)}
    for layer, want in expected.items():
        (tmp_path / "spec.json").write_text(json.dumps({"upstream": "aalbert_random", "layer": layer}))
        model = hear_api.load_model(str(tmp_path / "spec.json"))
        emb, ts = hear_api.get_timestamp_embeddings(x, model)
        assert model.timestamp_embedding_size == want.shape[-1] and torch.allclose(emb, want, atol=1e-5), layer
        assert torch.allclose(ts[0], 10 * torch.arange(want.shape[1], dtype=torch.float32))
    mel = hear_api.load_model("")  # the HEAR default: un-normalised log-mels, 10 ms frames from 0 ms
    assert mel.timestamp_embedding_size == 80 and mel.first_ms == 0 and mel.hop_ms == 10
    (tmp_path / "mel.json").write_text(json.dumps({"upstream": "mel", "feature_from": str(ckpt)}))
    borrowed = hear_api.load_model(str(tmp_path / "mel.json"))  # the checkpoint's front-end, statistics included
    assert borrowed.upstream.feature_cfg == load_upstream(ckpt).feature_cfg and borrowed.timestamp_embedding_size == 240


def test_bad_model_paths_name_the_culprit(ckpt, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "x.ckpt").write_bytes(b"s3prl")
    specs = {"typo.json": {"upstream": "mel", "layers": 2}, "path_as_name.json": {"upstream": str(ckpt)},
             "both.json": {"upstream": "mockingjay", "ckpt": str(ckpt), "feature_from": str(ckpt)},
             "range2.json": {"upstream": "mockingjay", "ckpt": str(ckpt), "layer": 3}}
    for name, spec in specs.items():
        (tmp_path / name).write_text(json.dumps(spec))
    cases = {str(tmp_path / "typo.json"): ["typo.json", "unknown keys ['layers']"],
             str(tmp_path / "path_as_name.json"): ["path_as_name.json", "unknown upstream"],
             str(tmp_path / "both.json"): ["both.json", "feature_from"],
             str(tmp_path / "range2.json"): ["layer 3 is out of range", "3 hidden states"],
             str(tmp_path / "empty"): ["empty", "checkpoint.json"],
             str(tmp_path / "x.ckpt"): ["x.ckpt", "pretrain.import_s3prl"],
             "mockingjay": ["needs a checkpoint", "ckpt"],
             "wav2vec": ["unknown upstream 'wav2vec'", "mockingjay_random"]}
    for path, culprits in cases.items():
        with pytest.raises(ValueError) as err:
            hear_api.load_model(path)
        msg = str(err.value)
        assert "\n" not in msg and all(c in msg for c in culprits), msg
    with pytest.raises(ValueError, match="float tensor"):
        hear_api.get_scene_embeddings(torch.zeros(4, dtype=torch.int16), hear_api.load_model(""))


def test_upstreams_read_from_one_weights_file_are_named_in_a_json_spec(tmp_path):
    """A file is refused as the model path, so the hint for another toolkit's upstream is the .json spec (not "give
    its directory"); following it works."""
    for spec in ("s3prl:mockingjay", "wav2vec2_base:tiny"):
        with pytest.raises(ValueError) as err:
            hear_api.load_model(spec)
        msg = str(err.value)
        assert "\n" not in msg and "directory" not in msg, msg
        assert f'.json model spec holding {{"upstream": "{spec}", "ckpt": "FILE"}}' in msg, msg
        assert ("python -m pretrain.import_s3prl" in msg) == spec.startswith("s3prl"), msg
    with pytest.raises(ValueError, match="give its checkpoint directory .holding checkpoint.json. as the model path"):
        hear_api.load_model("mockingjay")  # a toolkit checkpoint is a directory: that hint is right there
    from tests.test_torchaudio_upstreams import saved_tiny

    (tmp_path / "models").mkdir()
    pth = saved_tiny(tmp_path / "models" / "w.pth", "wav2vec2")
    with pytest.raises(ValueError, match="w.pth is neither a checkpoint directory nor a .json model spec"):
        hear_api.load_model(str(pth))
    (tmp_path / "models" / "spec.json").write_text(json.dumps({"upstream": "wav2vec2_base:tiny", "ckpt": "w.pth"}))
    model = hear_api.load_model(str(tmp_path / "models" / "spec.json"))  # the hint followed
    want = build_upstream("wav2vec2_base:tiny", ckpt=pth).eval()
    x = audio(1, 0.5)
    with torch.no_grad():
        assert torch.allclose(hear_api.get_timestamp_embeddings(x, model)[0], want(x, torch.tensor([x.shape[1]]))[0][-1])


def test_hearvalidator_accepts_every_kind_of_model(ckpt, tmp_path):
    require("hearvalidator")
    (tmp_path / "concat.json").write_text(json.dumps({"upstream": "aalbert_random", "layer": "concat",
                                                      "feature_from": str(ckpt)}))
    models = ["", "mockingjay_random", str(ckpt), str(tmp_path / "concat.json")]
    driver = ("import sys; from hearvalidator.validate import ValidateModel\n"
              "for path in sys.argv[1:]:\n"
              "    ValidateModel('hear_api', path, device='cpu')()\n"
              "    print('VALIDATED', repr(path))\n")
    out = run_tool(["-c", driver, *models])
    assert [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("VALIDATED ")] == [repr(m) for m in models]


def make_task(root: Path, name: str, embedding_type: str, n_files: int, seconds: float) -> dict:
    """A HEAR task folder as heareval expects: metadata, label vocabulary, split JSONs, 16000/<split>/*.wav."""
    task = root / name
    labels = {}
    for split in ("train", "test"):
        (task / "16000" / split).mkdir(parents=True)
        split_labels = {}
        for i in range(n_files):
            fname = f"{split}{i}.wav"
            sf.write(task / "16000" / split / fname, audio(1, seconds, seed=i + 100 * (split == 'test'))[0].numpy() * 0.5,
                     16000, subtype="FLOAT")
            split_labels[fname] = (["a" if i % 2 else "b"] if embedding_type == "scene" else
                                   [{"label": "a", "start": 100.0, "end": 400.0}])
        (task / f"{split}.json").write_text(json.dumps(split_labels))
        labels[split] = split_labels
    (task / "labelvocabulary.csv").write_text("idx,label\n0,a\n1,b\n")
    metadata = {"task_name": name, "version": "test", "embedding_type": embedding_type,
                "prediction_type": "multiclass" if embedding_type == "scene" else "multilabel",
                "split_mode": "trainvaltest", "sample_duration": seconds, "evaluation": ["top1_acc"],
                "splits": ["train", "test"], "mode": "full"}
    (task / "task_metadata.json").write_text(json.dumps(metadata))
    return labels


def test_heareval_embedding_runner_on_a_generated_task_folder(ckpt, tmp_path):
    require("heareval")
    tasks, out = tmp_path / "tasks", tmp_path / "embeddings"
    make_task(tasks, "scene_task", "scene", n_files=3, seconds=1.0)
    make_task(tasks, "event_task", "event", n_files=2, seconds=0.8)
    (tmp_path / "model.json").write_text(json.dumps({"upstream": "mockingjay", "ckpt": str(ckpt), "layer": "mean"}))
    run_tool(["-m", "heareval.embeddings.runner", "hear_api", "--model", str(tmp_path / "model.json"),
              "--tasks-dir", str(tasks), "--embeddings-dir", str(out)])
    model = hear_api.load_model(str(tmp_path / "model.json"))
    for task in ("scene_task", "event_task"):
        done = out / "hear_api" / task
        assert (done / ".done.embeddings").is_file(), sorted(p.name for p in done.iterdir())
        for split in ("train", "test"):
            dims = json.loads((done / f"{split}.embedding-dimensions.json").read_text())
            for wav in sorted((tasks / task / "16000" / split).glob("*.wav")):
                x = torch.from_numpy(sf.read(wav, dtype="float32")[0])[None]
                got = np.load(done / split / f"{wav.name}.embedding.npy")
                if task == "scene_task":
                    want = hear_api.get_scene_embeddings(x, model)[0]
                else:
                    want, ts = (t[0] for t in hear_api.get_timestamp_embeddings(x, model))
                    saved_ts = json.loads((done / split / f"{wav.name}.timestamps.json").read_text())
                    assert np.allclose(saved_ts, ts.numpy())
                    labels = json.loads((done / split / f"{wav.name}.target-labels.json").read_text())
                    assert [bool(lab) for lab in labels] == [100.0 <= t <= 400.0001 for t in saved_ts]
                assert got.shape == tuple(want.shape) and np.allclose(got, want.numpy(), atol=1e-5), wav
            rows = 3 if task == "scene_task" else 2 * ((1 + int(0.8 * 16000) // 160) // 3)  # sounds or frames
            assert dims == [rows, model.timestamp_embedding_size]
