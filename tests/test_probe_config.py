"""The typed probe configs: each trainer holds only its own settings, and a wrong one is a clear error."""
import json

import pytest

from benchmark.plan.presets import MAIN_FINETUNE, MAIN_TASK_PROBES, FRAME_PROBE
from downstream.config import SGD, AdamW, FinetuneAdamW, L2Path, Minibatch, NaturalSGD, ProbeConfig, settable


def test_with_fields_routes_each_name_to_the_config_that_holds_it():
    cfg = FRAME_PROBE.with_fields(patience=7, batch_size=512, lr=0.1, momentum=0.5)
    assert cfg == ProbeConfig(Minibatch(NaturalSGD(lr=0.1, momentum=0.5), batch_size=512, min_eval_steps=1), patience=7)
    switched = FRAME_PROBE.with_fields(optimizer="adamw", lr=3e-3)
    assert switched.trainer == Minibatch(AdamW(lr=3e-3), batch_size=4096, min_eval_steps=1)
    with pytest.raises(ValueError, match="'momentum' is not a setting of this probe"):
        switched.with_fields(momentum=0.9)  # AdamW has no momentum
    with pytest.raises(ValueError, match="'batch_size' is not a setting"):
        MAIN_TASK_PROBES["speaker_utterance"].with_fields(batch_size=8)  # the L2 path is full-batch
    assert "rtol" in settable(MAIN_TASK_PROBES["speaker_utterance"]) and "lr" not in settable(
        MAIN_TASK_PROBES["speaker_utterance"])
    assert settable(FRAME_PROBE)["optimizer"] == "ngd"
    assert FRAME_PROBE.with_fields(optimizer="sgd", lr=0.5).trainer.optimizer == SGD(lr=0.5)


def test_to_dict_names_each_trainer_and_optimiser_by_kind():
    d = FRAME_PROBE.to_dict()
    assert d["trainer"]["kind"] == "Minibatch" and d["trainer"]["optimizer"] == {
        "kind": "NaturalSGD", "lr": 0.01, "momentum": 0.9, "damping": 1e-3, "fisher_decay": 0.95, "fisher_rows": 512,
        "mix_lr": 0.5}
    assert "l2_grid" not in json.dumps(d)  # no settings of other trainers in a run's identity
    path = MAIN_TASK_PROBES["speaker_utterance"].to_dict()
    assert path["trainer"]["kind"] == "L2Path" and "lr" not in json.dumps(path)
    # same settings, different optimiser kind: different identities
    assert ProbeConfig(Minibatch(SGD(lr=1e-3, momentum=0.0))).to_dict() != ProbeConfig(Minibatch(AdamW())).to_dict()


def test_with_steps_fixes_the_budget_of_either_trainer():
    fixed = MAIN_FINETUNE.with_steps(12)
    assert fixed.budget == "steps=12" and fixed.trainer.eval_every == 12 and fixed.fixed_steps
    assert MAIN_TASK_PROBES["speaker_utterance"].with_steps(5).max_steps == 5


@pytest.mark.parametrize("make, message", [
    (lambda: SGD(lr=0), "SGD.lr must be > 0"),
    (lambda: SGD(momentum=1.0), r"SGD.momentum must be in \[0, 1\)"),
    (lambda: FinetuneAdamW(upstream_lr=-1), "FinetuneAdamW.upstream_lr must be > 0"),
    (lambda: Minibatch(batch_size=0), "Minibatch.batch_size must be >= 1"),
    (lambda: Minibatch(lr_decay=0), r"Minibatch.lr_decay must be in \(0, 1\]"),
    (lambda: L2Path(l2_grid=(0.1, 0.0)), "L2Path.l2_grid must hold L2 strengths > 0"),
    (lambda: ProbeConfig(patience=0), "ProbeConfig.patience must be >= 1"),
    (lambda: ProbeConfig(L2Path()).minibatch, "this probe trains by L2Path, not by minibatches"),
])
def test_bad_settings_are_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_probe_settings_names_a_bad_fraction_list_and_exits_2(tmp_path):
    """perf/probe_settings.py takes one fraction or a comma-separated sweep (--fractions, or --fraction as the
    single-probe commands in docs spell it), read as the harness reads them; anything else is a clear error, exit 2,
    before it reads any cache."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for args, says in ((["--fraction", "0.01,abc"], "--fractions: 'abc' is not a number"),
                       (["--fractions", "0.01,5"], "--fractions: 5 is outside (0, 1]"),
                       (["--seeds", "0"], "--seeds must be >= 1")):
        done = subprocess.run([sys.executable, "perf/probe_settings.py", "--task", "phone_1hidden", "--cache-dir",
                               str(tmp_path / "none"), *args], cwd=root, capture_output=True, text=True)
        assert done.returncode == 2, done.stderr
        assert says in done.stderr


def test_a_run_id_changes_with_what_trains_the_probe(monkeypatch):
    """A frozen minibatch probe's id holds its config and the feed's version, an L2-path probe's the version of the
    order its examples are summed in; a fine-tuning run's id holds the config of the frozen probe it starts from, so
    changing the frame probes' optimiser re-trains fine-tuning too."""
    from benchmark.plan import runs
    from benchmark.plan.runs import PlannedRun, run_id
    from downstream.modes import LayerMode

    frozen = PlannedRun("mockingjay", "phone_linear", LayerMode("last"), 1.0, 0)
    tuned = PlannedRun("mockingjay", "phone_linear", LayerMode("finetune"), 1.0, 0)
    sgd = FRAME_PROBE.with_fields(optimizer="sgd", lr=0.5)
    ids = {
        "frozen": run_id("c", {}, frozen, 3, FRAME_PROBE),
        "frozen, sgd": run_id("c", {}, frozen, 3, sgd),
        "tuned": run_id("c", {}, tuned, 3, MAIN_FINETUNE, FRAME_PROBE),
        "tuned from sgd": run_id("c", {}, tuned, 3, MAIN_FINETUNE, sgd),
    }
    assert len(set(ids.values())) == 4
    utterance = PlannedRun("mel", "speaker_utterance", LayerMode("last"), 1.0, 0)
    path = MAIN_TASK_PROBES["speaker_utterance"]
    before = run_id("c", {}, utterance, 0, path)
    monkeypatch.setattr(runs, "FEED_VERSION", runs.FEED_VERSION + 1)  # minibatches fed in another order
    assert run_id("c", {}, frozen, 3, FRAME_PROBE) != ids["frozen"]
    assert run_id("c", {}, tuned, 3, MAIN_FINETUNE, FRAME_PROBE) != ids["tuned"]
    assert run_id("c", {}, utterance, 0, path) == before  # the L2 path reads no minibatches
    frozen_id = run_id("c", {}, frozen, 3, FRAME_PROBE)
    monkeypatch.setattr(runs, "PATH_VERSION", runs.PATH_VERSION + 1)  # the path's examples summed in another order
    assert run_id("c", {}, utterance, 0, path) != before
    assert run_id("c", {}, frozen, 3, FRAME_PROBE) == frozen_id  # a minibatch probe solves no path
    with pytest.raises(ValueError, match="frozen probe it starts from"):
        run_id("c", {}, tuned, 3, MAIN_FINETUNE)
