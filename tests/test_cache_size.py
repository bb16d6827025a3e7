"""The feature cache at scale: --dry-run prints each upstream's cache bytes (frames x hidden states x dim x 2), and
a run whose caches would not fit on the cache's disk stops before extracting, with one line naming --cache-dir."""
from __future__ import annotations

import shutil
from collections import namedtuple
from pathlib import Path

import pytest

import benchmark.plan.cachesize as cachesize
from benchmark.cli import main
from benchmark.plan.cachesize import cache_bytes, fmt_bytes
from benchmark.plan.config import BenchmarkConfig
from benchmark.plan.shapes import planned_upstream
from corpora.manifest import PROBE_SPLITS, load_corpus
from tests.fixtures import make_tiny_corpus

Usage = namedtuple("Usage", "total used free")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cachesize") / "corpus"
    make_tiny_corpus(root, n_speakers=2, per_speaker={"train": 2, "dev": 1, "test": 1})
    return root


def _argv(corpus: Path, tmp: Path, upstreams: str = "mel,aalbert_random", mode: str = "last") -> list[str]:
    return ["--corpus", str(corpus), "--upstream", upstreams, "--task", "phone_linear", "--mode", mode,
            "--fractions", "1", "--seeds", "1", "--steps", "2", "--no-finetune", "--no-progress",
            "--data-dir", str(tmp / "data"), "--runs-dir", str(tmp / "runs"), "--results-dir", str(tmp / "results"),
            "--cache-dir", str(tmp / "cache")]


def _frames(corpus_dir: Path, stacked: int = 1) -> int:
    """Frames over the probe splits, counted here from the manifest: 1 + samples // 160 per utterance (10 ms),
    divided by the frame stacking of the front-end."""
    c = load_corpus(corpus_dir)
    return sum((1 + u.num_samples // 160) // stacked for s in PROBE_SPLITS for u in c.utterances(s))


def _control_stacking(tmp: Path) -> int:
    """aalbert_random copies the front-end of the AALBERT checkpoint it controls for (the recipe may stack frames)."""
    return planned_upstream("aalbert_random", BenchmarkConfig(runs_dir=tmp / "runs")).feature.downsample


def _need(corpus_dir: Path, tmp: Path, hidden_states: int = 1) -> int:
    """mel's one hidden state + aalbert_random's `hidden_states` (1: --mode last; 4: weighted_sum)."""
    return _frames(corpus_dir) * 80 * 2 + _frames(corpus_dir, _control_stacking(tmp)) * hidden_states * 256 * 2


@pytest.mark.parametrize("mode, read, layers", [("last", 1, "1 of 4 hidden states [3]"),
                                                ("layer=1,last", 2, "2 of 4 hidden states [1,3]"),
                                                ("last,weighted_sum", 4, "4 hidden states")])
def test_dry_run_prints_each_upstreams_cache_bytes(corpus_dir, tmp_path, capsys, mode, read, layers):
    """Only the hidden states the planned modes read are counted: last caches one of aalbert_random's four."""
    assert main(["--dry-run", *_argv(corpus_dir, tmp_path, mode=mode)]) == 0
    out = capsys.readouterr().out
    for hidden_states, what, dim, n in ((1, "1 hidden states", 80, _frames(corpus_dir)),  # mel
                                        (read, layers, 256, _frames(corpus_dir, _control_stacking(tmp_path)))):
        assert (f"feature cache: {fmt_bytes(n * hidden_states * dim * 2)} ({n:,} frames x {what} x {dim} x 2 B, "
                f"float16)") in out, out
    assert f"feature cache: {fmt_bytes(_need(corpus_dir, tmp_path, read))} to extract into" in out and ": fits" in out
    assert not (tmp_path / "cache").exists()  # a dry run writes nothing


def test_the_dry_run_counts_what_an_extension_writes(corpus_dir, tmp_path, capsys):
    """After a last-only run, weighted_sum needs the three other hidden states: extraction writes a new entry of all
    four (the one-layer entry stays but serves no longer), and the dry run says so."""
    assert main(_argv(corpus_dir, tmp_path, "aalbert_random")) == 0
    capsys.readouterr()
    assert main(["--dry-run", *_argv(corpus_dir, tmp_path, "aalbert_random", "last")]) == 0
    assert "feature cache: 0 B to extract" in capsys.readouterr().out
    assert main(["--dry-run", *_argv(corpus_dir, tmp_path, "aalbert_random", "weighted_sum")]) == 0
    n = _frames(corpus_dir, _control_stacking(tmp_path))
    assert f"feature cache: {fmt_bytes(n * 4 * 256 * 2)} to extract into" in capsys.readouterr().out


def test_the_librispeech_100_figure():
    """mockingjay:base on LibriSpeech train-clean-100 (100.6 h, every utterance in the probe splits): 4 hidden
    states x 768 at 100 frames/s, float16."""
    planned = planned_upstream("mockingjay:base", BenchmarkConfig(pretrain=True, runs_dir=Path("/nonexistent")))
    shape = planned.shape
    assert (shape.num_hidden_states, shape.hidden_size, planned.feature.hop_length) == (4, 768, 160)
    assert cache_bytes(100 * 360_000, shape.num_hidden_states, shape.hidden_size) == 221_184_000_000
    assert fmt_bytes(cache_bytes(round(100.6 * 360_000), 4, 768)) == "223 GB"
    assert fmt_bytes(cache_bytes(round(100.6 * 360_000), 13, 768)) == "723 GB"  # mockingjay:large, 12 layers


@pytest.mark.parametrize("command", [[], ["prepare"]], ids=["run", "prepare"])
def test_a_run_that_does_not_fit_stops_before_extracting(corpus_dir, tmp_path, capsys, monkeypatch, command):
    monkeypatch.setattr(cachesize.shutil, "disk_usage", lambda p: Usage(10**12, 10**12 - 10_000, 10_000))
    assert main([*command, *_argv(corpus_dir, tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"run_benchmark.py: error: --cache-dir {tmp_path / 'cache'}: the "
                                                   f"feature cache needs {fmt_bytes(_need(corpus_dir, tmp_path))} "
                                                   f"more"), err
    assert "has 10 kB free" in err and "--upstream" in err and "aalbert_random" in err and "(--no-cache" in err
    assert "--mode last" not in err  # every upstream caches one hidden state already
    assert not (tmp_path / "cache").exists() and not (tmp_path / "results").exists()  # nothing extracted or trained


def test_the_disk_check_counts_the_layers_read_and_names_real_flags(corpus_dir, tmp_path, capsys, monkeypatch):
    from benchmark.cli import build_parser

    need = _need(corpus_dir, tmp_path, 4)
    monkeypatch.setattr(cachesize.shutil, "disk_usage", lambda p: Usage(10**12, 10**12 - need + 1, need - 1))
    assert main(_argv(corpus_dir, tmp_path, mode="weighted_sum")) == 2  # all four of aalbert_random's: 1 B short
    err = capsys.readouterr().err
    assert f"needs {fmt_bytes(need)} more" in err and "x 4 hidden states x 256" in err, err
    flags = {o for a in build_parser()._actions for o in a.option_strings}
    named = {w.strip("(),:;") for w in err.split() if w.startswith(("--", "(--"))}
    assert {"--cache-dir", "--upstream", "--mode", "--no-cache"} <= named <= flags, named - flags
    assert "--mode last or layer=K" in err
    monkeypatch.setattr(cachesize.shutil, "disk_usage", lambda p: Usage(10**12, 10**12 - need, need))
    assert main(["--dry-run", *_argv(corpus_dir, tmp_path, mode="weighted_sum")]) == 0  # exactly enough: fits
    assert ": fits" in capsys.readouterr().out


def test_what_is_cached_already_is_not_counted(corpus_dir, tmp_path, capsys, monkeypatch):
    assert main(_argv(corpus_dir, tmp_path, "mel")) == 0  # extracts mel's three splits
    capsys.readouterr()
    assert main(["--dry-run", *_argv(corpus_dir, tmp_path, "mel")]) == 0
    out = capsys.readouterr().out
    assert ", already cached" in out and "feature cache: 0 B to extract" in out
    monkeypatch.setattr(cachesize.shutil, "disk_usage", lambda p: Usage(10**12, 10**12, 0))
    assert main(["--force", *_argv(corpus_dir, tmp_path, "mel")]) == 0  # a full disk, but nothing to extract
    assert main(["--force", *_argv(corpus_dir, tmp_path, "mel,aalbert_random")]) == 2  # aalbert_random's is missing
    err = capsys.readouterr().err
    assert "aalbert_random" in err and "mel " not in err.split("more (")[1]


def test_free_space_is_read_where_the_cache_will_be(tmp_path):
    where, free = cachesize.free_bytes(tmp_path / "not" / "yet" / "there")
    assert where == tmp_path and free == shutil.disk_usage(tmp_path).free


def test_the_disk_check_adds_up_every_corpus_of_the_plan(corpus_dir, tmp_path, monkeypatch):
    """A plan over two corpora (a task on its own corpus, as the main job's keyword spotting) extracts onto one disk:
    room for either corpus's cache alone is not room for both, and the error names each corpus's part."""
    other = tmp_path / "other"
    shutil.copytree(corpus_dir, other)
    cfg = BenchmarkConfig(corpus=str(corpus_dir), task_corpora={"speaker_utterance": str(other)}, upstreams=("mel",),
                          tasks=("phone_linear", "speaker_utterance"), modes="last", fractions=(1.0,), seeds=1,
                          data_dir=tmp_path / "data", runs_dir=tmp_path / "runs", cache_dir=tmp_path / "cache")
    one = _frames(corpus_dir) * 80 * 2  # mel's one hidden state, on either corpus
    monkeypatch.setattr(cachesize.shutil, "disk_usage", lambda p: Usage(10**12, 10**12 - 2 * one + 1, 2 * one - 1))
    with pytest.raises(ValueError) as e:
        cachesize.check_space_for(cfg)
    assert f"needs {fmt_bytes(2 * one)} more" in str(e.value)
    assert f"mel on {corpus_dir} " in str(e.value) and f"mel on {other} " in str(e.value)
    monkeypatch.setattr(cachesize.shutil, "disk_usage", lambda p: Usage(10**12, 10**12 - 2 * one, 2 * one))
    cachesize.check_space_for(cfg)  # exactly enough for both
