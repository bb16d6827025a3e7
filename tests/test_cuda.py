"""The GPU path, checked where there is a GPU: skipped without CUDA (`requires_cuda`), run by `perf/device_check.py`.

- pretraining in bfloat16 autocast tracks float32, float32 on CUDA tracks float32 on the CPU, and compiled steps
  (torch.compile, and its CUDA-graph mode) track eager ones;
- extraction and probes on CUDA give the CPU's result rows (the harness end to end, two result folders);
- the convergence certificate's references solved on CUDA reach the CPU's optima (both within its 1 % of |W|);
- with two or more GPUs, 2 nccl ranks train the one-GPU run (as tests/test_ddp.py checks for gloo on CPU).

Tolerances (dropout 0 throughout, so the runs differ by arithmetic alone):
- bfloat16 vs float32 losses: 0.01. bfloat16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2 %) in the
  autocast matmuls, which accumulate in float32; on the CPU's bfloat16 autocast the same 20-step run differed by
  at most 2e-4 (losses 0.65-1.0). The GPU's kernels round in other places, hence the 50x margin; a float32 model
  that never entered autocast, or a loss computed in bfloat16, would still pass it: the test also checks the
  recorded precision, and the loss is computed in float32 (pretrain.masking.masked_l1).
- float32 CUDA vs CPU losses, and compiled vs eager on CUDA: 1e-3 (torch does not use TF32 for float32 matmuls unless asked; the rest is
  summation order, ~1e-6 over these steps, as the DDP test measures for another order).
- hidden states, CUDA vs CPU: 1e-4 absolute (float32 rounding through 3 layers; the features are normalised to
  unit variance); result rows: dev/test accuracy within 0.02 (a tiny test set where one frame is ~0.3 %, and a
  6-step probe whose arithmetic differs by rounding), weighted-sum layer weights within 0.01.
These GPU bounds are reasoned, not yet measured here (no GPU in this project so far): perf/device_check.py writes
the measured differences into its JSON, and the bounds should be tightened from them.
"""
from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pretrain import PretrainConfig, run_pretraining
from core.repro import fast_bfloat16
from pretrain.train import autocast_dtype
from tests.fixtures import make_pretrain_corpus, perf_script
from upstream.checkpoint import read_meta
from upstream.transformer import EncoderConfig

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                   reason="needs a CUDA device (perf/device_check.py runs these on a GPU machine)")

ENC = EncoderConfig(hidden_size=64, num_heads=2, intermediate_size=128, num_layers=2, dropout=0.0,
                    attention_dropout=0.0)
CFG = PretrainConfig(steps=20, batch_size=3, accumulation=2, crop_frames=50, ckpt_interval=10, eval_interval=5,
                     log_interval=1, val_fraction=0.2, precision="float32", lr=1e-3)
GPU = "cuda"  # a module constant so the tests' logic can be dry-run on the CPU against itself
BF16_TOL, F32_TOL, HIDDEN_TOL, METRIC_TOL, WEIGHT_TOL = 0.01, 1e-3, 1e-4, 0.02, 0.01


def curve(ckpt: Path) -> dict[tuple[int, str], float]:
    with open(ckpt / "loss.csv") as f:
        return {(int(r["step"]), c): float(r[c]) for r in csv.DictReader(f) for c in ("train_loss", "val_loss") if r[c]}


def max_curve_diff(a: Path, b: Path) -> float:
    ca, cb = curve(a), curve(b)
    assert ca.keys() == cb.keys()
    return max(abs(ca[k] - cb[k]) for k in ca)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_pretrain_corpus(tmp_path_factory.mktemp("cuda") / "corpus", n_utts=10, seconds=(0.8, 1.2))


@requires_cuda
def test_auto_precision_is_bfloat16_autocast_on_cuda_for_wide_models():
    want = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    assert autocast_dtype(PretrainConfig(), torch.device(GPU), 768) == want
    assert autocast_dtype(PretrainConfig(), torch.device(GPU), 256) is None
    cpu = torch.bfloat16 if fast_bfloat16(torch.device("cpu")) else None
    assert autocast_dtype(PretrainConfig(), torch.device("cpu"), 768) is cpu


def test_auto_precision_rule_on_the_cpu_and_for_a_faked_gpu(monkeypatch):
    """The "auto" rule itself, without a GPU: on a CPU bfloat16 where it multiplies bfloat16 natively (AMX,
    AVX512-BF16), else float32; on CUDA bfloat16 from the threshold width up."""
    import pretrain.train
    from pretrain.train import AUTO_BF16_MIN_HIDDEN_ON_CUDA as wide

    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype(PretrainConfig(), cuda, wide) is torch.bfloat16
    assert autocast_dtype(PretrainConfig(), cuda, wide - 1) is None
    assert autocast_dtype(PretrainConfig(precision="bfloat16"), cuda, 64) is torch.bfloat16  # asked for: honoured
    for native, want in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(pretrain.train, "fast_bfloat16", lambda device, native=native: native)
        assert autocast_dtype(PretrainConfig(), torch.device("cpu"), 64) is want
        assert autocast_dtype(PretrainConfig(precision="float32"), torch.device("cpu"), 64) is None  # asked for
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype(PretrainConfig(), cuda, wide) is None


@requires_cuda
def test_bfloat16_autocast_pretraining_tracks_float32(corpus, tmp_path):
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    f32 = run_pretraining("aalbert:small", corpus, tmp_path / "f32", CFG, device=GPU, encoder=ENC,
                          show_progress=False)
    bf16 = run_pretraining("aalbert:small", corpus, tmp_path / "bf16", replace(CFG, precision="bfloat16"),
                           device=GPU, encoder=ENC, show_progress=False)
    assert read_meta(f32)["precision"] == "float32" and read_meta(bf16)["precision"] == "bfloat16"
    diff = max_curve_diff(f32, bf16)
    print(f"bfloat16 vs float32 on CUDA: largest loss difference {diff:.2e}")
    assert diff <= BF16_TOL


@requires_cuda
def test_float32_pretraining_on_cuda_tracks_the_cpu(corpus, tmp_path):
    cpu = run_pretraining("aalbert:small", corpus, tmp_path / "cpu", CFG, device="cpu", encoder=ENC,
                          show_progress=False)
    gpu = run_pretraining("aalbert:small", corpus, tmp_path / "gpu", CFG, device=GPU, encoder=ENC,
                          show_progress=False)
    diff = max_curve_diff(cpu, gpu)
    print(f"float32 CUDA vs CPU: largest loss difference {diff:.2e}")
    assert diff <= F32_TOL
    assert read_meta(cpu)["pretrain_frames"] == read_meta(gpu)["pretrain_frames"]  # same data, same order


@requires_cuda
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_pretraining_on_cuda_tracks_eager(corpus, tmp_path, mode):
    cfg = replace(CFG, crop_frames=150)  # utterances of 80-120 frames: every compiled batch is padded to 150
    eager = run_pretraining("aalbert:small", corpus, tmp_path / "eager", cfg, device=GPU, encoder=ENC,
                            show_progress=False, compile="off")
    comp = run_pretraining("aalbert:small", corpus, tmp_path / mode, cfg, device=GPU, encoder=ENC,
                           show_progress=False, compile=mode)
    assert read_meta(comp)["compile"] == mode
    diff = max_curve_diff(eager, comp)
    print(f"compiled ({mode}) vs eager float32 on CUDA: largest loss difference {diff:.2e}")
    assert diff <= F32_TOL


@requires_cuda
def test_hidden_states_on_cuda_match_the_cpu():
    from upstream.features import FeatureConfig
    from upstream.registry import build_upstream

    model = build_upstream("aalbert_random", feature=FeatureConfig(norm="utterance")).eval()  # no corpus statistics
    wav = 0.1 * torch.randn(3, 24000, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([24000, 20000, 9000])
    with torch.no_grad():
        cpu, n_cpu = model(wav, lengths)
        gpu, n_gpu = model.to(GPU)(wav.to(GPU), lengths.to(GPU))
    assert torch.equal(n_cpu, n_gpu.cpu()) and len(cpu) == len(gpu)
    diff = max(float((a - b.cpu())[:, : int(n_cpu.min())].abs().max()) for a, b in zip(cpu, gpu))
    print(f"hidden states CUDA vs CPU: largest difference {diff:.2e}")
    assert diff <= HIDDEN_TOL


@requires_cuda
def test_certificate_references_on_cuda_reach_the_cpu_optima():
    from benchmark.report.convergence import fit_reference

    g = torch.Generator().manual_seed(3)
    x = torch.randn(6000, 16, generator=g)
    y = (x @ torch.randn(16, 5, generator=g) + torch.randn(6000, 5, generator=g)).argmax(-1)
    cut = ((0, 4000), (4000, 5000), (5000, 6000))
    devices = {"cpu": "cpu", "gpu": GPU}
    sols: dict = {k: {} for k in devices}
    refs = {k: fit_reference(*[(x[a:b].to(dev), y[a:b].to(dev)) for a, b in cut], 5, solutions=sols[k])
            for k, dev in devices.items()}
    assert refs["gpu"].converged and refs["gpu"].l2 == refs["cpu"].l2
    assert abs(refs["gpu"].test - refs["cpu"].test) <= 2e-3  # 2 of 1,000 test examples
    for l2, (W, _) in sols["gpu"].items():  # each within 1 % of |W| of the same optimum
        assert W.device.type == torch.device(GPU).type
        assert float((W.cpu() - sols["cpu"][l2][0]).norm()) <= 0.02 * float(W.norm())


@requires_cuda
def test_extraction_and_probes_on_cuda_give_the_cpu_rows(tmp_path):
    diffs = harness_rows_differ(tmp_path, "cpu", GPU)
    print(f"result rows CUDA vs CPU: {diffs}")
    assert diffs["metric"] <= METRIC_TOL and diffs["layer_weights"] <= WEIGHT_TOL


def harness_rows_differ(tmp_path: Path, dev_a: str, dev_b: str) -> dict[str, float]:
    """The harness on a tiny corpus on two devices (own caches and results); the largest differences of their rows."""
    import benchmark.run.runner as runner
    from benchmark.plan.config import BenchmarkConfig
    from benchmark.record.results import read_rows
    from downstream.config import AdamW, Minibatch, ProbeConfig
    from tests.fixtures import make_tiny_corpus

    root = tmp_path / "corpus"
    make_tiny_corpus(root, n_speakers=3, per_speaker={"train": 4, "dev": 1, "test": 1})
    out = {}
    for dev in (dev_a, dev_b):
        dev_dir = tmp_path / dev if dev_a != dev_b else tmp_path / f"{dev}-{len(out)}"
        cfg = BenchmarkConfig(corpus=str(root), upstreams=("mel", "aalbert_random"),
                              tasks=("phone_linear", "speaker_utterance"), modes="last,weighted_sum",
                              fractions=(1.0,), seeds=1,
                              probe=ProbeConfig(Minibatch(AdamW(lr=1e-2), eval_every=3, batch_size=4), max_steps=6),
                              results_dir=dev_dir / "results", cache_dir=dev_dir / "cache",
                              runs_dir=tmp_path / "runs", progress=False, report=False, device=dev)
        runner.run_benchmark(cfg, log=lambda *_: None)
        out[len(out)] = {r["run_id"]: r for r in read_rows(dev_dir / "results" / "runs.csv")}
    a, b = out[0], out[1]
    assert a.keys() == b.keys() and len(a) == 6  # mel: last; aalbert_random: last, weighted_sum; x 2 tasks
    metric = max(abs(float(a[k][c]) - float(b[k][c])) for k in a for c in ("dev_metric", "test_metric"))
    lw = [abs(float(x) - float(y)) for k in a if a[k]["layer_weights"]
          for x, y in zip(a[k]["layer_weights"].split(";"), b[k]["layer_weights"].split(";"))]
    return {"metric": metric, "layer_weights": max(lw, default=0.0)}


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices (one nccl rank per GPU)")
def test_two_nccl_ranks_train_the_one_gpu_run(tmp_path):
    from tests.test_ddp import CFG as DDP_CFG, MICRO, SPEC, assert_same_run, run_ranks

    corpus = make_pretrain_corpus(tmp_path / "corpus", n_utts=10, seconds=(0.8, 1.2))
    one = run_pretraining(SPEC, corpus, tmp_path / "one", DDP_CFG, device="cuda:0", encoder=MICRO,
                          show_progress=False)
    run_ranks(2, tmp_path / "store", corpus, tmp_path / "two", device="cuda")
    assert_same_run(one, tmp_path / "two")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_device_check_without_cuda_says_so_and_exits_2():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "perf/device_check.py"], cwd=Path(__file__).resolve().parent.parent,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stdout == ""
    assert "no CUDA device here" in done.stderr and "nothing was checked" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_device_check_measurements_run_on_the_cpu():
    """The measuring code of perf/device_check.py, tiny, on the CPU: it must work the day a GPU is there."""
    check = perf_script("device_check")
    row = check.pretrain_fps("aalbert:small", "cpu", None, batch=2, steps=1, peak_tflops=1.0)
    assert row["frames_per_s"] > 0 and row["batch"] == "2 x 150 x R3" and row["share_of_bf16_peak"] > 0
    assert check.probe_fps(16, "cpu", steps=2)["frames_per_s"] > 0


def test_device_check_counts_the_flops_that_torch_counts():
    """perf/device_check.py's FLOPs per frame equal torch's FlopCounterMode on a real step, less attention's T x T
    products (the CPU's fused attention kernel is not one FlopCounterMode counts; MFU counts them)."""
    from torch.utils.flop_counter import FlopCounterMode

    from pretrain.config import DEFAULT_RECIPE, RECIPES
    from pretrain.masking import masked_l1
    from pretrain.model import MaskedAcousticModel
    from pretrain.train import model_configs

    check = perf_script("device_check")
    _, feature, enc = model_configs("mockingjay:small", RECIPES[DEFAULT_RECIPE])
    model = MaskedAcousticModel(enc, feature.feature_dim)
    B, T = 2, 40
    x = torch.randn(B, T, feature.feature_dim)
    with FlopCounterMode(display=False) as counter:
        masked_l1(model(x, torch.tensor([T, T - 5])), x, torch.ones(B, T, dtype=torch.bool)).backward()
    attention = 3 * 2 * enc.num_layers * 2 * T * enc.hidden_size
    assert check.train_flops_per_frame(enc, feature.feature_dim, T) - attention == counter.get_total_flops() / (B * T)


def test_device_check_main_writes_every_part_and_survives_a_failing_mode(tmp_path, monkeypatch):
    """perf/device_check.py's main() end to end with the GPU faked by the CPU (the measuring functions on tiny
    sizes, "cuda" read as "cpu"): every part lands in the JSON, speedups are CUDA rows over the 2-core rows, a
    compile mode that raises is recorded as an error row, and the main job's time budget is passed on."""
    import json

    check = perf_script("device_check")
    for name, value in (("is_available", lambda: True), ("is_bf16_supported", lambda: True),
                        ("get_device_name", lambda *a: "fake GPU"), ("device_count", lambda: 1),
                        ("empty_cache", lambda: None), ("synchronize", lambda *a: None)):
        monkeypatch.setattr(torch.cuda, name, value)
    cpu = lambda d: "cpu" if d == "cuda" else d  # noqa: E731
    real_pre, real_probe = check.pretrain_fps, check.probe_fps

    def pre(spec_, device, amp, batch, steps, mode="off", peak=None):
        if mode == "reduce-overhead":
            raise RuntimeError("CUDA graphs need a GPU")
        with monkeypatch.context() as m:  # torch.manual_seed would seed the (absent) GPU too
            m.setattr(torch.cuda, "is_available", lambda: False)
            row = real_pre("aalbert:small", cpu(device), amp, 2, 1, "off", peak)
        return {**row, "upstream": spec_, "device": device, "compile": mode}

    monkeypatch.setattr(check, "pretrain_fps", pre)
    monkeypatch.setattr(check, "probe_fps", lambda w, d, s: {**real_probe(16, cpu(d), 2), "width": w, "device": d})
    monkeypatch.setattr(check, "bf16_matmul_tflops", lambda d: 1.0)
    monkeypatch.setattr(check, "provenance", lambda d: {"device": "fake GPU"})
    budgets = []
    monkeypatch.setattr(check, "main_job_seconds", lambda d, w, t: budgets.append(t) or {"seconds": 1.0})
    out = tmp_path / "check.json"
    assert check.main(["--no-tests", "--out", str(out), "--main-job", "--budget-s", "1000"]) == 0
    report = json.loads(out.read_text())
    assert report["gpu"] == "fake GPU" and report["bf16_matmul_tflops"] == 1.0 and report["main_job"]["seconds"] == 1.0
    assert {r["width"] for r in report["probes"]} == set(check.PROBE_WIDTHS) and len(report["probes"]) == 4
    errors = [r for r in report["pretrain"] if "error" in r]
    assert errors and all(r["compile"] == "reduce-overhead" and "CUDA graphs" in r["error"] for r in errors)
    assert any(r["device"] == "cpu" for r in report["pretrain"]) and "probe width 256" in report["cuda_over_2_cpu_cores"]
    assert any(k.startswith("pretrain mockingjay:base float32 off") for k in report["cuda_over_2_cpu_cores"])
    assert {r["dtype"] for r in report["pretrain"] if "error" not in r} == {"float32", "bfloat16"}
    assert all(r["share_of_bf16_peak"] > 0 for r in report["pretrain"] if "error" not in r)
    assert len(budgets) == 1 and 30 <= budgets[0] <= 1000
