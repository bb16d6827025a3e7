"""The feature cache stores only the hidden states the planned modes read; a cache holding more serves fewer, one
holding fewer is extended (never served for a layer it lacks); --no-cache extracts into memory and gives the same
rows without writing under --cache-dir."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import benchmark.run.runner as runner
from benchmark.cache.extract import DONE, cache_key
from benchmark.cli import main
from benchmark.plan.config import BenchmarkConfig
from benchmark.record.results import read_rows
from core.io import read_json
from corpora.manifest import PROBE_SPLITS, load_corpus
from downstream.modes import LayerMode
from downstream.sources import ArraySource, PooledSource, SplitArrays
from downstream.config import AdamW, FinetuneAdamW, Minibatch, ProbeConfig
from tests.fixtures import make_tiny_corpus

QUIET = {"log": lambda *_: None}
RESULT = ("task", "mode", "layer", "fraction", "seed", "train_frames", "dev_metric", "test_metric", "test_utt_metric",
          "best_step", "steps", "layer_weights")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cachelayers") / "corpus"
    make_tiny_corpus(root, n_speakers=2, per_speaker={"train": 3, "dev": 1, "test": 1})
    return root


def _cfg(corpus_dir: Path, tmp: Path, modes: str, **kw) -> BenchmarkConfig:
    base = BenchmarkConfig(corpus=str(corpus_dir), upstreams=("aalbert_random",), tasks=("phone_linear",),
                           modes=modes, fractions=(1.0,), seeds=1, finetune_ends=False,
                           probe=ProbeConfig(Minibatch(AdamW(lr=1e-2), eval_every=2, batch_size=64), max_steps=4),
                           results_dir=tmp / "results", cache_dir=tmp / "cache", runs_dir=tmp / "runs",
                           progress=False, report=False, probe_workers=1)
    return replace(base, **kw)


def _entries(cache: Path) -> dict[str, list[tuple[str, list[int], int]]]:
    """split -> [(directory, meta's layers, hidden.npy's first dimension)] of the complete entries."""
    out: dict[str, list] = {s: [] for s in PROBE_SPLITS}
    for d in sorted(cache.glob("aalbert_random-*")):
        if (d / DONE).is_file():
            meta = read_json(d / "meta.json", "meta")
            stored = int(np.load(d / "hidden.npy", mmap_mode="r").shape[0])
            out[meta["key"]["split"]].append((d.name, meta["layers"], stored))
    return out


def _results(path: Path) -> dict[str, tuple]:
    return {r["run_id"]: tuple(r[c] for c in RESULT) for r in read_rows(path)}


def _all_layers_name(corpus_dir: Path, split: str) -> str:
    """The directory name an all-layers entry had before entries could hold fewer (unchanged)."""
    from benchmark.inputs.upstream import resolve_upstream

    corpus = load_corpus(corpus_dir)
    up = resolve_upstream("aalbert_random", corpus, {}, Path("/nonexistent"), False, lambda *_: None, progress=False)
    return cache_key(up.identity, up.model, corpus, split, corpus.utterances(split))[0]


def test_last_caches_one_hidden_state_and_weighted_sum_extends_it(corpus_dir, tmp_path):
    last = _cfg(corpus_dir, tmp_path, "last")
    runner.run_benchmark(last, **QUIET)
    first = _entries(tmp_path / "cache")
    assert all(len(first[s]) == 1 and first[s][0][1:] == ([3], 1) for s in PROBE_SPLITS), first  # [3]: the last of 4
    assert all(first[s][0][0] != _all_layers_name(corpus_dir, s) for s in PROBE_SPLITS)
    assert read_json(tmp_path / "cache" / first["train"][0][0] / "meta.json", "meta")["key"]["layers"] == [3]

    # weighted_sum needs all four: the one-layer entry is not served, an all-layers entry is extracted (under the
    # name all-layers entries always had) and gives the rows of a cache built for weighted_sum from scratch
    logs: list[str] = []
    runner.run_benchmark(_cfg(corpus_dir, tmp_path, "weighted_sum"), log=logs.append)
    second = _entries(tmp_path / "cache")
    for s in PROBE_SPLITS:
        assert (_all_layers_name(corpus_dir, s), [0, 1, 2, 3], 4) in second[s] and len(second[s]) == 2
    assert any("no entry holds hidden states 0,1,2,3" in m and "entries hold 3" in m for m in logs), logs
    fresh = tmp_path / "fresh"
    runner.run_benchmark(_cfg(corpus_dir, fresh, "weighted_sum"), **QUIET)
    rows, ref = _results(tmp_path / "results" / "runs.csv"), _results(fresh / "results" / "runs.csv")
    ws = {k: v for k, v in rows.items() if v[1] == "weighted_sum"}
    assert ws and ws == ref and all(len(v[-1].split(";")) == 4 for v in ws.values())

    # the all-layers entry now serves last (the entry with the most hidden states is read): the same rows as the
    # one-layer entry gave, bit for bit (the same batches and float16 rounding), and nothing new is extracted
    logs.clear()
    runner.run_benchmark(replace(last, force=True, results_dir=tmp_path / "again"), log=logs.append)
    again = _results(tmp_path / "again" / "runs.csv")
    assert again == {k: v for k, v in rows.items() if v[1] == "last"} and not any("extracted" in m for m in logs)
    assert _entries(tmp_path / "cache") == second


def test_a_subset_lacking_the_layer_is_extended_not_served(corpus_dir, tmp_path):
    runner.run_benchmark(_cfg(corpus_dir, tmp_path, "last"), **QUIET)
    runner.run_benchmark(_cfg(corpus_dir, tmp_path, "layer=1"), **QUIET)  # [3] cached: 1 is missing
    held = _entries(tmp_path / "cache")
    assert all(sorted(e[1] for e in held[s]) == [[1, 3], [3]] for s in PROBE_SPLITS), held
    assert all(e[2] == len(e[1]) for s in PROBE_SPLITS for e in held[s])
    rows = _results(tmp_path / "results" / "runs.csv")
    fresh = tmp_path / "fresh"  # layer=1 on a cache of every hidden state
    runner.run_benchmark(_cfg(corpus_dir, fresh, "layer=1,weighted_sum"), **QUIET)
    ref = {k: v for k, v in _results(fresh / "results" / "runs.csv").items() if v[1] == "layer"}
    assert ref and {k: v for k, v in rows.items() if v[1] == "layer"} == ref and {v[2] for v in ref.values()} == {"1"}


def test_finetune_reads_only_the_last_hidden_state_from_the_cache(corpus_dir, tmp_path):
    cfg = _cfg(corpus_dir, tmp_path, "finetune",
               finetune_probe=ProbeConfig(Minibatch(FinetuneAdamW(), batch_size=4, eval_every=1),
                                          patience=1, max_steps=1))
    runner.run_benchmark(cfg, **QUIET)
    held = _entries(tmp_path / "cache")
    assert all([e[1] for e in held[s]] == [[3]] for s in PROBE_SPLITS), held
    rows = read_rows(tmp_path / "results" / "runs.csv")
    assert [(r["mode"], r["layer"]) for r in rows] == [("finetune", "3")]


def test_array_source_of_a_subset_maps_hidden_states_and_refuses_missing_ones():
    rng = np.random.default_rng(0)
    offsets = np.array([0, 3, 7])
    hidden = rng.standard_normal((2, 7, 3)).astype(np.float16)  # hidden states 1 and 3 of 4
    src = ArraySource({"train": SplitArrays(hidden, offsets, layers=(1, 3), num_hidden_states=4)})
    assert src.num_hidden_states == 4 and src.layers == (1, 3) and src.position(3) == 1
    (x,), _ = src.batch("train", [1, 0], [3])
    assert np.array_equal(x.numpy(), np.concatenate([hidden[1, 3:7], hidden[1, 0:3]]).astype(np.float32))
    with pytest.raises(ValueError, match="hidden state 0 of 4 is not in these features"):
        src.batch("train", [0], [0])
    with pytest.raises(ValueError, match="hidden state 2 of 4"):
        ArraySource({"train": SplitArrays(hidden, offsets, layers=(1, 3), num_hidden_states=4)}, layers=(2,))
    only_last = ArraySource({"train": SplitArrays(hidden, offsets, layers=(1, 3), num_hidden_states=4)}, layers=(3,))
    assert len(only_last.whitening()) == 1  # only what the probes read is fitted and read
    assert LayerMode("last").layers_read(4) == [3] and PooledSource(only_last).means("train").shape == (1, 2, 3)
    assert torch.allclose(PooledSource(only_last).means("train")[0, 0], torch.from_numpy(hidden[1, :3]).float().mean(0))


def test_no_cache_writes_nothing_and_gives_the_cached_rows(corpus_dir, tmp_path):
    """The in-memory path streams the same batches through the same float16 rounding as the cache
    (benchmark.cache.extract._stream), so the probes read the same bits and the rows are equal exactly, not within a
    tolerance."""
    argv = ["--corpus", str(corpus_dir), "--upstream", "mel,aalbert_random", "--task", "phone_linear,speaker_utterance",
            "--mode", "last,weighted_sum", "--fractions", "1", "--seeds", "1", "--steps", "3", "--no-finetune",
            "--no-progress", "--runs-dir", str(tmp_path / "runs"), "--workers", "1"]
    assert main([*argv, "--no-cache", "--cache-dir", str(tmp_path / "nocache"),
                 "--results-dir", str(tmp_path / "a")]) == 0
    assert not (tmp_path / "nocache").exists()
    assert main([*argv, "--cache-dir", str(tmp_path / "cache"), "--results-dir", str(tmp_path / "b")]) == 0
    assert any((tmp_path / "cache").glob("aalbert_random-*/DONE"))
    a, b = _results(tmp_path / "a" / "runs.csv"), _results(tmp_path / "b" / "runs.csv")
    assert len(a) == 1 * 2 + 2 * 2 and a == b  # mel: last; aalbert_random: last, weighted_sum; x 2 tasks


def test_no_cache_flags(corpus_dir, tmp_path, capsys):
    common = ["--corpus", str(corpus_dir), "--upstream", "aalbert_random", "--mode", "last", "--no-cache",
              "--cache-dir", str(tmp_path / "cache"), "--runs-dir", str(tmp_path / "runs")]
    for command in ("prepare", "certify"):
        assert main([command, *common]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"run_benchmark.py: error: --no-cache: `run_benchmark.py "
                                                       f"{command}`")
    assert main(["--dry-run", *common]) == 0
    out = capsys.readouterr().out
    assert "features in memory (--no-cache):" in out and "1 of 4 hidden states [3]" in out
    assert "feature cache: none (--no-cache)" in out and not (tmp_path / "cache").exists()
    from benchmark.cli import build_parser

    assert "every invocation extracts again" in " ".join(build_parser().format_help().split())
