"""Data-parallel pretraining: 2 gloo ranks on CPU train the run that one process trains with the same global batch;
only rank 0 writes; a job killed with SIGKILL resumes with another number of ranks; torchrun launches the CLI.

The ranks run as real processes (torch.multiprocessing, a `file://` store in the test's folder, or torchrun
--standalone, which picks its own port), with short collective timeouts and a deadline on the whole job, so a rank
that hangs fails the test instead of stalling the suite. The model has dropout 0 here: with dropout each rank draws
its own masks (pretrain.distributed.dropout_seed), so the runs would differ by design.

Tolerance. The two runs compute the same sums in another order and shape (each rank's 1-2 utterances instead of 3,
padding trimmed, gradients added across ranks by the all-reduce, 1 thread instead of 2): float32 rounding, ~1e-7
relative per operation. Measured over these 8 AdamW steps (lr 1e-3): losses equal to the CSV's 5 decimals (one
step differs by 1e-5 in the last digit), weights within 4e-8 except the head's output bias, 2.3e-5: L1's gradient
is sign(prediction - target), so an element predicted within rounding of its target flips its share. The test
allows 1e-4 for both, 4x the worst measured and 10x below one update (AdamW moves an element by about lr per step).
What it guards against is far larger: weighting the ranks' mean losses equally (a mean of rank means, shares of 2
and 1 utterances) moved weights by 7e-3 and the loss by 0.04 in the same 8 steps.
"""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pretrain import PretrainConfig, run_pretraining
from pretrain.distributed import Ranks, launched_with_ranks, local_share, shutdown
from tests.fixtures import make_pretrain_corpus
from upstream.checkpoint import load_checkpoint, read_meta
from upstream.registry import load_upstream
from upstream.transformer import EncoderConfig

ROOT = Path(__file__).resolve().parent.parent
# Pre-LN as the default recipe: its output LayerNorms of the hidden states before the last get no gradient in
# pretraining, which DDP must be told about (pretrain.distributed.wrap)
MICRO = EncoderConfig(hidden_size=32, num_heads=2, intermediate_size=64, num_layers=2, dropout=0.0,
                      attention_dropout=0.0, pre_layer_norm=True)
# batch 3: shares of 2 and 1 utterances on 2 ranks; 8 training utterances make every epoch end with a batch of 2
# (one utterance per rank; with 3 ranks one rank has none). Accumulation 2: DDP's no_sync on the first micro-batch.
CFG = PretrainConfig(steps=8, batch_size=3, accumulation=2, crop_frames=50, ckpt_interval=2, eval_interval=4,
                     log_interval=1, val_fraction=0.2, precision="float32", lr=1e-3)
SPEC = "aalbert:small"
TIMEOUT_S = 60  # per collective; a whole job gets JOB_DEADLINE_S
JOB_DEADLINE_S = 300
LOSS_TOL = WEIGHT_TOL = 1e-4


def _rank_main(rank: int, world: int, store: str, corpus: str, out: str, resume: bool, kill_at_step: int | None,
               device: str) -> None:
    """One rank (a module-level function: torch.multiprocessing imports it in the child): gloo on the CPU, or nccl
    with GPU `rank` (tests/test_cuda.py)."""
    torch.set_num_threads(1)
    if device == "cuda":
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", init_method=f"file://{store}",
                            rank=rank, world_size=world, timeout=timedelta(seconds=TIMEOUT_S))
    finished = False
    try:
        import pretrain.train as train
        import upstream.checkpoint as checkpoint

        if rank != 0:  # only rank 0 writes: any write from another rank fails the job
            def forbidden(*a, **k):
                raise AssertionError(f"rank {rank} wrote a checkpoint or log")
            train.save_training_checkpoint = train._write_log = forbidden
        if kill_at_step is not None and rank == 0:  # SIGKILL the whole job between a save's tensors and its JSON
            real = checkpoint.atomic_write_json

            def dies(path, obj, *a, **k):
                if obj.get("step") == kill_at_step:
                    os.killpg(os.getpgrp(), signal.SIGKILL)
                return real(path, obj, *a, **k)
            checkpoint.atomic_write_json = dies
        run_pretraining(SPEC, corpus, Path(out), CFG, resume=resume, device=device, encoder=MICRO, show_progress=False)
        finished = True
    finally:
        # as the CLI leaves: after a normal end, once every rank has arrived (a rank tearing its gloo connections
        # down while rank 0 still writes the last checkpoint can abort another rank with SIGABRT)
        shutdown(synchronise=finished)


def run_ranks(world: int, store: Path, corpus: Path, out: Path, resume: bool = False,
              kill_at_step: int | None = None, device: str = "cpu") -> None:
    """Run the job on `world` ranks (gloo on the CPU; device "cuda": nccl, one GPU each); fail (killing the ranks)
    past the deadline."""
    ctx = mp.start_processes(_rank_main, args=(world, str(store), str(corpus), str(out), resume, kill_at_step, device),
                             nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + JOB_DEADLINE_S
    while not ctx.join(timeout=2):  # raises if a rank failed (after terminating the others)
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise TimeoutError(f"{world}-rank job still running after {JOB_DEADLINE_S} s")


def rows(ckpt: Path) -> dict[int, dict[str, str]]:
    with open(ckpt / "loss.csv") as f:
        got = [int(r["step"]) for r in csv.DictReader(f)]
    assert len(got) == len(set(got)), f"a step logged twice in {ckpt / 'loss.csv'}: {got}"
    with open(ckpt / "loss.csv") as f:
        return {int(r["step"]): r for r in csv.DictReader(f)}


def assert_same_run(ref: Path, got: Path, tol: float = LOSS_TOL) -> None:
    """Same loss curve (every step's train loss, every held-out loss, frames) and same final weights."""
    a, b = rows(ref), rows(got)
    assert sorted(a) == sorted(b) == list(range(CFG.steps + 1))
    for s in a:
        assert a[s]["frames"] == b[s]["frames"] and a[s]["epoch"] == b[s]["epoch"], s
        for col in ("train_loss", "val_loss"):
            if a[s][col] or b[s][col]:
                assert abs(float(a[s][col]) - float(b[s][col])) <= tol, (s, col, a[s][col], b[s][col])
    wa, wb = load_checkpoint(ref)[1]["model"], load_checkpoint(got)[1]["model"]
    assert wa.keys() == wb.keys()
    diffs = {}
    for k in wa:
        diffs[k] = float((wa[k] - wb[k]).abs().max())
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= WEIGHT_TOL, f"{worst} differs by {diffs[worst]:.2e}: {diffs}"
    wav, n = torch.randn(2, 16000, generator=torch.Generator().manual_seed(0)), torch.tensor([16000, 12000])
    with torch.no_grad():
        ha, _ = load_upstream(ref).eval()(wav, n)
        hb, _ = load_upstream(got).eval()(wav, n)
    assert max(float((x - y).abs().max()) for x, y in zip(ha, hb)) <= WEIGHT_TOL


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A tiny corpus and its one-process run (the reference every multi-rank run must match)."""
    root = tmp_path_factory.mktemp("ddp")
    corpus = make_pretrain_corpus(root / "corpus", n_utts=10, seconds=(0.8, 1.2))
    ref = run_pretraining(SPEC, corpus, root / "one", CFG, device="cpu", encoder=MICRO, show_progress=False)
    return corpus, ref


def test_two_gloo_ranks_train_the_one_process_run(job, tmp_path):
    corpus, ref = job
    run_ranks(2, tmp_path / "store", corpus, tmp_path / "two")
    assert_same_run(ref, tmp_path / "two")
    meta, one = read_meta(tmp_path / "two"), read_meta(ref)
    assert meta["world_size"] == 2 and "world_size" not in one and meta["complete"]
    assert meta["pretrain_frames"] == one["pretrain_frames"] and meta["val_baselines"] == one["val_baselines"]
    assert rows(tmp_path / "two")[0]["val_loss"] == rows(ref)[0]["val_loss"]  # held-out loss, same weights: equal


def test_killed_job_resumes_on_another_number_of_ranks(job, tmp_path):
    """SIGKILL to every process of a 2-rank job while rank 0 writes step 6 (tensors written, JSON not yet), then the
    run finished by 3 ranks (one of them without an utterance in the epochs' last batches) is the one-process run."""
    corpus, ref = job
    out = tmp_path / "ckpt"
    driver = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.test_ddp import run_ranks; "
              f"from pathlib import Path; run_ranks(2, Path({str(tmp_path / 'store1')!r}), Path({str(corpus)!r}), "
              f"Path({str(out)!r}), kill_at_step=6)")
    proc = subprocess.run([sys.executable, "-c", driver], start_new_session=True, timeout=JOB_DEADLINE_S,
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    meta = read_meta(out)
    assert meta["step"] == 4 and not meta["complete"]  # the last complete checkpoint
    assert len(list(out.glob("model-*.safetensors"))) == 2  # step 6's tensors, which no checkpoint.json names
    run_ranks(3, tmp_path / "store2", corpus, out, resume=True)
    assert read_meta(out)["complete"] and read_meta(out)["world_size"] == 3
    assert len(list(out.glob("*.safetensors"))) == 2  # model + train of step 8; the orphans are gone
    assert_same_run(ref, out)


def test_torchrun_launches_the_cli_and_one_process_resumes_it(job, tmp_path):
    corpus, _ = job
    flags = ["--upstream", "mockingjay:small", "--corpus", str(corpus), "--out", str(tmp_path / "ckpt"), "--recipe",
             "mainjob", "--steps", "4", "--batch-size", "4", "--crop-frames", "40", "--eval-interval", "2",
             "--ckpt-interval", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "pretrain", *flags, "--stop-at-step", "2", "--dist-timeout", str(TIMEOUT_S)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=JOB_DEADLINE_S)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("checkpoint: ") == 1 and "(2 ranks)" in two.stdout  # rank 0 alone reports
    meta = read_meta(tmp_path / "ckpt")
    assert meta["world_size"] == 2 and meta["step"] == 2 and not meta["complete"]
    one = subprocess.run([sys.executable, "-m", "pretrain", *flags, "--resume"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=JOB_DEADLINE_S)
    assert one.returncode == 0, one.stderr[-3000:]
    meta = read_meta(tmp_path / "ckpt")
    assert meta["complete"] and meta["step"] == 4 and "world_size" not in meta
    assert sorted(rows(tmp_path / "ckpt")) == [0, 2, 4]


def test_local_share_splits_the_global_batch_and_its_loss():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 9, 3, generator=g)
    lengths = torch.tensor([9, 8, 7, 9, 4])
    mask = torch.rand(5, 9, generator=g) < 0.4
    mask &= torch.arange(9) < lengths[:, None]
    shares = [local_share((x, lengths, x, mask), Ranks(r, 2)) for r in range(2)]
    (x0, l0, _, m0), w0 = shares[0]
    (x1, l1, _, m1), w1 = shares[1]
    assert l0.tolist() == [9, 7, 4] and l1.tolist() == [8, 9] and x1.shape[1] == 9 and x0.shape[1] == 9
    assert (w0 + w1) / 2 == pytest.approx(1.0)  # the weighted rank means average to the global mean
    assert w0 == pytest.approx(2 * int(m0.sum()) / int(mask.sum()))
    (_, l5, _, _), w5 = local_share((x, lengths, x, mask), Ranks(5, 6))  # more ranks than utterances
    assert w5 == 0.0 and l5.tolist() == [9]
    (_, l1b, _, m1b), _ = local_share((x[:2], lengths[:2], x[:2], mask[:2]), Ranks(1, 2))
    assert l1b.tolist() == [8] and m1b.shape[1] == 8  # padding trimmed to the share's longest utterance


def test_launch_detection(monkeypatch):
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert launched_with_ranks() == 1  # no torchrun: one process, torch.distributed untouched
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert launched_with_ranks() == 1  # WORLD_SIZE alone is not torchrun
    monkeypatch.setenv("RANK", "2")
    assert launched_with_ranks() == 4
