"""The batched probe engine: a probe's result does not depend on its group, on where its rows live, or on the device;
the stacked optimisers are torch's, per probe."""
from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch

from downstream import feeds
from downstream.modes import LayerMode
from downstream.sources import ArraySource, PooledSource, SplitArrays
from downstream.stacked import StackedHeads, StackedOptimizer, clip_per_probe
from downstream.tasks import get_task, one_hidden_head
from downstream.config import SGD, L2Path, Minibatch, NaturalSGD, ProbeConfig
from downstream.probe import ProbeSpec
from downstream.train import train_probe, train_probes
from tests.test_probes import _labels, array_source, mel, tiny  # noqa: F401 (fixtures)
from upstream.registry import build_upstream

CFG = ProbeConfig(Minibatch(SGD(lr=0.2), batch_size=64, min_eval_steps=1), patience=3)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Blocks and chunks small enough that the tiny corpus spans several of each (the schedule is exercised)."""
    monkeypatch.setattr(feeds, "BLOCK_ROWS", 96)
    monkeypatch.setattr(feeds, "CHUNK_BLOCKS", 3)


@pytest.fixture(scope="module")
def mj_src(tiny, mel):  # noqa: F811
    up = build_upstream("mockingjay_random:small", feature=mel.feature_cfg).eval()
    return array_source(up, tiny)


def _on_disk(src: ArraySource, tmp_path) -> ArraySource:
    """The same arrays as memory-mapped .npy files, as the feature cache opens them."""
    splits = {}
    for s, a in src.splits.items():
        np.save(tmp_path / f"{s}.npy", a.hidden)
        splits[s] = SplitArrays(np.load(tmp_path / f"{s}.npy", mmap_mode="r"), a.offsets)
    return ArraySource(splits)


def _key(r):
    """What a row records (layer weights to 5 decimals, as the row writes them: batched float sums may differ in
    the last bit)."""
    return (r.dev_metric, r.test_metric, r.test_utt_metric, r.best_step, r.steps, r.converged,
            None if r.layer_weights is None else [round(w, 5) for w in r.layer_weights])


@pytest.mark.parametrize("task_name,mode", [("phone_linear", "weighted_sum"), ("speaker_frame", "last"),
                                            ("phone_1hidden", "last")])
def test_a_probe_gets_the_same_result_in_any_group(tiny, mj_src, task_name, mode):  # noqa: F811
    task = get_task(task_name)
    labels, n_cls = _labels(tiny, task), len(task.labels.classes(tiny))
    cfg = CFG if task.linear else CFG.with_fields(optimizer="adamw", lr=3e-3, max_steps=60)
    specs = [ProbeSpec(tuple(range(24)), 0), ProbeSpec((0, 5, 9, 14), 1), ProbeSpec(tuple(range(0, 24, 2)), 2)]
    group = train_probes(task, LayerMode(mode), mj_src, labels, specs, n_cls, cfg)
    alone = [train_probe(task, LayerMode(mode), mj_src, labels, list(s.train_idx), n_cls, cfg, s.seed) for s in specs]
    assert [_key(r) for r in group] == [_key(r) for r in alone]
    assert len({r.steps for r in group}) > 1, "each probe stops on its own"
    assert group[0].dev_metric > 1.5 / n_cls and group[0].train_utts == 24 and group[1].train_utts == 4


def test_streamed_rows_give_the_resident_result(tiny, mj_src, tmp_path):  # noqa: F811
    """A memory budget of 0 bytes reads every chunk from the memory-mapped files again: the same rows, the same
    probes."""
    task = get_task("phone_linear")
    labels, n_cls = _labels(tiny, task), len(tiny.phones)
    disk = _on_disk(mj_src, tmp_path)
    specs = [ProbeSpec(tuple(range(24)), 0), ProbeSpec((1, 2, 3), 1)]
    resident = train_probes(task, LayerMode("weighted_sum"), mj_src, labels, specs, n_cls, CFG)
    streamed = train_probes(task, LayerMode("weighted_sum"), disk, labels, specs, n_cls, CFG, memory=0)
    assert [_key(r) for r in streamed] == [_key(r) for r in resident]


def test_training_blocks_are_pieces_scattered_over_the_whole_split(mj_src, monkeypatch):  # noqa: F811
    """The training split's blocks partition its rows into pieces of PIECE_ROWS consecutive rows drawn from the whole
    split, so a chunk of them holds rows of many more utterances than a chunk of contiguous blocks (whose rows are a
    few utterances' frames, one speaker's), and the same rows reach the probes either way."""
    monkeypatch.setattr(feeds, "PIECE_ROWS", 4)  # the small blocks' pieces (the tiny corpus's utterances are short)
    n = int(mj_src.splits["train"].offsets[-1])
    n_utts = len(mj_src.splits["train"].offsets) - 1
    stores = {scattered: feeds.RowStore(mj_src, "train", [0], [mj_src.whitening()[0]], np.zeros(n), None, True,
                                        torch.device("cpu"), scattered=scattered) for scattered in (False, True)}
    scattered = stores[True]
    rows = np.concatenate([scattered._rows(k) for k in range(scattered.n_blocks)])
    assert np.array_equal(np.sort(rows), np.arange(n)), "every row in exactly one block"
    for k in range(scattered.n_blocks):
        starts = np.unique(scattered._rows(k) // feeds.PIECE_ROWS)
        assert len(starts) <= feeds.BLOCK_ROWS // feeds.PIECE_ROWS
    chunk = feeds.pass_order(scattered.n_blocks, 0)[0]
    utts = {s: len(np.unique(st.chunk(feeds.pass_order(st.n_blocks, 0)[0]).utt)) for s, st in stores.items()}
    assert utts[True] >= 0.9 * n_utts and utts[False] <= 0.5 * n_utts, (utts, n_utts)
    x = scattered.chunk(chunk)
    for row, held in zip(np.concatenate([scattered._rows(k) for k in chunk])[:50], x.at[:50].tolist()):
        assert torch.equal(x.x[held], stores[False]._resident[0][row]), "a row is the same bits in either layout"


def test_a_streamed_group_holds_one_chunk_at_a_time(tiny, mj_src, tmp_path, monkeypatch):  # noqa: F811
    """Training and evaluation read the next chunk with the last one freed: one chunk in memory, not two."""
    task = get_task("phone_linear")
    labels, n_cls = _labels(tiny, task), len(tiny.phones)
    live, held_while_reading = [], []
    read = feeds.RowStore.chunk

    def chunk(self, blocks):
        held_while_reading.append(sum(r() is not None for r in live))
        c = read(self, blocks)
        live.append(weakref.ref(c.x))
        return c

    monkeypatch.setattr(feeds.RowStore, "chunk", chunk)
    train_probes(task, LayerMode("weighted_sum"), _on_disk(mj_src, tmp_path), labels, [ProbeSpec(tuple(range(24)), 0)],
                 n_cls, CFG, memory=0)
    assert len(held_while_reading) > 6 and max(held_while_reading) == 0


def test_a_pass_returns_freed_memory_only_where_it_streamed_its_rows(tiny, mj_src, tmp_path, monkeypatch):  # noqa: F811
    """A pass over streamed rows hands its freed chunks back to the OS (memory does not grow with the corpus); a pass
    over rows held in memory frees only activations the next pass takes again, so it keeps them (each trim made every
    page of them fault in again at the next pass's first step)."""
    task = get_task("phone_linear")
    labels, n_cls = _labels(tiny, task), len(tiny.phones)
    passes: list[int] = []
    monkeypatch.setattr(feeds, "release", lambda: passes.append(1))
    specs = [ProbeSpec(tuple(range(24)), 0)]
    held = train_probes(task, LayerMode("weighted_sum"), mj_src, labels, specs, n_cls, CFG)
    assert passes == [] and held[0].steps > 0
    train_probes(task, LayerMode("weighted_sum"), _on_disk(mj_src, tmp_path), labels, specs, n_cls, CFG, memory=0)
    assert len(passes) >= 3  # one release per pass


def test_reads_do_not_go_through_the_memory_map(mj_src, tmp_path):  # noqa: F811
    disk = _on_disk(mj_src, tmp_path)
    a = disk.read("train", 2, 10, 50)
    assert torch.equal(a, torch.from_numpy(np.asarray(mj_src.splits["train"].hidden[2, 10:50])))
    base = a.numpy()
    while base is not None:  # nothing in the chain of views is the map (whose touched pages stay resident)
        assert not isinstance(base, (np.memmap, __import__("mmap").mmap)), type(base)
        base = getattr(base, "base", None)


def test_whitening_fitted_in_one_streaming_pass_whitens():
    from downstream.heads import Whitening

    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    x = torch.randn(20000, 16, generator=g) @ (torch.diag(torch.logspace(0, 1.5, 16)) @ q) + 300.0  # far from 0
    w = Whitening(16).fit_chunks(x[a: a + 700].half() for a in range(0, len(x), 700))  # float16 chunks, as cached
    xh = x.half().float()
    assert torch.allclose(w.mean, xh.mean(0), atol=1e-2)
    assert torch.allclose(torch.cov(w(xh).T), torch.eye(16), atol=5e-2)


def test_whitening_does_not_depend_on_the_thread_count():
    """The transform (and so every probe row trained through it) has the same bits whatever the fitting process's
    torch thread count: LAPACK's threaded eigendecomposition gave other bits on 2 threads than on 1 for 256 dims."""
    from downstream.heads import Whitening

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 256, generator=g) @ torch.randn(256, 256, generator=g)
    threads = torch.get_num_threads()
    fits = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            fits.append(Whitening(256).fit_chunks([x[:1500], x[1500:]]))
            assert torch.get_num_threads() == n  # restored after the fit
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(f.matrix, fits[0].matrix) and torch.equal(f.mean, fits[0].mean) for f in fits[1:])


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_stacked_optimiser_is_torch_per_probe(kind):
    g = torch.Generator().manual_seed(0)
    heads = [torch.nn.Linear(5, 3) for _ in range(3)]
    model = StackedHeads(heads, 1, mix=False, device=torch.device("cpu"))
    opt = StackedOptimizer(kind, model, lr=0.1, momentum=0.9, weight_decay=0.01)
    refs = [torch.nn.Linear(5, 3) for _ in range(3)]
    for r, h in zip(refs, heads):
        r.load_state_dict(h.state_dict())
    topts = [torch.optim.SGD(r.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01) if kind == "sgd"
             else torch.optim.AdamW(r.parameters(), lr=0.1, weight_decay=0.01) for r in refs]
    for step in range(5):
        x, y = torch.randn(3, 8, 1, 5, generator=g), torch.randint(0, 3, (3, 8), generator=g)
        active = torch.tensor([True, step % 2 == 0, True])
        loss = torch.nn.functional.cross_entropy(model.forward(x).reshape(-1, 3), y.reshape(-1), reduction="sum")
        for p in model.params:
            p.grad = None
        loss.backward()
        clip_per_probe(model.params, 1.0)
        opt.step(active)
        for p, (r, o) in enumerate(zip(refs, topts)):
            if not active[p]:
                continue
            o.zero_grad()
            torch.nn.functional.cross_entropy(r(x[p, :, 0]), y[p], reduction="sum").backward()
            torch.nn.utils.clip_grad_norm_(r.parameters(), 1.0)
            o.step()
    for p, r in enumerate(refs):
        st = model.state_of(model.params, p)
        if p == 1:  # stepped on every other step only: its own trajectory, not the others'
            continue
        assert torch.allclose(st["head.weight"], r.weight, atol=1e-5) and torch.allclose(st["head.bias"], r.bias, atol=1e-5)


def test_stacked_mlp_is_the_single_probe_module():
    torch.manual_seed(0)
    heads = [one_hidden_head(7)(5, 3) for _ in range(2)]
    model = StackedHeads(heads, 2, mix=True, device=torch.device("cpu"))
    x = torch.randn(10, 2, 5)
    w = model.params[-1].softmax(-1)
    out = model.forward(x)
    for p, h in enumerate(heads):
        assert torch.allclose(out[p], h(w[p, 0] * x[:, 0] + w[p, 1] * x[:, 1]), atol=1e-5)
    assert set(model.state_of(model.params, 0)) == {"head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias",
                                                    "featurizer.weights"}


@pytest.mark.parametrize("head, mix", [("linear", False), ("linear", True), ("mlp", False), ("mlp", True),
                                       ("narrow_mlp", True)])
def test_products_count_what_torch_multiplies(head, mix):
    """The cost model of perf/probe_floor.py (`StackedHeads.products`) is the FLOPs torch's own counter sees in a
    training step (forward and backward) and in an evaluation, for each way `forward` takes: a linear or MLP head,
    the weighted sum folded into the first layer or mixed first."""
    from torch.utils.flop_counter import FlopCounterMode

    P, B, L, D, C = 3, 10, 3 if mix else 1, 16, 5
    make = {"linear": get_task("phone_linear").head, "mlp": one_hidden_head(32), "narrow_mlp": one_hidden_head(8)}[head]
    model = StackedHeads([make(D, C) for _ in range(P)], L, mix, torch.device("cpu"))
    flops = lambda train: P * sum(2 * m * k * n for m, k, n in model.products(B, D, train))  # noqa: E731
    with FlopCounterMode(display=False) as step:
        model.forward(torch.randn(P, B, L, D)).sum().backward()
    with FlopCounterMode(display=False) as evaluation, torch.no_grad():
        model.forward(torch.randn(B, L, D))
    assert step.get_total_flops() == flops(True) > flops(False) == evaluation.get_total_flops() > 0


def test_bit_relu_is_torch_relu():
    """The bfloat16 ReLU on the bits gives torch's values (its -0 becomes +0, an equal value) and its gradients bit
    for bit, tiny and huge values included."""
    from downstream.stacked import relu_

    torch.manual_seed(0)
    x = torch.cat([torch.randn(5000) * 10 ** torch.randint(-30, 30, (5000,)).float(),
                   torch.tensor([0.0, -0.0, 1e-38, -1e-38, float("inf"), -float("inf")])]).bfloat16()
    g = torch.randn(len(x)).bfloat16()
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = relu_(a * 1), torch.relu_(b * 1)
    assert torch.equal(ya, yb) and int((ya != 0).sum()) == int((x > 0).sum()) > 2000
    ya.backward(g)
    yb.backward(g)
    assert torch.equal(a.grad.view(torch.int16), b.grad.view(torch.int16))


@pytest.mark.parametrize("shape", [(700, 1024, 12, 38), (700, 256, 5, 100), (700, 240, 12, 100), (700, 80, 3, 768)])
def test_shared_rows_times_every_probe_is_the_broadcast_bit_for_bit(shape):
    """Evaluation multiplies rows shared by all probes by each probe's weights: in bfloat16 as one GEMM where the
    output is no wider than the input, with exactly the bits of torch.matmul's broadcast (a probe's dev score, hence
    where it stops, must not move); otherwise it is torch.matmul."""
    from core.repro import fast_bfloat16
    from downstream.stacked import shared_matmul

    n, K, P, N = shape
    g = torch.Generator().manual_seed(0)
    x, W = torch.randn(n, K, generator=g), torch.randn(P, K, N, generator=g) * 0.05
    assert torch.equal(shared_matmul(x, W), torch.matmul(x, W))
    if not fast_bfloat16(torch.device("cpu")):
        pytest.skip("bfloat16 is emulated on this CPU: the engine computes in float32 here")
    xb, Wb = x.bfloat16(), W.bfloat16()
    assert torch.equal(shared_matmul(xb, Wb), torch.matmul(xb, Wb))


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_evaluation_decodes_the_compute_dtypes_logits_to_the_same_classes(head):
    """Dev and test are decoded from the logits in the compute dtype (no float32 copy) by the first maximum's index
    (torch.max): the classes Tensor.argmax picks from float32 logits, ties included (the first of equal logits)."""
    from downstream.tasks import argmax

    torch.manual_seed(0)
    make = get_task("phone_linear").head if head == "linear" else one_hidden_head(64)
    model = StackedHeads([make(16, 9) for _ in range(4)], 1, False, torch.device("cpu"), torch.bfloat16)
    x = torch.randn(3000, 1, 16).bfloat16()
    low = model.forward(x, float32=False)
    assert low.dtype == torch.bfloat16
    assert torch.equal(argmax(low), model.forward(x).argmax(-1))
    ties = torch.tensor([[1.0, 3.0, 3.0, 0.0], [0.0, -0.0, 0.0, 0.0], [float("nan"), 1.0, float("nan"), 2.0]])
    for t in (ties, ties.bfloat16(), low.transpose(0, 1)):  # strided, as the one-GEMM logits are
        assert torch.equal(argmax(t), t.argmax(-1))


def test_utterance_probes_train_batched_on_means(tiny, mj_src):  # noqa: F811
    task = get_task("speaker_utterance")
    labels, n_cls = _labels(tiny, task), len(tiny.speakers)
    pooled = PooledSource(mj_src)
    specs = [ProbeSpec(tuple(range(24)), 0), ProbeSpec(tuple(range(0, 24, 3)), 1)]
    rs = train_probes(task, LayerMode("weighted_sum"), pooled, labels, specs, n_cls, CFG.with_fields(batch_size=8))
    assert rs[0].dev_metric > 1.5 / n_cls and rs[0].layer_weights is not None
    path = train_probes(task, LayerMode("last"), pooled, labels, specs, n_cls,
                        ProbeConfig(L2Path(l2_grid=(1e-1, 1e-2)), patience=2))
    assert all(r.converged and r.steps > 0 for r in path) and path[0].train_utts == 24


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_group_on_cuda_matches_cpu(tiny, mj_src):  # noqa: F811
    task = get_task("phone_linear")
    labels, n_cls = _labels(tiny, task), len(tiny.phones)
    specs = [ProbeSpec(tuple(range(24)), 0), ProbeSpec((1, 2, 3, 7), 1)]
    cpu = train_probes(task, LayerMode("weighted_sum"), mj_src, labels, specs, n_cls, CFG)
    gpu = train_probes(task, LayerMode("weighted_sum"), mj_src, labels, specs, n_cls, CFG, device="cuda")
    for a, b in zip(cpu, gpu):
        assert abs(a.dev_metric - b.dev_metric) < 0.03 and abs(a.test_metric - b.test_metric) < 0.03


def test_identical_paths_are_solved_once(tiny, mj_src, monkeypatch):  # noqa: F811
    """Every seed at 100 % of the labels starts a linear L2 path from zero on the same examples: one solve, the
    same row; a different subset is solved on its own."""
    import downstream.path as path

    task = get_task("speaker_utterance")
    labels, n_cls = _labels(tiny, task), len(tiny.speakers)
    calls = []
    real = path._path
    monkeypatch.setattr(path, "_path", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = ProbeConfig(L2Path(l2_grid=(1e-1, 1e-2)), patience=2)
    specs = [ProbeSpec(tuple(range(24)), 0), ProbeSpec(tuple(range(24)), 1), ProbeSpec(tuple(range(0, 24, 2)), 0)]
    rs = train_probes(task, LayerMode("weighted_sum"), PooledSource(mj_src), labels, specs, n_cls, cfg)
    assert len(calls) == 2 and _key(rs[0]) == _key(rs[1])
    alone = train_probe(task, LayerMode("weighted_sum"), PooledSource(mj_src), labels, list(range(24)), n_cls, cfg, 1)
    assert _key(alone) == _key(rs[1])


@pytest.fixture
def rss_kb():
    """The process's resident memory (kB) as a function, after everything freed went back to the OS; glibc only
    (this project's Linux): elsewhere the allocator is left as it is."""
    import platform

    from core.allocator import release

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc: the allocator is left as it is")
    release()
    return lambda: int(next(ln for ln in open("/proc/self/status") if ln.startswith("VmRSS")).split()[1])


def test_freed_blocks_are_reused_then_released(rss_kb):
    """While probes train, a step's freed activations stay in the heap for the next step, and they go back to the OS
    when training ends."""
    from core.allocator import reuse_freed_blocks

    before = rss_kb()
    held = []
    with reuse_freed_blocks():
        for _ in range(20):  # allocate and free 24 MB blocks, as a minibatch's activations are
            x = torch.ones(3_000_000, dtype=torch.float64)
            del x
            held.append(rss_kb() - before)
        assert held[-1] > 20_000  # kept in the heap ...
        assert max(held[10:]) - min(held[10:]) < 1_000 and held[-1] < 5 * 24_000  # ... and reused: a few, not 20
    assert rss_kb() - before < 5_000  # given back when training ends


def test_freed_blocks_rule_holds_until_the_outermost_context_ends(rss_kb):
    """Extraction inside a probe group's context (or any nesting): the inner context's end leaves the heap rule in
    place; the outermost one gives the memory back."""
    from core.allocator import reuse_freed_blocks

    before = rss_kb()
    with reuse_freed_blocks():
        with reuse_freed_blocks():
            pass
        for _ in range(5):  # freed 24 MB blocks: kept (the rule still holds), not unmapped
            x = torch.ones(3_000_000, dtype=torch.float64)
            del x
        assert rss_kb() - before > 20_000
    assert rss_kb() - before < 5_000


def _weighted_sum_speaker_path(tiny, mj_src, subset=tuple(range(24))):  # noqa: F811
    """A call that trains the L2-path speaker probe (weighted sum, `subset`: 24 training utterances, two L2 points)."""
    task = get_task("speaker_utterance")
    labels, n_cls = _labels(tiny, task), len(tiny.speakers)
    cfg = ProbeConfig(L2Path(l2_grid=(1e-1, 1e-2)), patience=2)
    return lambda: train_probe(task, LayerMode("weighted_sum"), PooledSource(mj_src), labels, list(subset), n_cls,
                               cfg, 0)


def test_l2_path_in_parts_solves_the_same_probe(tiny, mj_src, monkeypatch):  # noqa: F811
    """The path's loss evaluated PATH_ROWS examples at a time (what keeps its float64 activations from growing with
    the utterances) reaches the same optimum as the whole batch: the same row, weights within the tolerance."""
    import downstream.path as path

    run = _weighted_sum_speaker_path(tiny, mj_src)
    whole = run()
    sizes = []
    real = path.solve_l2
    monkeypatch.setattr(path, "solve_l2",
                        lambda p, loss, *a, **kw: sizes.append(len(list(loss()))) or real(p, loss, *a, **kw))
    monkeypatch.setattr(path, "PATH_ROWS", 5)
    parts = run()
    assert sizes and set(sizes) == {5}  # 24 utterances in parts of 5
    assert (parts.dev_metric, parts.test_metric, parts.converged) == (whole.dev_metric, whole.test_metric, True)
    for k, w in whole.state.items():
        assert torch.allclose(parts.state[k], w, rtol=0, atol=1e-2 * float(w.abs().max()) + 1e-6), k


@pytest.mark.parametrize("mode", ["weighted_sum", "last"])
def test_l2_path_parts_on_threads_are_the_parts_one_after_another(tiny, mj_src, monkeypatch, mode):  # noqa: F811
    """A path's parts evaluated side by side on threads (PATH_THREADS), their values and gradients summed in the parts'
    order, give the row and weights of the parts evaluated one after another, bit for bit: in both phases (the float32
    one's subnormals flushed on every thread), with and without the head's curvature."""
    import downstream.path as path

    task = get_task("speaker_utterance")
    labels, n_cls = _labels(tiny, task), len(tiny.speakers)
    cfg = ProbeConfig(L2Path(l2_grid=(1e-1, 1e-3, 1e-5)), patience=3)
    monkeypatch.setattr(path, "PATH_ROWS", 5)
    rows, pools = {}, []
    real_pool = path.ThreadPoolExecutor
    monkeypatch.setattr(path, "ThreadPoolExecutor", lambda *a, **kw: pools.append(a) or real_pool(*a, **kw))
    for threads in (1, 3):
        monkeypatch.setattr(path, "PATH_THREADS", threads)
        rows[threads] = train_probe(task, LayerMode(mode), PooledSource(mj_src), labels, list(range(24)), n_cls, cfg, 0)
    assert pools == [(3,)]  # one pool, for the threaded path only
    a, b = rows[1], rows[3]
    assert a.steps > 0 and (a.dev_metric, a.test_metric, a.steps, a.converged) == (b.dev_metric, b.test_metric,
                                                                                  b.steps, b.converged)
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)


def test_l2_path_solves_in_a_linear_heads_curvature_only(tiny, mj_src):  # noqa: F811
    """The curvature's change of variables is a linear head's: an L2 path over another head is refused with a clear
    error unless asked to solve in the weights themselves (L2Path.precondition 'none')."""
    from dataclasses import replace

    task = replace(get_task("speaker_utterance"), head=one_hidden_head(8), linear=False)
    labels, n_cls = _labels(tiny, task), len(tiny.speakers)
    cfg = ProbeConfig(L2Path(l2_grid=(1e-1,)), patience=1)

    def run(c):
        return train_probe(task, LayerMode("last"), PooledSource(mj_src), labels, list(range(24)), n_cls, c, 0)
    with pytest.raises(ValueError, match="not one Linear layer"):
        run(cfg)
    assert run(cfg.with_fields(precondition="none")).steps > 0


def test_a_weighted_sum_path_is_solved_in_the_weights(tiny, mj_src):  # noqa: F811
    """The mix makes a weighted sum's objective non-convex, so with "fixed_input" the curvature (which solved from the
    start would change the optimum it reaches) is used only where the head reads one hidden state: a weighted-sum path
    is the same, bit for bit, as in the weights."""
    task = get_task("speaker_utterance")
    labels, n_cls = _labels(tiny, task), len(tiny.speakers)
    rows = {}
    for how in ("fixed_input", "none"):
        cfg = ProbeConfig(L2Path(l2_grid=(1e-1, 1e-2), precondition=how), patience=2)
        rows[how] = train_probe(task, LayerMode("weighted_sum"), PooledSource(mj_src), labels, list(range(24)), n_cls,
                                cfg, 0)
    a, b = rows["fixed_input"], rows["none"]
    assert (a.dev_metric, a.test_metric, a.steps) == (b.dev_metric, b.test_metric, b.steps)
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)


@pytest.mark.parametrize("subset", [tuple(range(24)), tuple(i for i in range(24) if i % 3)], ids=["contiguous", "scattered"])
def test_l2_path_held_is_the_path_converted_per_evaluation(tiny, mj_src, monkeypatch, subset):  # noqa: F811
    """A subset read in place (contiguous, float32 phase) or copied once per path into each phase's dtype
    (PATH_HELD_BYTES) is the subset converted at each evaluation: the same values in the same order, so the same row
    and weights, bit for bit."""
    import downstream.path as path

    run = _weighted_sum_speaker_path(tiny, mj_src, subset)
    held = run()
    monkeypatch.setattr(path, "PATH_HELD_BYTES", 0)
    converted = run()
    assert (held.dev_metric, held.test_metric, held.steps) == (converted.dev_metric, converted.test_metric,
                                                                converted.steps)
    assert all(torch.equal(held.state[k], converted.state[k]) for k in held.state)


def test_l2_path_solves_each_point_in_float32_then_float64(tiny, mj_src, monkeypatch):  # noqa: F811
    """Every L2 point is solved in the solver's phases (downstream.solver.PHASES): float32 down to its floor, its loss
    value summed in float64, then float64 to the relative tolerance, from where the float32 phase ended; the float64
    phase decides `converged`, and `steps` counts both phases' iterations."""
    import downstream.path as path
    from downstream.solver import FLOAT32_GRAD_FLOOR

    calls = []
    real = path.solve_l2

    def spy(params, loss, penalised, l2, rtol, max_iter, floor=0.0, patience=None, precondition=None):
        values = list(loss())
        start = [p.detach().double().clone() for p in params]
        iters, ok = real(params, loss, penalised, l2, rtol, max_iter, floor=floor, patience=patience,
                         precondition=precondition)
        calls.append({"dtype": params[0].dtype, "floor": floor, "l2": l2, "value": values[0].dtype, "iters": iters,
                      "start": start, "end": [p.detach().double().clone() for p in params], "ok": ok})
        return iters, ok
    monkeypatch.setattr(path, "solve_l2", spy)
    row = _weighted_sum_speaker_path(tiny, mj_src)()
    assert [(c["dtype"], c["floor"]) for c in calls] == [(torch.float32, FLOAT32_GRAD_FLOOR), (torch.float64, 0.0)] * 2
    assert all(c["value"] == torch.float64 for c in calls)  # float32 logits, the value summed in float64
    assert calls[0]["l2"] == calls[1]["l2"] == 1e-1 and calls[2]["l2"] == calls[3]["l2"] == 1e-2
    for a, b in zip(calls, calls[1:]):  # each phase starts where the one before it ended, in its own dtype (float32 ->
        # float64 exactly; a weighted sum's float64 phase, in the head's curvature, leaves a head float32 rounds)
        assert all(torch.equal(p.to(b["dtype"]).double(), q) for p, q in zip(a["end"], b["start"]))
    assert row.steps == sum(c["iters"] for c in calls) and row.converged == all(c["ok"] for c in calls[1::2])


def _dense_natural_step(W, b, buf_W, buf_b, x, y, lr, momentum, damping):
    """One NaturalSGD step of one probe, written out densely: the gradient of the mean cross-entropy times the
    inverse of the damped softmax covariance of the minibatch (the running average's first value), then Nesterov
    momentum."""
    logits = x @ W + b
    p = logits.softmax(-1)
    r = p.clone()
    r[torch.arange(len(y)), y] -= 1
    gW, gb = x.T @ r / len(y), r.mean(0)
    F = torch.diag(p.mean(0)) - p.T @ p / len(y)
    F = F + damping * F.diagonal().mean() * torch.eye(len(F))
    nW, nb = torch.linalg.solve(F, gW.T).T, torch.linalg.solve(F, gb)
    buf_W, buf_b = momentum * buf_W + nW, momentum * buf_b + nb
    return W - lr * (nW + momentum * buf_W), b - lr * (nb + momentum * buf_b), buf_W, buf_b


def test_natural_gradient_step_is_the_dense_fisher_solve():
    """The stacked natural-gradient step of each probe is the gradient times the inverse of its softmax covariance
    (K-FAC's output factor; the input factor is the identity on whitened rows), with momentum; a probe that does not
    step keeps its weights and its running covariance."""
    g = torch.Generator().manual_seed(0)
    heads = [torch.nn.Linear(6, 5) for _ in range(3)]
    model = StackedHeads(heads, 1, mix=False, device=torch.device("cpu"))
    opt = StackedOptimizer.of(NaturalSGD(lr=0.3, momentum=0.9, damping=1e-2, fisher_decay=0.0), model)
    dense = [(h.weight.detach().T.clone(), h.bias.detach().clone(), torch.zeros(6, 5), torch.zeros(5)) for h in heads]
    for step in range(4):
        x, y = torch.randn(3, 16, 1, 6, generator=g), torch.randint(0, 5, (3, 16), generator=g)
        active = torch.tensor([True, step == 0, True])
        pos = active.nonzero().squeeze(1)
        sub = [p[pos] for p in model.params]
        logits = model.forward(x[pos], sub)
        opt.observe(logits, torch.ones(len(pos), 16, dtype=torch.bool))
        for p in model.params:
            p.grad = None
        torch.nn.functional.cross_entropy(logits.reshape(-1, 5), y[pos].reshape(-1), reduction="sum").div(16).backward()
        frozen = opt.fisher[1].clone()
        opt.step(active)
        if not active[1]:
            assert torch.equal(opt.fisher[1], frozen)
        for p in pos.tolist():
            dense[p] = _dense_natural_step(*dense[p], x[p, :, 0], y[p], 0.3, 0.9, 1e-2)
    for p in range(3):
        st = model.state_of(model.params, p)
        # float32 through an inverse whose condition number is ~1/damping: agreement to 1e-4 of the weights' size
        assert torch.allclose(st["head.weight"].T, dense[p][0], atol=1e-4, rtol=1e-4), p
        assert torch.allclose(st["head.bias"], dense[p][1], atol=1e-4, rtol=1e-4), p


def test_natural_gradient_reaches_the_regression_that_sgd_crawls_towards():
    """Many classes and informative whitened features (the speaker-per-frame case): the softmax's curvature is small
    along most directions, so SGD at a step that is stable crawls; natural-gradient SGD takes the curvature out.
    After the same 64 minibatch steps, its training loss is less than half as far above the regression's optimum
    (full-batch L-BFGS) as SGD's (measured: 0.10 against 0.27 nats, the optimum 0.35)."""
    g = torch.Generator().manual_seed(1)
    C, D, N = 100, 24, 8192
    means = 0.8 * torch.randn(C, D, generator=g)  # classes that overlap: the optimum is not at zero loss
    y = torch.randint(0, C, (N,), generator=g)
    x = means[y] + torch.randn(N, D, generator=g)
    x = (x - x.mean(0)) @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(x.T))).T  # whitened

    def loss(W, b):
        return float(torch.nn.functional.cross_entropy(x @ W + b, y))

    W_opt = torch.zeros(D, C, requires_grad=True)
    b_opt = torch.zeros(C, requires_grad=True)
    lbfgs = torch.optim.LBFGS([W_opt, b_opt], max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12,
                              line_search_fn="strong_wolfe")

    def closure():
        lbfgs.zero_grad()
        out = torch.nn.functional.cross_entropy(x @ W_opt + b_opt, y)
        out.backward()
        return out
    lbfgs.step(closure)
    optimum = loss(W_opt.detach(), b_opt.detach())

    def trained(opt_cfg):
        torch.manual_seed(0)
        model = StackedHeads([torch.nn.Linear(D, C)], 1, mix=False, device=torch.device("cpu"))
        opt = StackedOptimizer.of(opt_cfg, model)
        order = torch.Generator().manual_seed(2)
        for _ in range(4):
            for idx in torch.randperm(N, generator=order).view(-1, 512):
                logits = model.forward(x[idx][None, :, None])
                if opt.wants_curvature:
                    opt.observe(logits, torch.ones(1, 512, dtype=torch.bool))
                for p in model.params:
                    p.grad = None
                torch.nn.functional.cross_entropy(logits[0], y[idx]).backward()
                clip_per_probe(model.params, 1.0)
                opt.step(torch.ones(1, dtype=torch.bool))
        st = model.state_of(model.params, 0)
        return loss(st["head.weight"].T, st["head.bias"])

    ngd, sgd = trained(NaturalSGD()) - optimum, trained(SGD(lr=0.5)) - optimum
    assert 0 < ngd < sgd / 2, (ngd, sgd, optimum)


def test_natural_gradient_is_refused_for_a_head_it_cannot_precondition():
    mlp = StackedHeads([one_hidden_head(16)(8, 4)], 1, mix=False, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="linear head"):
        StackedOptimizer.of(NaturalSGD(), mlp)
    cfg = ProbeConfig(Minibatch(SGD())).with_fields(optimizer="ngd", lr=0.02)
    assert cfg.minibatch.optimizer == NaturalSGD(lr=0.02)
    assert cfg.to_dict()["trainer"]["optimizer"]["kind"] == "NaturalSGD"


def test_a_path_is_a_function_of_its_subset_not_of_the_order_a_seed_drew_it_in(tiny, mj_src):  # noqa: F811
    """Every seed at 100 % of the labels draws the whole split, each in its own order. The L2 path sums its examples in
    index order, so two probes on one subset reach the same bits, solved together or apart (apart, summed in the
    drawn order, the same problem rounded differently and stopped elsewhere within the tolerance)."""
    task = get_task("speaker_utterance")
    labels, n_cls = _labels(tiny, task), len(tiny.speakers)
    pooled = PooledSource(mj_src)
    n = len(mj_src.lengths("train"))
    drawn = tuple(int(i) for i in np.random.default_rng(5).permutation(n))
    # a tight tolerance down to a weak L2: hundreds of iterations, over which summed in the drawn order the solve took
    # 820 iterations against 740 in index order
    cfg = ProbeConfig(L2Path(l2_grid=tuple(10.0 ** -k for k in range(1, 9)), rtol=1e-3), patience=10)
    ordered, = train_probes(task, LayerMode("last"), pooled, labels, [ProbeSpec(tuple(range(n)), 0)], n_cls, cfg)
    shuffled, = train_probes(task, LayerMode("last"), pooled, labels, [ProbeSpec(drawn, 1)], n_cls, cfg)
    assert _key(ordered) == _key(shuffled)
    assert all(torch.equal(ordered.state[k], shuffled.state[k]) for k in ordered.state)


def test_a_streamed_store_reads_its_blocks_back_from_the_spill_with_the_same_bits(mj_src, tmp_path, monkeypatch):  # noqa: F811
    """A streamed store reads and whitens a block from the cache once and writes it to its spill file; a later request
    reads those bytes back instead (no read of the cache, no whitening): the rows are the same bits as the first
    read's and as the resident store's. A cache directory this process cannot write spills to the system's temporary
    directory; where no disk has the room there is no spill; the rows are the same."""
    disk = _on_disk(mj_src, tmp_path)
    n = int(disk.splits["train"].offsets[-1])
    layers = [0, 1]
    whiten = [mj_src.whitening()[k] for k in layers]

    def store(resident):
        return feeds.RowStore(disk, "train", layers, whiten, np.arange(n) % 7, None, resident, torch.device("cpu"),
                              torch.bfloat16, scattered=True)

    streamed, held = store(False), store(True)
    blocks = feeds.pass_order(streamed.n_blocks, 0)[0]
    first = streamed.chunk(blocks)
    assert streamed._spill is not None and set(streamed._spill.at) == set(blocks)
    reads = []
    read = feeds.RowStore._read
    monkeypatch.setattr(feeds.RowStore, "_read", lambda self, rows: reads.append(len(rows)) or read(self, rows))
    second = streamed.chunk(blocks)
    assert reads == [] and torch.equal(first.x, second.x) and torch.equal(first.y, second.y)
    resident = held.chunk(blocks)
    assert torch.equal(resident.x.index_select(0, resident.at), second.x)
    real = feeds.tempfile.TemporaryFile

    def read_only(dir=None):  # noqa: A002 (tempfile's own name)
        if dir != feeds.tempfile.gettempdir():
            raise PermissionError(13, "Permission denied", dir)
        return real(dir=dir)

    monkeypatch.setattr(feeds.tempfile, "TemporaryFile", read_only)  # a shared cache this process cannot write
    elsewhere = store(False)
    assert elsewhere._spill is not None and torch.equal(elsewhere.chunk(blocks).x, second.x)
    monkeypatch.setattr(feeds, "SPILL_SPARE", 1 << 62)  # no disk has that much room
    no_room = store(False)
    assert no_room._spill is None and torch.equal(no_room.chunk(blocks).x, second.x) and no_room.chunk(blocks).x.numel()


def test_a_weighted_sum_path_finishes_each_point_in_the_curvature(tiny, mj_src, monkeypatch):  # noqa: F811
    """L2Path.precondition "finish" (the default): each point of a weighted-sum path is solved in the weights in its
    float32 phase, as with "fixed_input", so the mix goes where the path in the weights takes it, and finishes in the
    head's curvature at that mix in its float64 phase; both reach the same optimum within the solver's tolerance."""
    import downstream.path as path

    task = get_task("speaker_utterance")
    labels, n_cls = _labels(tiny, task), len(tiny.speakers)
    seen = []
    real = path.solve_l2

    def spy(params, loss, penalised, l2, rtol, max_iter, floor=0.0, patience=None, precondition=None):
        iters, ok = real(params, loss, penalised, l2, rtol, max_iter, floor=floor, patience=patience,
                         precondition=precondition)
        seen.append((params[0].dtype, precondition is not None, iters))
        return iters, ok
    monkeypatch.setattr(path, "solve_l2", spy)
    rows, calls = {}, {}
    for how in ("finish", "fixed_input"):
        cfg = ProbeConfig(L2Path(l2_grid=(1e-2, 1e-4, 1e-6), precondition=how), patience=3)
        rows[how] = train_probe(task, LayerMode("weighted_sum"), PooledSource(mj_src), labels, list(range(24)), n_cls,
                                cfg, 0)
        calls[how], seen[:] = list(seen), []
    assert L2Path().precondition == "finish"
    assert [c[:2] for c in calls["finish"]] == [(torch.float32, False), (torch.float64, True)] * 3
    assert [c[:2] for c in calls["fixed_input"]] == [(torch.float32, False), (torch.float64, False)] * 3
    assert calls["finish"][0] == calls["fixed_input"][0]  # the first float32 phase: the same solve
    assert any(c[2] > 0 for c in calls["finish"][1::2])  # a float64 phase had work to do in the curvature
    a, b = rows["finish"], rows["fixed_input"]
    assert a.converged and b.converged
    assert (a.dev_metric, a.test_metric) == (b.dev_metric, b.test_metric)
    assert np.allclose(a.layer_weights, b.layer_weights, atol=0.02)
