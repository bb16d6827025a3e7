"""The convergence certificate: a converged probe passes it, a starved one fails it; the reference is a real fit."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

import benchmark.run.runner as runner
from benchmark.cli import main
from benchmark.plan.config import BenchmarkConfig
from benchmark.report.convergence import CONVERGENCE_FILE, certify, fit_reference, summary_markdown
from corpora.manifest import load_corpus
from downstream.config import SGD, AdamW, Minibatch, ProbeConfig
from tests.fixtures import make_tiny_corpus


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cert") / "corpus"
    make_tiny_corpus(root, n_speakers=4, per_speaker={"train": 8, "dev": 3, "test": 3})
    return root


def _run(corpus_dir: Path, tmp: Path, probe: ProbeConfig, fractions=(0.25, 1.0)) -> Path:
    cfg = BenchmarkConfig(corpus=str(corpus_dir), upstreams=("mel",), tasks=("phone_linear", "speaker_utterance"),
                          modes="last", fractions=fractions, seeds=1, probe=probe, finetune_ends=False,
                          results_dir=tmp / "results", cache_dir=tmp / "cache", runs_dir=tmp / "runs",
                          progress=False, report=False)
    runner.run_benchmark(cfg, log=lambda *_: None)
    return tmp


def test_reference_fit_reaches_the_optimum_and_picks_l2_on_dev():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 3, generator=g)
    x = torch.randn(3000, 8, generator=g)
    y = (x @ w + 0.5 * torch.randn(3000, 3, generator=g)).argmax(-1)
    split = lambda a, b: (x[a:b], y[a:b])  # noqa: E731
    ref = fit_reference(split(0, 2000), split(2000, 2500), split(2500, 3000), 3)
    assert ref.converged and ref.test > 0.85 and ref.l2 <= 1e-2  # lots of data: weak regularisation wins on dev
    few = fit_reference(split(0, 12), split(2000, 2500), split(2500, 3000), 3)
    assert few.test < ref.test  # the same solver on 12 examples: a real fit, not a constant


def test_a_neighbouring_mix_starts_the_fit_and_changes_only_its_cost(monkeypatch):
    """Two mixes of the same two 'hidden states' (the weighted-sum rows of two seeds): the second fit starts from the
    first one's solutions and reaches the same point of every L2 strength as a cold fit, in fewer iterations."""
    import benchmark.report.convergence as conv

    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, 4000, 16, generator=g)
    y = (h[1] @ torch.randn(16, 5, generator=g) + torch.randn(4000, 5, generator=g)).argmax(-1)
    mix = lambda w: (w * h[0] + (1 - w) * h[1]).double()  # noqa: E731
    split = lambda x, a, b: (x[a:b], y[a:b])  # noqa: E731
    grid = (1e-1, 1e-3, 1e-5)
    first: dict = {}
    fit_reference(*(split(mix(0.10), a, b) for a, b in ((0, 3000), (3000, 3500), (3500, 4000))), 5, grid,
                  solutions=first)
    assert sorted(first) == sorted(grid)
    iters = {"cold": 0, "warm": 0}
    way = "cold"
    fit = conv._fit
    monkeypatch.setattr(conv, "_fit", lambda *a: (lambda r: iters.__setitem__(way, iters[way] + r[2]) or r)(fit(*a)))
    second = [split(mix(0.101), a, b) for a, b in ((0, 3000), (3000, 3500), (3500, 4000))]
    got: dict = {}
    for way, starts in (("cold", None), ("warm", first)):
        got[way] = {}
        ref = fit_reference(*second, 5, grid, starts=starts, solutions=got[way])
        assert ref.converged
    for l2 in grid:  # each point solved to within 1 % of |W| of the optimum, from either start
        W_cold, W_warm = got["cold"][l2][0], got["warm"][l2][0]
        assert float((W_cold - W_warm).norm()) <= 0.02 * float(W_cold.norm()) + 1e-9
    assert iters["warm"] < iters["cold"], iters


def test_converged_probes_pass_and_starved_probes_fail(corpus_dir, tmp_path, monkeypatch):
    corpus = load_corpus(corpus_dir)
    good_cfg = ProbeConfig(Minibatch(AdamW(lr=1e-1), batch_size=4096, min_eval_steps=20), patience=10)
    good = _run(corpus_dir, tmp_path / "good", good_cfg,
                fractions=(1.0,))
    table = certify(good / "results", corpus, good / "cache", log=lambda *_: None)
    assert len(table) == 2 and (table["margin"] == 1.0).all()  # 2 tasks; one fraction, the largest
    assert table["passes"].all(), table
    assert (good / "results" / CONVERGENCE_FILE).is_file()
    import benchmark.report.convergence as conv

    monkeypatch.setattr(conv.Certifier, "reference", lambda *a: (_ for _ in ()).throw(AssertionError("refit")))
    again = certify(good / "results", corpus, good / "cache", log=lambda *_: None)  # resumed: nothing refitted
    monkeypatch.undo()
    assert again[["run_id", "reference_test"]].equals(table[["run_id", "reference_test"]])
    starved = _run(corpus_dir, tmp_path / "starved", ProbeConfig(Minibatch(AdamW(lr=1e-4), batch_size=4)).with_steps(2))
    bad = certify(starved / "results", corpus, starved / "cache", log=lambda *_: None)
    assert len(bad) == 4 and set(bad["margin"]) == {1.0, 2.0}  # largest and smallest fraction
    assert not bad["passes"].any(), bad
    assert (bad["budget"] == "steps=2").all() and not bad["converged"].any()
    assert "Failing rows" in summary_markdown(bad) and "0/4" in summary_markdown(bad)


def test_a_probe_exactly_at_the_margin_passes_and_failures_show_dev():
    from benchmark.report.convergence import passes

    assert 100 * 0.13 < 100 * 0.14 - 1.0  # what float arithmetic says of 39/300 vs 42/300 - 1 point
    assert passes(100 * 0.13, 100 * 0.14, 1.0) and passes(13.0, 15.0, 2.0)
    assert not passes(12.99, 14.0, 1.0) and not passes(100 * 0.13, 100 * 0.1434, 1.0)
    row = dict(run_id="r", upstream="mel", preset="stack3", ckpt_hash="h", task="speaker_utterance", mode="last",
               layer=0, fraction=1.0, seed=0, budget="converge", converged=True, steps=10, reference_l2=0.0,
               reference_iters=5, reference_converged=True, margin=1.0, passes=False)
    table = pd.DataFrame([{**row, "probe_dev": 30.0, "reference_dev": 29.0, "probe_test": 28.0, "reference_test": 30.0},
                          {**row, "seed": 1, "probe_dev": 28.0, "reference_dev": 29.0, "probe_test": 28.0,
                           "reference_test": 30.0}])
    md = summary_markdown(table)
    assert "0/2" in md and "1 of 2 score at least the reference on dev" in md and "| mel:stack3 |" in md
    assert "| 30.00 | 29.00 | 28.00 | 30.00 |" in md


def test_certify_cli_errors_name_what_is_missing(corpus_dir, tmp_path, capsys):
    good = _run(corpus_dir, tmp_path, ProbeConfig(Minibatch(AdamW(lr=3e-2), batch_size=256, min_eval_steps=5),
                                                  patience=2))
    assert main(["certify", "--corpus", str(corpus_dir), "--results-dir", str(good / "results"),
                 "--cache-dir", str(tmp_path / "elsewhere")]) == 2
    err = capsys.readouterr().err
    assert "no cache entry for mel:default" in err and str(tmp_path / "elsewhere") in err and "run the benchmark" in err
    runs = pd.read_csv(good / "results" / "runs.csv")
    runs[runs["task"] == "phone_1hidden"].to_csv(good / "results" / "runs.csv", index=False)  # header only
    assert main(["certify", "--corpus", str(corpus_dir), "--results-dir", str(good / "results")]) == 2
    assert "no result rows" in capsys.readouterr().err


def _entry(cache: Path, corpus, split: str, preset: str, ckpt_hash: str) -> Path:
    """A real cache entry of the log-mel front-end, recorded under the given preset and checkpoint hash."""
    from benchmark.cache.extract import cache_key, ensure_split
    from upstream.features import FeatureConfig
    from upstream.registry import build_upstream

    up = build_upstream("mel", feature=FeatureConfig(norm="none"))
    ident = {"upstream": "mel", "preset": preset, "ckpt_hash": ckpt_hash}
    ensure_split(cache, ident, up, corpus, split, corpus.utterances(split), progress=False, log=lambda *_: None)
    return cache / cache_key(ident, up, corpus, split, corpus.utterances(split))[0]


def test_cached_identity_matches_the_preset(tmp_path):
    """`mel` and `mel:stack3` caches share a directory prefix: a perf script asking for `mel` must not measure the
    newer stack3 cache (it once did, silently: docs/benchmark.md's trainer comparison ran on 240-d stacked means)."""
    import os

    from benchmark.report.convergence import cached_identity
    from tests.fixtures import make_tiny_corpus

    corpus = make_tiny_corpus(tmp_path / "c", per_speaker={"train": 1, "dev": 1, "test": 1})
    cache = tmp_path / "cache"
    for i, (preset, h) in enumerate((("default", "aaa"), ("stack3", "bbb"))):  # stack3 written last: the newest
        meta = _entry(cache, corpus, "train", preset, h) / "meta.json"
        os.utime(meta, (1000 + i, 1000 + i))
    assert cached_identity(cache, "mel", corpus) == {"upstream": "mel", "preset": "default", "ckpt_hash": "aaa"}
    assert cached_identity(cache, "mel:stack3", corpus)["ckpt_hash"] == "bbb"
    with pytest.raises(FileNotFoundError, match="mel:delta"):
        cached_identity(cache, "mel:delta", corpus)
    with pytest.raises(ValueError, match="unknown preset"):
        cached_identity(cache, "mel:nope", corpus)


def test_cache_lookups_match_the_corpus_manifest(tmp_path):
    """Two corpora of one name (the built-in corpus and a rescaled one, or the quick and full ones) share a cache
    folder and directory prefixes: the certificate must open the entry of ITS corpus's split, never the other's."""
    import shutil

    from benchmark.cache.reader import manifest_digest
    from benchmark.report.convergence import cached_entries, cached_identity

    small = make_tiny_corpus(tmp_path / "small", per_speaker={"train": 1, "dev": 1, "test": 1}, seed=0)
    large = make_tiny_corpus(tmp_path / "large", per_speaker={"train": 3, "dev": 2, "test": 1}, seed=1)
    assert small.name == large.name
    cache = tmp_path / "cache"
    built = {(tag, split): _entry(cache, corpus, split, "default", "h")
             for tag, corpus in (("s", small), ("l", large)) for split in ("train", "dev", "test")}
    assert len(set(built.values())) == 6  # one entry per corpus and split
    row = pd.Series({"upstream": "mel", "preset": "default", "ckpt_hash": "h"})
    assert {s: e.path for s, e in cached_entries(cache, row, small).items()} == {
        s: built["s", s] for s in ("train", "dev", "test")}
    assert cached_entries(cache, row, large)["dev"].path == built["l", "dev"]
    assert cached_identity(cache, "mel", large)["ckpt_hash"] == "h"
    shutil.rmtree(built["s", "test"])
    with pytest.raises(FileNotFoundError, match="test split") as e:
        cached_entries(cache, row, small)
    assert manifest_digest(small.utterances("test"))[:16] in str(e.value)
    assert f"{built['l', 'test'].name} (built from manifest {manifest_digest(large.utterances('test'))[:16]})" in str(
        e.value)  # what is there instead: the other corpus's entry, never opened


def test_mlp_rows_share_the_linear_reference_and_retrained_rows_are_certified_again(corpus_dir, tmp_path, monkeypatch):
    """phone_1hidden has no unique optimum: it is held to the logistic regression on its examples (a lower bound),
    the very fit of phone_linear's row on the same examples, also across calls. A row whose result changed since it
    was certified (re-trained: its test score moved) is certified again; the others are kept."""
    import benchmark.report.convergence as conv

    corpus = load_corpus(corpus_dir)
    frame = ProbeConfig(Minibatch(SGD(lr=1e-1), batch_size=4096, min_eval_steps=20), patience=10)
    cfg = BenchmarkConfig(corpus=str(corpus_dir), upstreams=("mel",), tasks=("phone_linear", "phone_1hidden"),
                          modes="last", fractions=(1.0,), seeds=1, probe=frame, finetune_ends=False,
                          task_probes={"phone_1hidden": ProbeConfig(
                              Minibatch(AdamW(lr=1e-3), batch_size=1024, min_eval_steps=20), patience=4)},
                          results_dir=tmp_path / "results", cache_dir=tmp_path / "cache", runs_dir=tmp_path / "runs",
                          progress=False, report=False)
    runner.run_benchmark(cfg, log=lambda *_: None)
    fits = []
    fit = conv.fit_reference
    monkeypatch.setattr(conv, "fit_reference", lambda *a, **k: fits.append(1) or fit(*a, **k))
    results, cache = tmp_path / "results", tmp_path / "cache"
    table = certify(results, corpus, cache, log=lambda *_: None)
    assert sorted(table["task"]) == ["phone_1hidden", "phone_linear"] and len(fits) == 1
    assert table["reference_test"].nunique() == 1
    assert "phone_1hidden (not a linear head" in summary_markdown(table)
    # the MLP row certified by a later call: phone_linear's fit, read back from convergence.csv
    table[table["task"] == "phone_linear"].to_csv(results / CONVERGENCE_FILE, index=False)
    fits.clear()
    again = certify(results, corpus, cache, log=lambda *_: None)
    fields = ["probe_test", "reference_test", "reference_l2", "passes"]
    mlp = lambda t: t[t["task"] == "phone_1hidden"].iloc[0][fields].tolist()  # noqa: E731
    assert len(fits) == 0 and mlp(again) == mlp(table)
    # a re-trained phone_linear row (its test score moved) is certified again, against the same examples' fit
    runs = pd.read_csv(results / "runs.csv", dtype={"run_id": str, "ckpt_hash": str})
    runs.loc[runs["task"] == "phone_linear", "test_metric"] -= 0.05
    runs.to_csv(results / "runs.csv", index=False)
    third = certify(results, corpus, cache, log=lambda *_: None)
    assert len(fits) == 0
    lin, old = (t[t["task"] == "phone_linear"].iloc[0] for t in (third, table))
    assert lin["probe_test"] == pytest.approx(old["probe_test"] - 5, abs=0.01)
    assert lin["reference_test"] == old["reference_test"]
    assert mlp(third) == mlp(table)


def test_the_float32_phase_ends_where_float64_throughout_does():
    """The reference's L-BFGS runs in float32 first, then float64 to the tolerance: each L2 point ends within the
    tolerance of the same optimum as a float64 fit from the start, and the float64 phase has the last word."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4000, 12, generator=g)
    y = (x @ torch.randn(12, 4, generator=g) + torch.randn(4000, 4, generator=g)).argmax(-1)
    splits = [(x[a:b], y[a:b]) for a, b in ((0, 3000), (3000, 3500), (3500, 4000))]
    grid = (1e-1, 1e-3, 1e-5)
    got: dict = {}
    refs = {}
    for phase in (True, False):
        got[phase] = {}
        refs[phase] = fit_reference(*splits, 4, grid, solutions=got[phase], float32_phase=phase)
        assert refs[phase].converged
    assert refs[True].l2 == refs[False].l2 and refs[True].dev == pytest.approx(refs[False].dev, abs=2e-3)
    for l2 in grid:
        W32, W64 = got[True][l2][0], got[False][l2][0]
        assert W32.dtype == torch.float64  # solved last in float64
        assert float((W32 - W64).norm()) <= 0.02 * float(W64.norm())  # both within 1 % of |W| of the optimum


def test_workers_certify_checkpoints_side_by_side_with_the_same_table(corpus_dir, tmp_path):
    """Two upstream checkpoints certified on two threads give the table that one thread gives, row for row (one torch
    thread per fit both ways: another thread count sums a matmul in another order, moving an iteration count)."""
    corpus = load_corpus(corpus_dir)
    cfg = BenchmarkConfig(corpus=str(corpus_dir), upstreams=("mel", "mel:stack3"), tasks=("phone_linear",),
                          modes="last", fractions=(0.25, 1.0), seeds=1, finetune_ends=False,
                          probe=ProbeConfig(Minibatch(SGD(lr=1e-1), batch_size=4096, min_eval_steps=20), patience=4),
                          results_dir=tmp_path / "results", cache_dir=tmp_path / "cache", runs_dir=tmp_path / "runs",
                          progress=False, report=False)
    runner.run_benchmark(cfg, log=lambda *_: None)
    tables = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for workers in (1, 2):
            (tmp_path / "results" / CONVERGENCE_FILE).unlink(missing_ok=True)
            tables[workers] = certify(tmp_path / "results", corpus, tmp_path / "cache", log=lambda *_: None,
                                      workers=workers, device="cpu")
            assert torch.get_num_threads() == 1  # given back as it was
    finally:
        torch.set_num_threads(threads)
    assert len(tables[1]) == 4 and tables[1]["preset"].nunique() == 2
    pd.testing.assert_frame_equal(tables[1], tables[2])
    with pytest.raises(ValueError, match="workers must be >= 1"):
        certify(tmp_path / "results", corpus, tmp_path / "cache", workers=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_closed_form_loss_is_cross_entropy_in_value_and_gradient(dtype):
    """The certificate's loss (softmax - one-hot in buffers allocated once per solve) against torch's cross-entropy
    and autograd, on the same logits: the same value and the same gradients, evaluation after evaluation, with the
    buffer reused (its storage never replaced)."""
    import torch.nn.functional as F

    from benchmark.report.convergence import LogisticLoss

    g = torch.Generator().manual_seed(5)
    n, d, c = 3000, 16, 7
    x = torch.randn(n, d, generator=g, dtype=dtype) * 3
    y = torch.randint(0, c, (n,), generator=g)
    z, minus_one = torch.empty(n, c, dtype=dtype), torch.full((n, 1), -1.0, dtype=dtype)
    where = z.data_ptr()
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-13)
    for step in range(3):  # a different point each time, as L-BFGS's evaluations are
        W = (torch.randn(d, c, generator=g, dtype=dtype) * (step + 1)).requires_grad_(True)
        b = torch.randn(c, generator=g, dtype=dtype).requires_grad_(True)
        ours = LogisticLoss.apply(W, b, x, y, z, minus_one)
        ours.backward()
        got = (W.grad.clone(), b.grad.clone())
        W.grad = b.grad = None
        theirs = F.cross_entropy(x @ W + b, y)
        theirs.backward()
        assert ours.dtype == torch.float64  # the value is summed in float64 whatever the logits' dtype
        torch.testing.assert_close(ours.detach(), theirs.detach().double(), **tol)
        torch.testing.assert_close(got[0], W.grad, **tol)
        torch.testing.assert_close(got[1], b.grad, **tol)
        assert z.data_ptr() == where


def test_the_float32_phase_reaches_its_floor_because_its_loss_value_is_float64():
    """A float32 scalar near 1 cannot represent the loss decreases that L-BFGS's line search compares once the gradient
    is small: with the value rounded to float32, the float32 phase of a weakly regularised fit stalls above
    FLOAT32_GRAD_FLOOR; with the value summed in float64 (LogisticLoss) the same phase reaches it, so the float64 phase
    starts that much closer."""
    from benchmark.report.convergence import LogisticLoss
    from downstream.solver import FLOAT32_GRAD_FLOOR, FLOAT32_PATIENCE
    from downstream.solver import solve_l2

    g = torch.Generator().manual_seed(0)
    n, d, c = 40000, 16, 10
    y = torch.randint(0, c, (n,), generator=g)
    x = torch.randn(c, d, generator=g)[y] * 0.5 + torch.randn(n, d, generator=g)
    z, minus_one = torch.empty(n, c), torch.full((n, 1), -1.0)
    reached = {}
    for value in ("float32", "float64"):
        W, b = torch.zeros(d, c, requires_grad=True), torch.zeros(c, requires_grad=True)
        loss = (lambda: [LogisticLoss.apply(W, b, x, y, z, minus_one).float()]) if value == "float32" else \
            (lambda: [LogisticLoss.apply(W, b, x, y, z, minus_one)])
        _, reached[value] = solve_l2([W, b], loss, [W], 1e-6, 0.01, 3000, floor=FLOAT32_GRAD_FLOOR,
                                     patience=FLOAT32_PATIENCE)
    assert reached == {"float32": False, "float64": True}


def test_each_split_of_an_upstream_is_whitened_once_for_all_its_rows(corpus_dir, tmp_path, monkeypatch):
    """The certifier whitens a split's hidden state once per upstream and every row reads it: the 25 % and 100 % rows
    of a frame task (and the next task of the same hidden state) do not whiten the whole split again each. A row of
    another upstream releases them; the fits are those of whitening every row afresh."""
    import benchmark.report.convergence as conv
    from downstream.sources import ArraySource

    corpus = load_corpus(corpus_dir)
    cfg = BenchmarkConfig(corpus=str(corpus_dir), upstreams=("mel", "mel:stack3"), tasks=("phone_linear", "speaker_frame"),
                          modes="last", fractions=(0.25, 1.0), seeds=1, finetune_ends=False,
                          probe=ProbeConfig(Minibatch(SGD(lr=1e-1), batch_size=4096, min_eval_steps=10), patience=2,
                                            max_steps=40),
                          results_dir=tmp_path / "results", cache_dir=tmp_path / "cache", runs_dir=tmp_path / "runs",
                          progress=False, report=False)
    runner.run_benchmark(cfg, log=lambda *_: None)
    runs = pd.read_csv(tmp_path / "results" / "runs.csv", dtype={"run_id": str, "ckpt_hash": str})
    runs = runs.assign(_largest=runs["fraction"] == 1.0).sort_values(["preset", "task", "fraction"])
    calls = []
    whitened = ArraySource.whitened
    monkeypatch.setattr(ArraySource, "whitened", lambda self, s, k: calls.append((s, k)) or whitened(self, s, k))
    cert = conv.Certifier(corpus, tmp_path / "cache")
    cached = [cert.reference(r) for _, r in runs.iterrows()]
    assert len(runs) == 8 and len(calls) == 2 * 3  # 2 upstreams x {train, dev, test}, layer 0
    assert cert._whitened.keys() == {("train", 0), ("dev", 0), ("test", 0)}  # the last upstream's only
    monkeypatch.setattr(conv.Certifier, "whitened", lambda self, s, k: whitened(next(iter(self._sources.values()))[0], s, k))
    fresh = [conv.Certifier(corpus, tmp_path / "cache").reference(r) for _, r in runs.iterrows()]
    assert cached == fresh


def test_subnormals_are_flushed_inside_and_kept_outside():
    """core.repro.flush_denormals: a float32 subnormal reads as zero inside (the CPU's fast path) and as itself after."""
    from core.repro import flush_denormals

    tiny = torch.tensor([1e-39])  # below float32's smallest normal, 1.18e-38
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormals")
    torch.set_flush_denormal(False)
    assert float(tiny * 1.0) > 0
    with flush_denormals():
        assert float(tiny * 1.0) == 0.0
    assert float(tiny * 1.0) > 0
