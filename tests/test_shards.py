"""Sharded sweeps: a deterministic, cost-balanced share per shard, rows in per-shard files, merged by `report`
into what one process gives; and a feature cache that two processes building the same entry at once share."""
from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from benchmark.cli import main
from benchmark.plan.config import BenchmarkConfig, Shard
from benchmark.plan.runs import expand_runs
from benchmark.plan.shards import (assign, expected_seconds, parse_shard, run_key, setup_seconds, shard_filter,
                                   shard_loads, shard_seconds, whole_plan)
from benchmark.record.results import RUNS_FILE, merge_shards, read_rows
from benchmark.record.schema import RUN_COLUMNS
from tests.fixtures import make_tiny_corpus

ROOT = Path(__file__).resolve().parent.parent
RESULT_FIELDS = ("dev_metric", "test_metric", "test_utt_metric", "best_step", "steps", "converged", "layer_weights",
                 "train_utts", "train_frames")


def full_job_plan() -> list:
    """The full job's runs on the speech corpus as every shard plans them (5 upstreams, 4 fractions, 3 seeds,
    fine-tuning at 100 %); its keyword runs are sharded on their own corpus the same way."""
    from benchmark.plan.presets import full_job

    cfg = full_job().by_corpus()[0]
    shapes = {"mel": (1, 80), "mockingjay": (4, 256), "aalbert": (4, 256), "mockingjay_random": (4, 256),
              "aalbert_random": (4, 256)}
    return [(r, L, D) for spec, (L, D) in shapes.items()
            for r in expand_runs(cfg, spec, L, [0.01, 0.05, 0.125, 1.0], [])]


def test_parse_shard_and_cli_errors(capsys):
    assert parse_shard("3/10") == parse_shard(" 3 / 10 ") and parse_shard("0/1").count == 1
    for argv, expect in ((["--shard", "3/2"], "--shard 3/2: I must be in 0..1"),
                         (["--shard", "2/2"], "--shard 2/2: I must be in 0..1"),
                         (["--shard", "x"], "--shard 'x': expected I/N"), (["--shard", "1/0"], "N must be >= 1"),
                         (["--shard=-1/3"], "expected I/N"), (["report", "--shard", "0/2"], "`run_benchmark.py report`"),
                         (["prepare", "--shard", "0/2"], "applies to run")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("run_benchmark.py: error: ") and err.count("\n") == 1 and expect in err, (argv, err)


def test_assignment_is_deterministic_complete_and_balanced():
    plan = full_job_plan()
    # the full job's run count: mel 4 tasks x 12, each Transformer 7 groups x 12, 2 fine-tunings; phone_ctc and
    # speaker_verification at 2 fractions x 1 seed: mel 2 x 2, each Transformer 2 tasks x 2 modes x 2
    assert len(plan) == 386 + 4 + 4 * 8
    for n in (1, 3, 10):
        shard_of = assign(plan, n)
        shuffled = plan[:]
        random.Random(n).shuffle(shuffled)
        assert assign(shuffled, n) == shard_of  # independent of the order the plan is listed in
        assert set(shard_of) == {run_key(r) for r, _, _ in plan} and set(shard_of.values()) == set(range(n))
        loads = shard_loads(plan, n)
        biggest = max(shard_seconds(r, L, D, 2) + setup_seconds(L, D) for r, L, D in plan)
        assert max(loads) - min(loads) <= biggest, (n, loads)  # greedy longest-first: within one item
    shard_of = assign(plan, 10)
    # the ten costliest runs (fine-tuning, phone_ctc at 100 %) spread over every shard
    heavy = [run_key(r) for r, L, D in sorted(plan, key=lambda p: -expected_seconds(*p))[:10]]
    assert len({shard_of[k] for k in heavy}) == 10
    # an upstream's runs cluster: on average a shard holds fewer upstreams than all 5 (set-up paid fewer times)
    held = [{k[0] for k, s in shard_of.items() if s == i} for i in range(10)]
    assert sum(map(len, held)) / 10 < 5


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shards") / "corpus"
    make_tiny_corpus(root, n_speakers=3, per_speaker={"train": 4, "dev": 1, "test": 1})
    return root


def _argv(corpus: Path, tmp: Path, results: str, cache: str) -> list[str]:
    return ["--corpus", str(corpus), "--upstream", "mel,aalbert_random", "--task", "phone_linear,speaker_utterance",
            "--mode", "last,weighted_sum", "--fractions", "0.5,1", "--seeds", "2", "--steps", "4", "--no-progress",
            "--data-dir", str(tmp / "data"), "--runs-dir", str(tmp / "runs"), "--results-dir", str(tmp / results),
            "--cache-dir", str(tmp / cache)]


def _results(path: Path) -> dict[str, tuple[str, ...]]:
    rows = read_rows(path)
    assert len({r["run_id"] for r in rows}) == len(rows), f"duplicate run ids in {path}"
    return {r["run_id"]: tuple(r[c] for c in RESULT_FIELDS) for r in rows}


def test_union_of_three_concurrent_shards_equals_one_process(corpus_dir, tmp_path, capsys):
    assert main(_argv(corpus_dir, tmp_path, "one", "cache_one")) == 0
    one = _results(tmp_path / "one" / RUNS_FILE)
    assert len(one) == (1 + 2) * 2 * 2 * 2  # mel: one mode; aalbert_random: two; x 2 tasks x 2 fractions x 2 seeds
    capsys.readouterr()
    assert main(["--dry-run", "--shard", "1/3", *_argv(corpus_dir, tmp_path, "sweep", "cache")]) == 0
    out = capsys.readouterr().out
    assert "shard 1/3:" in out and "% of the plan's expected cost" in out and "shards/1-of-3/runs.csv" in out
    # three real processes at once, on an empty shared cache: they extract the same upstreams concurrently
    procs = [subprocess.Popen([sys.executable, str(ROOT / "run_benchmark.py"), "--shard", f"{i}/3",
                               *_argv(corpus_dir, tmp_path, "sweep", "cache")], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(3)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(log[-2000:] for log in logs)
    shard_files = [tmp_path / "sweep" / "shards" / f"{i}-of-3" / RUNS_FILE for i in range(3)]
    parts = [_results(f) for f in shard_files]
    assert all(parts) and sum(map(len, parts)) == len(one)  # every shard ran something, no run twice
    assert not (tmp_path / "sweep" / RUNS_FILE).exists()  # shards never write the shared file
    assert main(["report", *_argv(corpus_dir, tmp_path, "sweep", "cache")]) == 0
    assert f"{len(one)} added, 0 duplicates dropped" in capsys.readouterr().out
    assert _results(tmp_path / "sweep" / RUNS_FILE) == one  # row by row: run ids and results
    assert (tmp_path / "sweep" / "REPORT.md").is_file() and (tmp_path / "sweep" / "leaderboard.csv").is_file()
    commands = (tmp_path / "sweep" / "command.txt").read_text().splitlines()
    assert sorted(c.split("--shard ")[1].split()[0] for c in commands) == ["0/3", "1/3", "2/3"]
    assert main(["report", *_argv(corpus_dir, tmp_path, "sweep", "cache")]) == 0  # merging again changes nothing
    assert f"0 added, {len(one)} duplicates dropped" in capsys.readouterr().out
    assert _results(tmp_path / "sweep" / RUNS_FILE) == one and len(read_rows(tmp_path / "sweep" / RUNS_FILE)) == len(one)
    # a shard run again skips what is recorded anywhere in the sweep (its own, the merged and other files)
    assert main(["--shard", "0/2", *_argv(corpus_dir, tmp_path, "sweep", "cache")]) == 0
    assert not (tmp_path / "sweep" / "shards" / "0-of-2" / RUNS_FILE).exists()
    cache = tmp_path / "cache"
    assert not [p for p in cache.rglob("*") if ".partial-" in p.name]
    assert len([d for d in cache.iterdir() if (d / "DONE").is_file()]) == 2 * 3  # 2 upstreams x 3 splits, once each


def _row(**kw) -> dict[str, object]:
    row: dict[str, object] = dict.fromkeys(RUN_COLUMNS, "x")
    row.update(run_id="r1", dev_metric="0.5", test_metric="0.6", date="2026-12-01", wall_seconds="1.0")
    row.update(kw)
    return row


def _write(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(RUN_COLUMNS), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def test_merge_drops_identical_duplicates_and_refuses_conflicts(tmp_path, capsys):
    root = tmp_path / "results"
    assert merge_shards(root) is None  # no shards: nothing to do, nothing written
    _write(root / RUNS_FILE, [_row()])
    _write(root / "shards" / "0-of-2" / RUNS_FILE, [_row(date="2026-12-02", wall_seconds="9.9"), _row(run_id="r2")])
    _write(root / "shards" / "1-of-2" / RUNS_FILE, [_row(run_id="r3")])
    assert merge_shards(root) == (2, 1)  # r1 again with other provenance only: a duplicate, dropped
    assert [r["run_id"] for r in read_rows(root / RUNS_FILE)] == ["r1", "r2", "r3"]
    assert read_rows(root / RUNS_FILE)[0]["date"] == "2026-12-01"
    bad = root / "shards" / "1-of-2" / RUNS_FILE
    _write(bad, [_row(run_id="r3"), _row(test_metric="0.7")])
    before = (root / RUNS_FILE).read_bytes()
    with pytest.raises(ValueError, match="run r1 is in .*results/runs.csv and in .*1-of-2/runs.csv with different "
                                         "results \\(test_metric 0.6 vs 0.7\\)"):
        merge_shards(root)
    assert (root / RUNS_FILE).read_bytes() == before  # nothing written
    assert main(["report", "--results-dir", str(root), "--upstream", "mel"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1-of-2/runs.csv with different results" in err and "runs.csv" in err


# -- the feature cache shared by processes --------------------------------------------------------------------------


def cache_job(corpus: str, cache_root: str, sync: str, me: str, other: str, no_lock: bool) -> None:
    """One of two processes building the same cache entry at the same time (run in a fresh interpreter)."""
    import errno

    import benchmark.cache.extract as cache
    from corpora.manifest import load_corpus
    from upstream.features import FeatureConfig
    from upstream.registry import build_upstream, upstream_identity

    def wait_for(name: str) -> None:
        (Path(sync) / f"{name}-{me}").touch()
        deadline = time.time() + 120
        while not (Path(sync) / f"{name}-{other}").exists():
            assert time.time() < deadline, f"the other process never reached {name}"
            time.sleep(0.01)

    real_extract = cache.extract_split
    if no_lock:  # a filesystem without file locks: both build, the second rename finds the entry there
        def no_flock(fd, op):
            raise OSError(errno.ENOLCK, "No locks available")

        def extract_both(*a, **k):
            real_extract(*a, **k)
            wait_for("extracted")  # both copies finished before either is renamed into place

        cache.fcntl.flock = no_flock  # type: ignore[attr-defined]
        cache.extract_split = extract_both
    else:
        def extract_slowly(*a, **k):
            time.sleep(1.0)  # the other process asks for the entry while this one holds the lock
            real_extract(*a, **k)

        cache.extract_split = extract_slowly
    c = load_corpus(corpus)
    up = build_upstream("aalbert_random", feature=FeatureConfig(norm="none")).eval()
    utts = c.utterances("train")
    logs: list[str] = []
    wait_for("ready")
    arrays, built = cache.ensure_split(Path(cache_root), upstream_identity("aalbert_random", None, up), up, c, "train",
                                       utts, progress=False, log=logs.append)
    hidden = np.asarray(arrays.hidden)
    (Path(sync) / f"result-{me}.json").write_text(json.dumps({
        "built": built, "logs": logs, "sum": float(hidden.astype(np.float64).sum()), "shape": list(hidden.shape)}))


@pytest.mark.parametrize("no_lock", [False, True], ids=["flock", "no-flock"])
def test_two_processes_build_one_cache_entry_at_once(corpus_dir, tmp_path, no_lock):
    from benchmark.cache.extract import cache_key
    from benchmark.cache.reader import entry_problem
    from corpora.manifest import load_corpus
    from upstream.features import FeatureConfig
    from upstream.registry import build_upstream, upstream_identity

    sync, cache_root = tmp_path / "sync", tmp_path / "cache"
    sync.mkdir()
    procs = []
    for me, other in (("a", "b"), ("b", "a")):
        code = (f"import sys, torch; sys.path.insert(0, {str(ROOT)!r}); torch.set_num_threads(1)\n"
                f"from tests.test_shards import cache_job\n"
                f"cache_job({str(corpus_dir)!r}, {str(cache_root)!r}, {str(sync)!r}, {me!r}, {other!r}, {no_lock})\n")
        procs.append(subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    a, b = (json.loads((sync / f"result-{k}.json").read_text()) for k in ("a", "b"))
    assert a["shape"] == b["shape"] and a["sum"] == b["sum"]  # both read the same entry
    if no_lock:
        assert a["built"] and b["built"]  # both extracted (no lock to wait on) ...
        assert sum("another process finished it first" in " ".join(r["logs"]) for r in (a, b)) == 1  # ... one won
    else:
        assert sorted([a["built"], b["built"]]) == [False, True]  # one built, the other waited and reused it
    c = load_corpus(corpus_dir)
    up = build_upstream("aalbert_random", feature=FeatureConfig(norm="none"))
    name, fields = cache_key(upstream_identity("aalbert_random", None, up), up, c, "train", c.utterances("train"))
    assert entry_problem(cache_root / name, fields) is None  # the entry is complete and intact
    assert sorted(p.name for p in cache_root.iterdir()) == [".locks", name]  # no staging folder left
    assert float(np.load(cache_root / name / "hidden.npy").astype(np.float64).sum()) == a["sum"]


def test_staging_folders_of_other_hosts_are_left_alone(tmp_path):
    from benchmark.cache.extract import _remove_orphans

    final = tmp_path / "mel-c-train-0123"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)  # a process that has exited
    import socket

    here = tmp_path / f".{final.name}.partial-{dead_pid}-abc123@{socket.gethostname()}"
    old_style = tmp_path / f".{final.name}.partial-{dead_pid}-abc123"
    elsewhere = tmp_path / f".{final.name}.partial-{dead_pid}-abc123@another-node"
    live = tmp_path / f".{final.name}.partial-{os.getpid()}-abc123@{socket.gethostname()}"
    for d in (here, old_style, elsewhere, live):
        d.mkdir()
    logs: list[str] = []
    _remove_orphans(final, logs.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([elsewhere.name, live.name])
    assert len(logs) == 1 and "another-node" in logs[0] and "delete it when no job runs there" in logs[0]


def test_shard_refuses_to_start_before_prepare(tmp_path, capsys, corpus_dir):
    """mel's corpus statistics would be computed by every shard at once: prepare makes them first."""
    import shutil

    corpus = tmp_path / "corpus"
    shutil.copytree(corpus_dir, corpus, ignore=shutil.ignore_patterns("stats"))
    argv = _argv(corpus, tmp_path, "r", "c")
    assert main(["--shard", "0/2", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--shard 0/2:" in err and "run `run_benchmark.py prepare`" in err
    assert not (tmp_path / "c").exists() and not (tmp_path / "r").exists()
    assert main(["prepare", *replace_arg(argv, "--upstream", "mel")]) == 0
    assert [d for d in (tmp_path / "c").iterdir() if (d / "DONE").is_file()]  # prepare extracted mel's caches
    assert main(["--shard", "0/2", *replace_arg(argv, "--upstream", "mel")]) == 0  # prepared: the shard runs
    assert read_rows(tmp_path / "r" / "shards" / "0-of-2" / RUNS_FILE)


def replace_arg(argv: list[str], flag: str, value: str) -> list[str]:
    out = list(argv)
    out[out.index(flag) + 1] = value
    return out


def test_one_shard_is_the_plan_and_two_shards_split_it_by_cost():
    """--shard 0/1 trains exactly the unsharded runs, in their order; with two shards each still plans the WHOLE sweep
    (expand_runs ignores the shard: the assignment is computed from it) and trains a disjoint share of it, the two
    shares together all of it, their expected seconds (benchmark.plan.shards' cost model, set-ups included) within one
    run and one upstream's set-up of each other."""
    cfg = BenchmarkConfig(upstreams=("mel", "mel:stack3"), tasks=("phone_linear", "speaker_utterance"),
                          modes="last", seeds=3)
    fractions = [0.1, 0.5, 1.0]
    whole = whole_plan(cfg, fractions)
    shape = {r.upstream: (L, D) for r, L, D in whole}

    def trained(c: BenchmarkConfig) -> list:  # what a process with config c trains, upstream by upstream (runner)
        return [r for spec in c.upstreams
                for r in shard_filter(c, spec, 1, fractions, expand_runs(c, spec, 1, fractions, []))]

    unsharded = trained(cfg)
    assert len(unsharded) == 2 * 2 * 3 * 3 and trained(replace(cfg, shard=Shard(0, 1))) == unsharded
    halves = [trained(replace(cfg, shard=Shard(i, 2))) for i in range(2)]
    for i in range(2):
        for spec in cfg.upstreams:
            assert expand_runs(replace(cfg, shard=Shard(i, 2)), spec, 1, fractions, []) == expand_runs(
                cfg, spec, 1, fractions, [])
    keys = [{run_key(r) for r in h} for h in halves]
    assert all(halves) and not keys[0] & keys[1] and keys[0] | keys[1] == {run_key(r) for r in unsharded}

    def seconds(share: list) -> float:  # the share's expected wall time, computed here from the cost model alone
        return (sum(shard_seconds(r, *shape[r.upstream], cfg.probe_workers) for r in share)
                + sum(setup_seconds(*shape[u]) for u in {r.upstream for r in share}))

    biggest = max(shard_seconds(r, L, D, cfg.probe_workers) for r, L, D in whole) + max(
        setup_seconds(L, D) for _, L, D in whole)
    loads = [seconds(h) for h in halves]
    assert abs(loads[0] - loads[1]) <= biggest, (loads, biggest)
    assert loads == pytest.approx(shard_loads(whole, 2, cfg.probe_workers))  # what --dry-run reports per shard


def test_shard_filter_partitions_the_plan_as_assigned():
    """expand_runs plans the whole sweep; shard_filter gives each shard exactly its share under `assign`: the shares
    are disjoint and together the whole plan, one upstream at a time as the runner plans them."""
    cfg = BenchmarkConfig(upstreams=("mel", "mel:stack3"), tasks=("phone_linear", "speaker_utterance"),
                          modes="last,weighted_sum", seeds=2)
    fractions = [0.1, 0.5, 1.0]
    whole = [run_key(r) for r, _, _ in whole_plan(cfg, fractions)]
    assert len(whole) == len(set(whole)) == 2 * 2 * 3 * 2  # one hidden state each: weighted_sum collapses to last
    for n in (1, 2, 3):
        shard_of = assign(whole_plan(cfg, fractions), n, cfg.probe_workers)
        shares = [[run_key(r) for spec in cfg.upstreams
                   for r in shard_filter(replace(cfg, shard=Shard(i, n)), spec, 1, fractions,
                                         expand_runs(cfg, spec, 1, fractions, []))] for i in range(n)]
        assert sorted(k for share in shares for k in share) == sorted(whole)  # disjoint, and all of it
        assert all(shard_of[k] == i for i, share in enumerate(shares) for k in share)


def test_rows_of_an_older_version_are_read_and_upgraded_on_append(tmp_path):
    """A runs.csv written before the added columns (budget, converged, pretrain_recipe) is read with their legacy
    values, and the next appended row rewrites it whole with the current header (as benchmark.record.aggregate reads
    it)."""
    from benchmark.record.results import append_row
    from benchmark.record.schema import ADDED_COLUMNS, LEGACY_RECIPE

    old_cols = [c for c in RUN_COLUMNS if c not in ADDED_COLUMNS]
    path = tmp_path / RUNS_FILE
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=old_cols, lineterminator="\n")
        w.writeheader()
        w.writerow({c: "150" if c == "steps" else "old" for c in old_cols})
    (row,) = read_rows(path)
    assert list(row) == list(RUN_COLUMNS) and (row["budget"], row["converged"], row["pretrain_recipe"]) == (
        "steps=150", "False", LEGACY_RECIPE)
    append_row(path, _row(run_id="new"))
    assert path.read_text().splitlines()[0] == ",".join(RUN_COLUMNS)
    assert [r["run_id"] for r in read_rows(path)] == ["old", "new"] and read_rows(path)[0]["budget"] == "steps=150"


def test_an_upstreams_groups_are_taken_costliest_first_by_their_tasks_costs():
    """The runner hands an upstream's probe groups to its workers costliest first (benchmark.run.runner.balance),
    costed by each task's RunCost: in the main job the weighted-sum phone_ctc group leads (its 100 % probe takes
    thousands of steps over whole utterances, four hidden states a frame), then the MLP group, not split (no group
    exceeds an even share), then the last layer's phone_ctc group."""
    from benchmark.plan.presets import main_job
    from benchmark.run.runner import balance

    cfg = main_job().by_corpus()[0]
    groups: dict[tuple, list] = {}
    for r in expand_runs(cfg, "aalbert_random", 4, [0.01, 1.0], []):
        groups.setdefault((r.task, r.mode.label), []).append((r,))
    order = balance(list(groups.values()), lambda job: expected_seconds(job[0], 4, 256), 2)
    assert len(order) == len(groups)  # none split
    first = [(g[0][0].task, g[0][0].mode.label) for g in order[:3]]
    assert first == [("phone_ctc", "weighted_sum"), ("phone_1hidden", "last"), ("phone_ctc", "last")]
    seconds = [sum(expected_seconds(j[0], 4, 256) for j in g) for g in order]
    assert seconds == sorted(seconds, reverse=True)
