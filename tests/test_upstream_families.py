"""Every kind of upstream is one family object (upstream.family.Family) that planner, resolver, cost table and
pretraining ask. The built-in registry is consistent, and a new kind registered from here (a log-mel variant, a
torchaudio model with its random-init control, a pretrainable Transformer with its control) is planned, resolved,
built and guarded like the built-in ones, with no other change anywhere."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import pretrain.__main__
from benchmark.cli import main as benchmark_main
from benchmark.inputs.upstream import planned_checkpoint, resolve_upstream
from benchmark.plan.config import BenchmarkConfig
from benchmark.plan.runs import expand_runs
from benchmark.plan.shapes import planned_upstream
from corpora.manifest import load_corpus
from pretrain import default_budget, run_pretraining
from pretrain.config import with_overrides
from pretrain.train import model_configs
from tests.fixtures import make_pretrain_corpus
from upstream import registry
from upstream.checkpoint import checkpoint_hash
from upstream.features import FeatureConfig
from upstream.interface import UpstreamShape
from upstream.toolkit import LogMelFamily, TransformerFamily, TransformerPreset
from upstream.torchaudio_models import PRESETS, TorchaudioFamily
from upstream.transformer import EncoderConfig

ROOT = Path(__file__).resolve().parent.parent
MEL40 = LogMelFamily("mel40", {"default": FeatureConfig(n_mels=40)})
BERT = TransformerFamily("bert_tiny", {"tiny": TransformerPreset(
    FeatureConfig(), EncoderConfig(hidden_size=32, num_heads=4, intermediate_size=64, num_layers=2))},
    default_preset="tiny", control="bert_tiny_random")
W2V = TorchaudioFamily("w2v_tiny", {"tiny": PRESETS["wav2vec2"]["tiny"]}, default_preset="tiny",
                       control="w2v_tiny_random")


@pytest.fixture
def registered(monkeypatch) -> None:
    """The three new kinds, each one object plus one registry line (a model's control: one more line)."""
    for fam in (MEL40, BERT, BERT.random_control(), W2V, W2V.random_control()):
        monkeypatch.setitem(registry.FAMILIES, fam.name, fam)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return make_pretrain_corpus(tmp_path_factory.mktemp("corpus"), n_utts=8, seconds=(1.0, 1.5))


def test_each_family_is_registered_under_its_name_and_names_its_control():
    for name, fam in registry.FAMILIES.items():
        assert fam.name == name and fam.default_preset in fam.presets
        if fam.control is not None:
            control = registry.FAMILIES[fam.control]
            assert control == fam.random_control() and not control.takes_weights
        if fam.architecture_from is not None:
            assert registry.FAMILIES[fam.architecture_from].control == name
        assert fam.takes_weights or not fam.pretrainable
    kinds = {k: [n for n, f in registry.FAMILIES.items() if getattr(f, k)]
             for k in ("pretrainable", "takes_weights", "takes_front_end")}
    assert kinds == {"pretrainable": ["mockingjay", "aalbert"],
                     "takes_weights": ["mockingjay", "aalbert", "wav2vec2_base", "hubert_base", "wavlm_base", "s3prl"],
                     "takes_front_end": ["mel", "mockingjay_random", "aalbert_random"]}
    assert [n for n, f in registry.FAMILIES.items() if f.control] == ["mockingjay", "aalbert", "wav2vec2_base",
                                                                      "hubert_base", "wavlm_base"]


def test_the_planner_shapes_registered_families_before_anything_exists(registered, tmp_path):
    cfg = BenchmarkConfig(runs_dir=tmp_path / "runs", pretrain=True)
    mel = planned_upstream("mel40", cfg)
    assert (mel.shape.num_hidden_states, mel.shape.hidden_size, mel.ckpt_hash, mel.fresh) == (1, 40, None, False)
    bert = planned_upstream("bert_tiny", cfg)  # --pretrain: the recipe's front-end on the preset's encoder
    _, feature, encoder = model_configs("bert_tiny", default_budget(False))
    assert (bert.shape.num_hidden_states, bert.shape.hidden_size, bert.feature, bert.fresh) == (3, 32, feature, True)
    assert planned_checkpoint("bert_tiny", {}, tmp_path / "runs", False, True) == tmp_path / "runs" / "bert_tiny-tiny"
    control = planned_upstream("bert_tiny_random", cfg)  # shaped like the checkpoint its model will have
    assert (control.shape.num_hidden_states, control.shape.hidden_size, control.feature, control.ckpt_hash) == \
        (3, 32, feature, None)
    w2v = planned_upstream("w2v_tiny_random", cfg)
    assert w2v.shape == UpstreamShape(3, 32, w2v.shape.frame_rule) and w2v.shape.frame_rule.shift == 320
    assert w2v.feature is None
    assert w2v.ckpt_hash is not None  # a seeded architecture: known before it is built
    with pytest.raises(ValueError, match=r"--ckpt w2v_tiny=PATH \(nothing is downloaded\)"):
        planned_upstream("w2v_tiny", cfg)
    with pytest.raises(ValueError, match="no reference checkpoint ships for bert_tiny:tiny"):
        planned_upstream("bert_tiny", BenchmarkConfig(runs_dir=tmp_path / "runs"))


def test_a_registered_pretrainable_family_is_fine_tuned_by_default(registered):
    """The plan asks the family whether the main job fine-tunes it: a new pretrainable family is, without a line of
    the plan changed; one that only takes weights, or none, is not (it fine-tunes on --mode finetune)."""
    cfg = BenchmarkConfig(tasks=("phone_linear",), modes="last", seeds=1)
    finetuned = {spec: [r.fraction for r in expand_runs(cfg, spec, 3, [0.1, 1.0], []) if r.finetune]
                 for spec in ("bert_tiny", "bert_tiny_random", "w2v_tiny", "w2v_tiny_random", "mel40")}
    assert finetuned == {"bert_tiny": [0.1, 1.0], "bert_tiny_random": [], "w2v_tiny": [], "w2v_tiny_random": [],
                         "mel40": []}
    assert [n for n, f in registry.FAMILIES.items() if f.finetuned_by_default] == ["mockingjay", "aalbert", "bert_tiny"]


def test_the_dry_run_and_list_show_registered_families(registered, tmp_path, capsys):
    argv = ["--dry-run", "--pretrain", "--upstream", "mel40,bert_tiny,bert_tiny_random,w2v_tiny_random",
            "--task", "phone_linear", "--mode", "last,weighted_sum", "--fractions", "1", "--seeds", "1",
            "--no-finetune", "--no-progress", "--data-dir", str(tmp_path / "data"),
            "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results"),
            "--cache-dir", str(tmp_path / "cache")]
    assert benchmark_main(argv) == 0
    out = capsys.readouterr().out
    assert "mel40: 1 hidden states: 1 runs" in out
    assert f"bert_tiny: 3 hidden states, checkpoint {tmp_path / 'runs' / 'bert_tiny-tiny'} (to pretrain): 2 runs" in out
    assert "bert_tiny_random: 3 hidden states: 2 runs" in out and "w2v_tiny_random: 3 hidden states: 2 runs" in out
    assert benchmark_main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert "bert_tiny_random     presets: tiny   (random-init control of bert_tiny)" in listed
    assert "mel40                presets: default   (log-mel baseline)" in listed


def test_a_registered_family_pretrains_resolves_and_controls(registered, corpus_dir, tmp_path):
    cfg = with_overrides(default_budget(quick=True), steps=2, eval_interval=2, ckpt_interval=2, batch_size=4,
                         crop_frames=30, min_frames=10)
    ckpt = run_pretraining("bert_tiny", corpus_dir, tmp_path / "bert", cfg, device="cpu", show_progress=False)
    registry.check_ckpt("bert_tiny", ckpt)
    plan = BenchmarkConfig(ckpts={"bert_tiny": str(ckpt)}, runs_dir=tmp_path / "runs")
    model, control = planned_upstream("bert_tiny", plan), planned_upstream("bert_tiny_random", plan)
    assert (model.shape.num_hidden_states, model.shape.hidden_size, model.fresh, model.ckpt_hash) == \
        (3, 32, False, checkpoint_hash(ckpt)[:16])
    assert model.shape == control.shape  # the control differs from its model in the weights only
    assert model.feature.downsample == control.feature.downsample == 3
    assert control.feature == model.feature and control.feature.has_stats  # its twin's input normalisation too
    corpus = load_corpus(corpus_dir)
    for spec, hidden, width in (("bert_tiny", 3, 32), ("bert_tiny_random", 3, 32), ("mel40", 1, 40),
                                ("w2v_tiny_random", 3, 32)):
        up = resolve_upstream(spec, corpus, plan.ckpts, plan.runs_dir, False, log=lambda _: None, progress=False)
        assert (up.model.num_hidden_states, up.model.hidden_size) == (hidden, width), spec
        assert up.identity["upstream"] == spec.partition(":")[0]
        planned = planned_upstream(spec, plan)
        assert planned.shape == UpstreamShape(up.model.num_hidden_states, up.model.hidden_size, up.model.frame_rule)
        if planned.ckpt_hash is not None:
            assert up.identity["ckpt_hash"] == planned.ckpt_hash
    assert resolve_upstream("bert_tiny", corpus, plan.ckpts, plan.runs_dir, False, log=lambda _: None,
                            progress=False).pretrain_frames > 0


def _pretrain_error(capsys, upstream: str, tmp_path: Path) -> str:
    rc = pretrain.__main__.main(["--upstream", upstream, "--corpus", str(tmp_path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and not (tmp_path / "out").exists(), err
    return err


def test_pretraining_refuses_every_family_it_cannot_train(registered, tmp_path, capsys):
    args = pretrain.__main__._parser().parse_args(["--upstream", "bert_tiny", "--corpus", str(tmp_path),
                                                   "--out", str(tmp_path / "out")])
    pretrain.__main__.check_inputs(args)  # a registered pretrainable family passes the guard
    for name, fam in registry.FAMILIES.items():
        if not fam.pretrainable:
            err = _pretrain_error(capsys, name, tmp_path)
            assert err.startswith(f"error: --upstream {name}: {name} cannot be pretrained by this toolkit"), err
            assert err.endswith("pretrainable: mockingjay, aalbert, bert_tiny"), err
    with pytest.raises(ValueError, match="w2v_tiny cannot be pretrained"):
        model_configs("w2v_tiny", default_budget(True))


def test_python_m_pretrain_refuses_a_torchaudio_model_at_once(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pretrain", "--upstream", "wav2vec2_base", "--corpus", str(tmp_path),
                        "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert r.returncode == 2 and not (tmp_path / "out").exists() and "Traceback" not in r.stderr, r.stderr
    assert errors == ["error: --upstream wav2vec2_base: wav2vec2_base cannot be pretrained by this toolkit (torchaudio "
                      "model, weights from --ckpt wav2vec2_base=FILE); pretrainable: mockingjay, aalbert"], r.stderr
