"""Harness end to end on a tiny corpus: rows, skip on re-run, --force, kill-safety, leaderboard, CLI errors."""
from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import benchmark.run.runner as runner
from benchmark.cli import main
from benchmark.plan.config import BenchmarkConfig
from benchmark.plan.presets import MAIN_TASKS
from benchmark.plan.runs import parse_fractions
from benchmark.record.results import append_row, read_rows
from benchmark.record.schema import RUN_COLUMNS
from downstream.config import AdamW, Minibatch, ProbeConfig
from tests.fixtures import make_tiny_corpus, perf_script


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("harness") / "corpus"
    make_tiny_corpus(root, n_speakers=3, per_speaker={"train": 4, "dev": 1, "test": 1})
    return root


def _cfg(corpus_dir: Path, tmp: Path, **kw) -> BenchmarkConfig:
    base = BenchmarkConfig(corpus=str(corpus_dir), upstreams=("mel", "aalbert_random"),
                           tasks=("phone_linear", "speaker_frame"), modes="last,weighted_sum", fractions=(0.5, 1.0),
                           seeds=2, probe=ProbeConfig(Minibatch(AdamW(lr=1e-2), eval_every=3, batch_size=4),
                                                      max_steps=6),
                           results_dir=tmp / "results", cache_dir=tmp / "cache", runs_dir=tmp / "runs",
                           progress=False, report=False)
    return replace(base, **kw)


def test_rows_skip_force_and_determinism(corpus_dir, tmp_path):
    cfg = _cfg(corpus_dir, tmp_path)
    stats = runner.run_benchmark(cfg, log=lambda *_: None)
    rows = read_rows(tmp_path / "results" / "runs.csv")
    # mel: 1 mode (weighted_sum = last) ; aalbert_random: 2 modes; x 2 tasks x 2 fractions x 2 seeds
    assert stats.runs_done == len(rows) == (1 + 2) * 2 * 2 * 2
    assert all(list(r) == list(RUN_COLUMNS) for r in rows)
    ws = [r for r in rows if r["mode"] == "weighted_sum"]
    assert ws and all(len(r["layer_weights"].split(";")) == 4 and r["layer"] == "-1" for r in ws)
    sf = [r for r in rows if r["task"] == "speaker_frame"]
    assert all(r["test_utt_metric"] != "" for r in sf) and all(r["test_utt_metric"] == "" for r in rows if r not in sf)
    assert {r["fraction"] for r in rows} == {"0.5", "1.0"} and len({r["run_id"] for r in rows}) == len(rows)
    assert (tmp_path / "results" / "leaderboard.csv").is_file()
    # re-run: nothing new; --force: same metrics again (deterministic per seed, whether the probes ran on 2
    # worker threads as the first time or on 1 now), rows appended
    assert cfg.probe_workers == 2 and runner.run_benchmark(cfg, log=lambda *_: None).runs_done == 0
    runner.run_benchmark(replace(cfg, force=True, upstreams=("aalbert_random",), probe_workers=1), log=lambda *_: None)
    again = read_rows(tmp_path / "results" / "runs.csv")[len(rows):]
    first = {r["run_id"]: (r["dev_metric"], r["test_metric"], r["layer_weights"]) for r in rows}
    assert again and all(first[r["run_id"]] == (r["dev_metric"], r["test_metric"], r["layer_weights"]) for r in again)
    with open(tmp_path / "results" / "leaderboard.csv") as f:
        board = list(csv.DictReader(f))
    assert {"test_mean", "test_std", "test_ci95", "n_seeds"} <= set(board[0]) and {b["n_seeds"] for b in board} == {"2"}


def test_killed_run_leaves_no_partial_row_and_is_redone(corpus_dir, tmp_path, monkeypatch):
    """A group (every fraction and seed of a task and mode) writes its rows when it finishes: killed half-way, it
    leaves none of them, and the next invocation trains exactly what is missing."""
    cfg = _cfg(corpus_dir, tmp_path, upstreams=("mel",), tasks=("phone_linear", "speaker_frame"), fractions=(1.0,))
    real = runner.train_probes
    calls = {"n": 0}

    def dies_on_second(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the process is killed half-way through the second group
        return real(*a, **k)

    monkeypatch.setattr(runner, "train_probes", dies_on_second)
    # every run costed alike: the two groups are equal, so neither is split (benchmark.run.runner.balance)
    monkeypatch.setattr(runner, "expected_seconds", lambda *a: 1.0)
    with pytest.raises(KeyboardInterrupt):
        runner.run_benchmark(cfg, log=lambda *_: None)
    # two worker threads: the group beside the killed one may still finish and write its (complete) rows
    n = len(read_rows(tmp_path / "results" / "runs.csv")) if (tmp_path / "results" / "runs.csv").exists() else 0
    assert n in (0, 2) and cfg.probe_workers == 2
    monkeypatch.setattr(runner, "train_probes", real)
    assert runner.run_benchmark(cfg, log=lambda *_: None).runs_done == 4 - n  # only the missing ones
    rows = read_rows(tmp_path / "results" / "runs.csv")
    assert len(rows) == 4 and len({r["run_id"] for r in rows}) == 4


def test_command_is_recorded_and_cited(corpus_dir, tmp_path):
    from benchmark.record.schema import COMMAND_FILE

    cfg = _cfg(corpus_dir, tmp_path, upstreams=("mel",), tasks=("phone_linear",), seeds=1, command="python run_benchmark.py --x")
    runner.run_benchmark(cfg, log=lambda *_: None)
    runner.run_benchmark(replace(cfg, seeds=2, command="python run_benchmark.py --y"), log=lambda *_: None)
    runner.run_benchmark(replace(cfg, seeds=2, command="python run_benchmark.py --z"), log=lambda *_: None)  # nothing new
    lines = (tmp_path / "results" / COMMAND_FILE).read_text().splitlines()
    assert [ln.split("   #")[0] for ln in lines] == ["python run_benchmark.py --x", "python run_benchmark.py --y"]
    assert "2 runs in" in lines[0] and "cpu" in lines[0]


def test_append_row_rejects_bad_rows_and_foreign_header(tmp_path):
    with pytest.raises(ValueError, match="missing columns"):
        append_row(tmp_path / "runs.csv", {"run_id": "x"})
    (tmp_path / "old.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="old.csv: header differs"):
        append_row(tmp_path / "old.csv", dict.fromkeys(RUN_COLUMNS, 1))


def test_finetune_runs_at_the_end_fractions(corpus_dir, tmp_path):
    from benchmark.plan.runs import expand_runs

    cfg = _cfg(corpus_dir, tmp_path, tasks=("phone_linear", "speaker_utterance", "speaker_frame"),
               fractions=(0.1, 0.5, 1.0))
    runs = expand_runs(cfg, "mockingjay", 4, [0.1, 0.5, 1.0], [])
    ft = [r for r in runs if r.finetune]
    assert {(r.task, r.fraction) for r in ft} == {("phone_linear", 0.1), ("phone_linear", 1.0)}
    largest = expand_runs(replace(cfg, finetune_smallest=False), "mockingjay", 4, [0.1, 0.5, 1.0], [])
    assert {(r.task, r.fraction) for r in largest if r.finetune} == {("phone_linear", 1.0)}
    assert not [r for r in expand_runs(cfg, "mel", 1, [0.1, 1.0], []) if r.finetune]


def test_the_main_job_is_the_full_job_at_the_ends_of_the_ablation(capsys):
    """The default plan: the full job's tasks, upstreams and settings at the smallest and largest default fraction x
    2 seeds, no fine-tuning; its runs are the full job's (the same run ids), so the full job's rows serve it."""
    from types import SimpleNamespace

    from benchmark.cli import main
    from benchmark.plan.presets import MAIN_SEEDS, full_job, main_job
    from benchmark.plan.runs import choose_fractions, expand_runs

    main_cfg, full = main_job(), full_job()
    assert (main_cfg.seeds, full.seeds) == (MAIN_SEEDS, 3) == (2, 3)
    assert main_cfg.fraction_ends and not full.fraction_ends and not main_cfg.finetune_ends and full.finetune_ends
    assert main_cfg.tasks == full.tasks and main_cfg.upstreams == full.upstreams
    assert main_cfg.task_probes == full.task_probes and main_cfg.probe == full.probe
    # 1,200 train utterances of 100 speakers, as the built-in corpus: the default fractions are 1, 5, 12.5 and 100 %
    corpus = SimpleNamespace(utterances=lambda split: [SimpleNamespace(speaker=f"s{i % 100}") for i in range(1200)])
    logged: list[str] = []
    ends = choose_fractions(main_cfg, corpus, log=logged.append)
    assert ends == [0.01, 1.0] and choose_fractions(full, corpus, log=lambda *_: None) == [0.01, 0.05, 0.125, 1.0]
    assert any("0.05, 0.125 left out" in m and "--full" in m for m in logged)
    assert choose_fractions(replace(main_cfg, fractions=(0.05, 0.125)), corpus, log=lambda *_: None) == [0.05, 0.125]
    small = {(r.task, r.mode.label, r.fraction, r.seed, r.finetune) for r in expand_runs(main_cfg, "mockingjay", 4, ends, [])}
    big = {(r.task, r.mode.label, r.fraction, r.seed, r.finetune)
           for r in expand_runs(full, "mockingjay", 4, [0.01, 0.05, 0.125, 1.0], [])}
    assert small < big and not any(ft for *_, ft in small) and any(ft for *_, ft in big)
    assert {f for _, _, f, _, _ in small} >= {0.125, 1.0, 0.01}  # phone_ctc / verification keep their own fractions
    assert main(["--quick", "--full", "--dry-run"]) == 2
    assert "--quick and --full" in capsys.readouterr().err


def test_task_modes_narrow_one_task_and_mode_widens_them_all(corpus_dir, tmp_path):
    """The main job's MLP probe reads the last layer only; --mode on the command line applies to every task."""
    from benchmark.plan.runs import expand_runs
    from benchmark.plan.presets import main_job

    cfg = _cfg(corpus_dir, tmp_path, tasks=("phone_linear", "phone_1hidden"), task_modes={"phone_1hidden": "last"})
    runs = expand_runs(cfg, "mockingjay", 4, [1.0], [])
    assert {(r.task, r.mode.label) for r in runs if not r.finetune} == {
        ("phone_linear", "last"), ("phone_linear", "weighted_sum"), ("phone_1hidden", "last")}
    assert main_job().task_modes == {"phone_1hidden": "last"}
    from benchmark.cli import build_parser, config_from_args

    cli = config_from_args(build_parser().parse_args(["--mode", "weighted_sum", "--task", "phone_1hidden"]))
    assert {r.mode.label for r in expand_runs(cli, "mockingjay", 4, [1.0], [])} >= {"weighted_sum"}


def test_balance_splits_a_group_that_would_hold_one_worker_alone():
    """A group costlier than an even share of the work (the 10-ms mel MLP beside three quick groups) is split, its
    probes dealt to two halves; every probe is trained exactly once, costliest groups first."""
    cost = lambda job: job[1]  # noqa: E731
    mlp = [("mlp", c) for c in (10, 10, 10, 1, 1, 1)]
    quick = [[("a", 2), ("a", 1)], [("b", 2)], [("c", 1)]]
    out = runner.balance([mlp, *quick], cost, workers=2)
    assert sorted(j for g in out for j in g) == sorted(mlp + [j for g in quick for j in g])
    loads = [sum(cost(j) for j in g) for g in out]
    assert loads == sorted(loads, reverse=True) and max(loads) <= sum(loads) / 2
    assert len([g for g in out if g[0][0] == "mlp"]) >= 2
    assert runner.balance([mlp, *quick], cost, workers=1) == [mlp, *quick]  # one worker: nothing to balance


def test_balance_keeps_the_probes_of_one_solve_together_and_costs_them_once():
    """Probes that one solve serves (the L2 path at 100 % of the labels: every seed on the same examples from the same
    start) are never dealt to two halves, which would solve the same path twice; and they count once toward a
    group's load, so a group of four seeds of one solve is not split beside a group that costs more than one."""
    cost = lambda job: job[1]  # noqa: E731
    solve = lambda job: job[2]  # noqa: E731
    path = [tuple(j) for j in (["path", 10, "all"], ["path", 10, "all"], ["path", 1, "a"], ["path", 1, "b"])]
    other = [tuple(j) for j in (["sgd", 9, "x"], ["sgd", 3, "y"])]  # every job its own object, as the runner's
    out = runner.balance([path, other], cost, workers=2, solve=solve)
    halves = [g for g in out if g[0][0] == "path"]
    assert sum(len(g) for g in halves) == 4 and [j for g in halves for j in g].count(path[0]) == 2
    assert all(all(j in g for j in path[:2]) or not any(j in g for j in path[:2]) for g in halves)
    assert len(halves) == 1  # the one solve costs 10, plus 1 + 1: not more than half of 12 + 12
    assert len([g for g in runner.balance([path, other], cost, workers=2) if g[0][0] == "path"]) == 2  # costed 22


def test_cli_errors_list_valid_choices(capsys, corpus_dir, tmp_path):
    for argv, expect in ((["--upstream", "mel,wav2vec"], "valid: mel, mockingjay"),
                         (["--task", "asr"], "valid: phone_linear"), (["--mode", "mean"], "valid: last"),
                         (["--fractions", "0,1"], "outside (0, 1]"), (["--seeds", "0"], ">= 1"),
                         (["--ckpt", "mel=/x"], "not a pretrained upstream"),
                         (["--ckpt", "aalbert=/nonexistent"], "not a checkpoint directory"),
                         (["--corpus", "nope", "--dry-run"], "valid names"), (["--workers", "0"], ">= 1"),
                         (["--device", "gpu0"], "not a torch device")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert expect in err and err.count("\n") == 1 and err.startswith("run_benchmark.py: error: "), (argv, err)
    if not torch.cuda.is_available():
        assert main(["--device", "cuda", "--dry-run"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    assert BenchmarkConfig().device == ("cuda" if torch.cuda.is_available() else "cpu")  # a GPU is used when present
    assert parse_fractions("1,0.01,0.1") == (0.01, 0.1, 1.0)
    assert main(["--list"]) == 0 and "speaker_frame" in capsys.readouterr().out
    assert main(["--dry-run", "--corpus", str(corpus_dir), "--upstream", "mel,aalbert_random", "--mode", "layers",
                 "--fractions", "1", "--seeds", "2", "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "layer=3" in out and "total: " in out and not (tmp_path / "runs.csv").exists()


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").environ.get("SPEECHPROBE_SLOW"),
                    reason="end-to-end --quick job (minutes: corpus, pretraining, probes); set SPEECHPROBE_SLOW=1")
def test_quick_job_end_to_end(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    argv = [sys.executable, str(root / "run_benchmark.py"), "--quick", "--no-progress", "--data-dir", str(tmp_path / "data"),
            "--results-dir", str(tmp_path / "results"), "--cache-dir", str(tmp_path / "cache"),
            "--runs-dir", str(tmp_path / "runs")]
    subprocess.run(argv, cwd=root, check=True, timeout=600)
    rows = read_rows(tmp_path / "results" / "runs.csv")
    assert {r["upstream"] for r in rows} == {"mel", "mockingjay", "aalbert", "mockingjay_random", "aalbert_random"}
    assert {r["mode"] for r in rows} == {"last", "weighted_sum", "finetune"}
    # the four legacy probes and SUPERB's phoneme recognition, speaker verification and keyword spotting: the main
    # job's tasks, keyword spotting on the built-in keyword corpus built beside the speech corpus
    assert {r["task"] for r in rows} == {"phone_linear", "phone_1hidden", "speaker_utterance", "speaker_frame",
                                         "phone_ctc", "speaker_verification", "keywords"} == set(MAIN_TASKS)
    assert {r["corpus"] for r in rows if r["task"] == "keywords"} == {"synth_keywords"}
    assert {r["corpus"] for r in rows if r["task"] != "keywords"} == {"synth"}  # data/synth_quick
    assert (tmp_path / "results" / "leaderboard.csv").is_file()
    subprocess.run(argv, cwd=root, check=True, timeout=600)  # second run: everything reused, nothing added
    assert len(read_rows(tmp_path / "results" / "runs.csv")) == len(rows)


def test_no_progress_silences_every_bar(tmp_path, capsys):
    """--no-progress: no bar on stderr, including the feature statistics that mel computes on a fresh corpus."""
    corpus = tmp_path / "corpus"
    make_tiny_corpus(corpus, n_speakers=2, per_speaker={"train": 2, "dev": 1, "test": 1})
    argv = ["--corpus", str(corpus), "--upstream", "mel", "--task", "phone_linear", "--mode", "last", "--fractions", "1",
            "--seeds", "1", "--steps", "2", "--no-finetune", "--no-progress", "--results-dir", str(tmp_path / "results"),
            "--cache-dir", str(tmp_path / "cache"), "--runs-dir", str(tmp_path / "runs"), "--data-dir", str(tmp_path)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert list((corpus / "stats").glob("*.json")), "the statistics were computed in this run"
    assert "feature stats" not in err and "it/s" not in err and "%|" not in err, err


def test_probe_floor_counts_the_frame_probes_of_a_run(corpus_dir, tmp_path, capsys):
    """perf/probe_floor.py on a run's rows and cache: every frame-probe row counted, the floor (own rows only) at most
    what the engine computes (full batch slots), and rows it cannot count an error naming the file."""
    import json

    floor = perf_script("probe_floor")
    cfg = _cfg(corpus_dir, tmp_path)
    args = ["--results-dir", str(tmp_path / "results"), "--corpus", str(corpus_dir), "--cache-dir", str(tmp_path / "cache")]
    assert floor.main(args) == 2 and "runs.csv" in capsys.readouterr().err  # no run yet
    runner.run_benchmark(cfg, log=lambda *_: None)
    assert floor.main([*args, "--out", str(tmp_path / "floor.json")]) == 0
    res = json.loads((tmp_path / "floor.json").read_text())
    assert res["rows"] == (1 + 2) * 2 * 2 * 2 and {r["task"] for r in res["by_task"]} == {"phone_linear", "speaker_frame"}
    total = res["total"]
    assert 0 < total["floor_tflop"] <= total["computed_tflop"] and total["floor_seconds"] > 0
    assert total["eager_seconds"] > 0 and res["recorded_over_eager"] > 0 and set(res["eager_step_gflops"]) == set(
        res["step_gflops"])  # the engine's own step timed for every head shape the products were


def test_probe_groups_compares_a_group_with_its_old_decoding(corpus_dir, tmp_path, capsys):
    """perf/probe_groups.py on a run's cache: the group trained again with dev and test decoded the old way (float32
    logits, Tensor.argmax) gives every probe the same row, and the group's dev scoring is timed and counted."""
    import json

    groups = perf_script("probe_groups")
    runner.run_benchmark(_cfg(corpus_dir, tmp_path, upstreams=("aalbert_random",), tasks=("speaker_frame",)),
                         log=lambda *_: None)
    out = tmp_path / "groups.json"
    assert groups.main(["--upstream", "aalbert_random", "--task", "speaker_frame", "--mode", "weighted_sum",
                        "--fractions", "0.5,1", "--seeds", "2", "--corpus", str(corpus_dir), "--cache-dir",
                        str(tmp_path / "cache"), "--decode", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["probes"] == 4 and res["decode_same_rows"] is True
    assert res["dev_scorings"] > 0 and 0 <= res["dev_seconds"] <= res["group_seconds"] + 0.05


def test_probe_groups_times_an_l2_path_phase_by_phase(corpus_dir, tmp_path):
    """perf/probe_groups.py on an L2-path group: its points phase by phase (float32 then float64 at every L2 strength
    it visited, their iterations the rows' steps), and the group again with every point in float64 and without the
    flush, each with its own rows."""
    import json

    groups = perf_script("probe_groups")
    runner.run_benchmark(_cfg(corpus_dir, tmp_path, upstreams=("mel",), tasks=("speaker_utterance",)),
                         log=lambda *_: None)
    out = tmp_path / "path.json"
    assert groups.main(["--upstream", "mel", "--task", "speaker_utterance", "--mode", "last", "--fractions", "1",
                        "--seeds", "1", "--corpus", str(corpus_dir), "--cache-dir", str(tmp_path / "cache"),
                        "--path-threads", "1", "--phases", "--float64", "--no-flush", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["upstream"] == "mel:default" and res["ckpt_hash"]  # which cached model it measured
    phases = res["phases"]
    assert [p["dtype"] for p in phases] == ["float32", "float64"] * (len(phases) // 2) and len(phases) >= 2
    assert [p["l2"] for p in phases[::2]] == [p["l2"] for p in phases[1::2]]
    assert sum(p["iterations"] for p in phases) == res["steps"][0] > 0
    devs = [p["dev"] for p in phases[1::2]]  # the dev score after each point: the row's is the one it kept
    assert all("dev" not in p for p in phases[::2]) and all(0 <= d <= 100 for d in devs) and res["dev"][0] in devs
    assert res["float64_steps"][0] > 0 and res["no_flush_steps"][0] > 0
    assert len(res["float64_test"]) == len(res["no_flush_test"]) == 1


def test_extract_threads_finds_the_pinned_features_the_same_on_every_thread_count(corpus_dir, tmp_path):
    """perf/extract_threads.py: the pinned features are the same bits from a process on 1 or 3 threads and with
    batches side by side, and equal those of 2 unpinned threads (the rule results/ was computed under)."""
    import json

    script = perf_script("extract_threads")
    out = tmp_path / "threads.json"
    assert script.main(["--corpus", str(corpus_dir), "--split", "train", "--upstreams", "mel,mockingjay_random",
                        "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [r["upstream"] for r in res["rows"]] == ["mel", "mockingjay_random"] and res["upstream_threads"] == 2
    for r in res["rows"]:
        assert all(r["pinned_same_bits"].values()) and 2 in r["pinned_equals_unpinned_at"] and r["values"] > 0
    assert script.main(["--corpus", str(corpus_dir), "--upstreams", "nosuch"]) == 2  # named in a one-line error
