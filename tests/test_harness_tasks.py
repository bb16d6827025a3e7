"""The harness reads each task's spec: a task of a new level with a lower-is-better metric, defined in this module
alone, runs through the runner to rows, a ranked table, the overview and the plots; phone_ctc and
speaker_verification run (trial utterances in a cache split of their own) and are exempt from the certificate;
a corpus that cannot serve a planned task is one error line, exit 2, before anything is written."""
from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import benchmark.run.runner as runner
import downstream.tasks as tasks_module
from benchmark.cli import main
from benchmark.plan.cachesize import cache_needs
from benchmark.plan.config import BenchmarkConfig
from benchmark.plan.presets import MAIN_TASKS, main_job
from benchmark.record.aggregate import aggregate_runs, read_runs
from benchmark.record.metrics import metric_of
from benchmark.record.outcomes import read_outcomes
from benchmark.record.results import read_rows
from benchmark.report import plots
from benchmark.report.build import build_report
from benchmark.report.convergence import exempt_tasks
from benchmark.report.site.overview import overview, superb_markdown
from benchmark.report.tables import leaderboard
from corpora.manifest import PROBE_SPLITS, load_corpus, read_manifest, write_manifest
from downstream.metrics import Metric, error_rate_tally
from downstream.config import AdamW, Minibatch, ProbeConfig
from downstream.sources import frame_counts
from downstream.tasks import LabelSource, TaskSpec, ctc_greedy, ctc_loss, linear_head
from tests.fixtures import make_tiny_corpus
from tests.test_corpora_readers import _timit

QUIET = dict(progress=False, report=False)


def _cfg(corpus: Path, tmp: Path, **kw) -> BenchmarkConfig:
    base = BenchmarkConfig(corpus=str(corpus), upstreams=("mel",), modes="last", fractions=(1.0,), seeds=1,
                           probe=ProbeConfig(Minibatch(AdamW(lr=3e-2), batch_size=4, min_eval_steps=3),
                                             patience=3, max_steps=60),
                           results_dir=tmp / "results", cache_dir=tmp / "cache", runs_dir=tmp / "runs", **QUIET)
    return replace(base, **kw)


# ---------------------------------------------------------------- a task the registry does not know


def _broad(corpus, utts, split, rule):
    """Vowel "a" (0) vs consonant "b" / "c" (1) in order, runs merged, silence dropped: a label sequence."""
    out = []
    for u in utts:
        s = [0 if seg.phone == "a" else 1 for seg in u.alignment if seg.phone != "sil"]
        out.append(np.array([c for k, c in enumerate(s) if k == 0 or c != s[k - 1]], dtype=np.int64))
    return out


def _broad_error(hyps, refs) -> float:
    errors, total = error_rate_tally(hyps, refs)
    return errors / total


# an error rate the toolkit does not define, lower is better, in [0, inf) (insertions)
BER = Metric("ber", "lower", _broad_error, bounds=(0.0, math.inf), label="BER",
             description="broad-class error rate: edit distance / reference length")
BROAD = TaskSpec("broad_ctc", LabelSource("broad", "sequence", lambda c: ["vowel", "consonant"], _broad),
                 "sequence", linear_head, BER, linear=False, loss=ctc_loss, decode=ctc_greedy, engine="ctc",
                 description="Linear(D, 2 + blank) per frame, CTC, greedy decoding")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tasks") / "corpus"
    make_tiny_corpus(root, n_speakers=3, per_speaker={"train": 6, "dev": 2, "test": 2}, trial_speakers=4)
    return root


def test_a_new_task_with_a_new_level_and_a_lower_is_better_metric_runs_to_a_row_a_table_and_a_plot(
        tiny, tmp_path, monkeypatch):
    """Registered from here alone (a sequence-level task, a level the legacy probes do not have, scored by an error
    rate): rows, the ranked table, the overview's best cell, the REPORT.md overview and the plots all take the
    minimum as the best. A consumer that assumed accuracy ranks the worst upstream first and fails."""
    monkeypatch.setitem(tasks_module.ALL_TASKS, BROAD.name, BROAD)
    cfg = _cfg(tiny, tmp_path, upstreams=("mel", "mockingjay_random:small"), tasks=("broad_ctc",),
               fractions=(0.5, 1.0))
    stats = runner.run_benchmark(cfg, log=lambda *_: None)
    rows = read_rows(tmp_path / "results" / "runs.csv")
    assert stats.runs_done == len(rows) == 4 and {r["metric"] for r in rows} == {"ber"}
    assert metric_of("ber") is BER

    agg = aggregate_runs(read_runs(tmp_path / "results" / "runs.csv"))
    top = agg[agg["fraction"] == 1.0].set_index("upstream")["test_mean"]
    assert top.nunique() == 2, f"the two upstreams must differ for the test to tell min from max: {top.to_dict()}"
    best_upstream = top.idxmin()
    lb = leaderboard(agg, "broad_ctc")
    assert lb["upstream"].iloc[0] == best_upstream and lb["test_mean"].is_monotonic_increasing  # rank 1 = minimum

    cols, orows = overview(agg)
    j = next(i for i, c in enumerate(cols) if c.end == "largest")
    assert not cols[j].higher and cols[j].head == "BER ↓"
    best = [r for r in orows if r.cells[j].mark == "best"]
    assert [r.upstream for r in best] == [best_upstream]
    md = superb_markdown(agg)
    assert "broad_ctc<br>BER ↓" in md
    assert next(ln for ln in md.splitlines() if "**" in ln).startswith(f"| {best_upstream}:")

    # intervals are cut to the metric's range (an error rate's CI does not reach below 0), the best point is the min
    low, high = plots.interval("ber", np.array([1.0, 50.0]), np.array([3.0, 3.0]), 100.0)
    assert low.tolist() == [0.0, 47.0] and high.tolist() == [4.0, 53.0]
    assert plots.best_position(np.array([0.3, 0.1, 0.2]), "ber") == 1
    assert plots.best_position(np.array([0.3, 0.1, 0.2]), "frame_acc") == 0
    assert plots.metric_display("ber") == ("BER (%)", 100.0) and not plots.higher_is_better("ber")

    report = build_report(tmp_path / "results").read_text(encoding="utf-8")
    assert (tmp_path / "results" / "plots" / "ablation.png").is_file()
    assert (tmp_path / "results" / "tables" / "broad_ctc.md").is_file() and "BER ↓" in report
    assert "`broad_ctc` is exempt from the certificate" in report  # a CTC task: no logistic-regression reference
    assert "test BER (%) ↓" in (tmp_path / "results" / "tables" / "broad_ctc.md").read_text(encoding="utf-8")


def test_an_unknown_metric_is_an_error_naming_it():
    with pytest.raises(ValueError, match="metric 'nonesuch'.*register its task"):
        metric_of("nonesuch")


def test_science_checks_count_a_lower_error_as_the_win():
    """A mode whose error rate is lower beats the other: the gap is positive in the metric's direction."""
    from benchmark.report.checks import check_mode_beats

    base = dict(corpus="c", upstream="mockingjay", preset="small", ckpt_hash="h", task="phone_ctc", layer=-1,
                fraction=1.0, budget="converge", metric="per", n_seeds=3, test_ci95=0.001, dev_mean=0.2,
                params=1.0)
    agg = pd.DataFrame([{**base, "mode": "weighted_sum", "test_mean": 0.20},
                        {**base, "mode": "last", "layer": 3, "test_mean": 0.30}])
    c = check_mode_beats(agg, "weighted_sum", ("last",), "claim")
    assert c.verdict == "holds" and "+10.00" in c.detail, c.detail


# ---------------------------------------------------------------- phone_ctc and speaker_verification


def test_phone_ctc_and_speaker_verification_run_with_their_metrics(tiny, tmp_path):
    cfg = _cfg(tiny, tmp_path, tasks=("phone_ctc", "speaker_verification"), modes="last,weighted_sum",
               upstreams=("mel", "aalbert_random"))
    corpus = load_corpus(tiny)
    need = {n.spec: n for n in cache_needs(cfg, corpus)}["mel"]
    probe_frames = sum(int(frame_counts(need.shape.frame_rule, corpus.utterances(s)).sum()) for s in PROBE_SPLITS)
    assert need.frames > probe_frames  # the trial utterances are extracted too
    stats = runner.run_benchmark(cfg, log=lambda *_: None)
    rows = read_rows(tmp_path / "results" / "runs.csv")
    assert stats.runs_done == len(rows) == 2 * (1 + 2)  # mel: last only; aalbert_random: last, weighted_sum
    metrics = {r["task"]: r["metric"] for r in rows}
    assert metrics == {"phone_ctc": "per", "speaker_verification": "eer"}
    assert all(0 <= float(r["test_metric"]) for r in rows)
    assert all(0 <= float(r["test_metric"]) <= 1 for r in rows if r["task"] == "speaker_verification")
    # minDCF (p_target 0.01) is verification's second score, in [0, 1]; CTC has none
    assert all(0 <= float(r["test_utt_metric"]) <= 1 for r in rows if r["task"] == "speaker_verification")
    assert all(r["test_utt_metric"] == "" for r in rows if r["task"] == "phone_ctc")
    ws = [r for r in rows if r["mode"] == "weighted_sum"]
    assert ws and all(len(r["layer_weights"].split(";")) == 4 for r in ws)
    for r in rows:  # PER is a sum over test utterances: kept per utterance; EER of trials is not
        units = read_outcomes(tmp_path / "results", r["run_id"])
        if r["task"] == "speaker_verification":
            assert units is None
        else:
            assert units is not None and len(units[0]) == len(corpus.utterances("test"))
            assert units[0].sum() / units[1].sum() == pytest.approx(float(r["test_metric"]), abs=1e-6)
    # the trial utterances have cache splits of their own, counted by the cache's size
    names = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert any("-dev-speaker_trials-" in n for n in names) and any("-test-speaker_trials-" in n for n in names), names
    assert runner.run_benchmark(cfg, log=lambda *_: None).runs_done == 0  # rows found again by run id
    report = build_report(tmp_path / "results").read_text(encoding="utf-8")
    assert "PER ↓" in report and "EER ↓" in report and "test minDCF ↓" in report
    reasons = exempt_tasks(["phone_ctc", "speaker_verification", "phone_linear"])
    assert set(reasons) == {"phone_ctc", "speaker_verification"}
    assert "not convex" in reasons["phone_ctc"] and "trials" in reasons["speaker_verification"]
    for task, reason in reasons.items():
        assert f"`{task}` is exempt from the certificate: {reason}" in report


def test_the_main_job_plans_the_superb_tasks_and_keeps_the_legacy_ones():
    cfg = main_job()
    assert MAIN_TASKS[:4] == ("phone_linear", "phone_1hidden", "speaker_utterance", "speaker_frame")
    assert {"phone_ctc", "speaker_verification"} <= set(MAIN_TASKS)
    for t in ("phone_ctc", "speaker_verification"):
        assert t in cfg.task_fractions and t in cfg.task_seeds and t in cfg.task_probes
    for t in MAIN_TASKS[:4]:  # the legacy probes' plan (and so their run ids) is the default one
        assert t not in cfg.task_fractions and t not in cfg.task_seeds


def test_the_main_job_runs_keyword_spotting_on_the_built_in_keyword_corpus(tmp_path):
    """keywords reads its own corpus (the speech corpus has no keyword labels): the plan splits by corpus, the main
    corpus first; --corpus puts every task on the one corpus given (and leaves out, with a note, what it cannot serve)."""
    from benchmark.cli import build_parser, config_from_args

    cfg = main_job()
    assert "keywords" in MAIN_TASKS and cfg.corpus_of("keywords") == "synth" + "_keywords"
    parts = cfg.by_corpus()
    assert [(p.corpus, p.tasks) for p in parts] == [("synth", MAIN_TASKS[:-1]), ("synth_keywords", ("keywords",))]
    assert all(not p.task_corpora for p in parts)
    one = replace(cfg, task_corpora={})
    assert [p.corpus for p in one.by_corpus()] == ["synth"]
    plain = make_tiny_corpus(tmp_path / "c", n_speakers=2, per_speaker={"train": 2, "dev": 1, "test": 1})
    given = config_from_args(build_parser().parse_args(["--corpus", str(plain.root), "--dry-run",
                                                        "--results-dir", str(tmp_path / "results")]))
    assert given.task_corpora == {} and [p.corpus for p in given.by_corpus()] == [str(plain.root)]
    assert "keywords" not in given.tasks  # no keyword labels: left out with a note


def test_tasks_on_two_corpora_run_in_one_job_to_one_report(tiny, tmp_path):
    """A job whose keyword task reads a Speech Commands folder and whose phone task reads the speech corpus: rows on
    both corpora, each task under its own name in the tables (no corpus prefix: no task is on both), and 10-ms mel,
    whose identity holds each corpus's normalisation statistics, one row of the overview with both cells."""
    from corpora.speech_commands import prepare_speech_commands
    from tests.test_keywords import speech_commands_folder

    kw = prepare_speech_commands(tmp_path / "kw", root=str(speech_commands_folder(tmp_path / "sc")), progress=False,
                                 workers=1)
    cfg = _cfg(tiny, tmp_path, tasks=("phone_linear", "keywords"), task_corpora={"keywords": str(kw.root)},
               report=True)
    stats = runner.run_benchmark(cfg, log=lambda *_: None)
    assert stats.runs_done == 2
    runs = read_runs(tmp_path / "results" / "runs.csv")
    assert dict(zip(runs["task"], runs["corpus"])) == {"phone_linear": load_corpus(tiny).name, "keywords": kw.name}
    assert runs["ckpt_hash"].nunique() == 2  # mel's statistics differ by corpus
    assert {p.stem for p in (tmp_path / "results" / "tables").glob("*.csv")} >= {"phone_linear", "keywords"}
    cols, rows = overview(aggregate_runs(runs))
    assert [c.task for c in cols] == ["keywords", "phone_linear"]
    assert len(rows) == 1 and all(c.text != "-" for c in rows[0].cells), rows
    assert "@" not in rows[0].name
    again = runner.run_benchmark(cfg, log=lambda *_: None)  # both corpora's rows are found again: nothing retrained
    assert again.runs_done == 0 and again.runs_skipped == 2
    # the certificate fits both corpora's references from one queue: the same lines as one call per corpus
    from benchmark.report.convergence import CONVERGENCE_FILE, certify

    speech, results = load_corpus(tiny), tmp_path / "results"
    both = certify(results, [speech, kw], cfg.cache_dir, log=lambda *_: None, progress=False)
    written = pd.read_csv(results / CONVERGENCE_FILE, dtype={"run_id": str, "ckpt_hash": str})
    assert sorted(both["run_id"]) == sorted(written["run_id"]) == sorted(runs["run_id"])
    (results / CONVERGENCE_FILE).unlink()
    one_by_one = pd.concat([certify(results, c, cfg.cache_dir, log=lambda *_: None, progress=False)
                            for c in (speech, kw)])
    key = ["run_id", "reference_l2", "reference_dev", "reference_test", "reference_iters", "passes"]
    pd.testing.assert_frame_equal(both[key].sort_values("run_id").reset_index(drop=True),
                                  one_by_one[key].sort_values("run_id").reset_index(drop=True))


# ---------------------------------------------------------------- a corpus that cannot serve a planned task


def _cli(corpus: Path, tmp: Path, task: str, *more: str) -> list[str]:
    return ["--corpus", str(corpus), "--upstream", "mel", "--task", task, "--mode", "last", "--fractions", "1",
            "--seeds", "1", "--no-progress", "--results-dir", str(tmp / "results"), "--cache-dir", str(tmp / "cache"),
            "--runs-dir", str(tmp / "runs"), "--data-dir", str(tmp / "data"), *more]


def _fails(argv: list[str], tmp: Path, capsys, *expect: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("run_benchmark.py: error: ") and err.count("\n") == 1, err
    for e in expect:
        assert e in err, (e, err)
    assert not any((tmp / d).exists() for d in ("results", "cache", "runs", "data")), "nothing may be written"


def test_phone_ctc_without_phone_transcriptions_is_one_line(tmp_path, capsys):
    corpus = make_tiny_corpus(tmp_path / "c", n_speakers=2, per_speaker={"train": 2, "dev": 1, "test": 1})
    dev = read_manifest(corpus.root / "dev.jsonl")
    write_manifest(corpus.root / "dev.jsonl", [replace(u, alignment=None) for u in dev])
    out = tmp_path / "out"
    for argv in (_cli(corpus.root, out, "phone_ctc"), _cli(corpus.root, out, "phone_ctc", "--dry-run")):
        _fails(argv, out, capsys, "task phone_ctc", "dev.jsonl", "no phone transcription")


def test_speaker_verification_without_trial_speakers_is_one_line(tmp_path, capsys):
    corpus = make_tiny_corpus(tmp_path / "c", n_speakers=2, per_speaker={"train": 2, "dev": 1, "test": 1})
    out = tmp_path / "out"
    _fails(_cli(corpus.root, out, "speaker_verification"), out, capsys, "task speaker_verification",
           "trials.jsonl: missing", "no held-out trial speakers")
    _fails(_cli(corpus.root, out, "phone_linear,speaker_verification", "prepare"), out, capsys, "trials.jsonl")


def test_default_tasks_a_corpus_cannot_serve_are_left_out_with_a_note(tmp_path, capsys):
    """Without --task, the main job on a corpus without trial speakers (LibriSpeech) plans the other tasks."""
    corpus = make_tiny_corpus(tmp_path / "c", n_speakers=2, per_speaker={"train": 2, "dev": 1, "test": 1})
    argv = _cli(corpus.root, tmp_path / "out", "x")
    del argv[argv.index("--task"): argv.index("--task") + 2]
    assert main(["--dry-run", *argv]) == 0
    out = capsys.readouterr().out
    assert "note: default task speaker_verification left out: " in out and "trials.jsonl: missing" in out
    planned = re.findall(r"^\s+\S+\s+(\S+)\s+\d+$", out, re.M)
    assert "phone_ctc" in planned and "speaker_verification" not in planned, out


def test_closed_set_speaker_task_on_timit_is_one_line(tmp_path, capsys, rng):
    from corpora import prepare_corpus

    _timit(tmp_path / "TIMIT", rng)
    prepare_corpus("timit", tmp_path / "timit", root=str(tmp_path / "TIMIT"), progress=False)
    out = tmp_path / "out"
    for task in ("speaker_utterance", "speaker_frame", "speaker_verification"):
        _fails(_cli(tmp_path / "timit", out, task), out, capsys, f"task {task}", "corpus.json", "open-set")
