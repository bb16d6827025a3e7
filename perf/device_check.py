"""The GPU check, one command for a machine with CUDA: the CUDA tests, then a short throughput measurement
(pretraining and probe-training frames/s, CPU vs CUDA), written as JSON to results/.

    .venv/bin/python perf/device_check.py                          # tests + measurement, a few minutes
    .venv/bin/python perf/device_check.py --no-tests --out results/device_check_h100.json

What it runs:
- `pytest tests/test_cuda.py`: bf16 autocast vs float32 pretraining, float32 CUDA vs CPU, hidden states and the
  harness's result rows on CUDA vs CPU, 2 nccl ranks vs 1 GPU (where there are 2 GPUs); the differences the tests
  print are recorded beside their bounds, so the bounds can be tightened from a measurement;
- the chip's bfloat16 matrix-product rate (8192^3 products), the yardstick for the pretraining figures;
- pretraining steps (forward, backward, AdamW) of `mockingjay:small` and `mockingjay:base` in the default recipe's
  shape (frames stacked by 3, Pre-LN, attention dropout 0) on random features: 2 CPU cores in float32, then CUDA in
  float32 and bfloat16 autocast, eager and compiled (pretrain.model.compiled: torch.compile, and torch.compile
  replayed as CUDA graphs), at the recipe's batch (16 x 150 stacked steps) and larger ones. Each row gives 10-ms
  frames/s, model TFLOP/s (matrix products of forward and backward) and their share of the measured bf16 rate;
- frozen-probe steps of the main job's phone_linear probe as the engine runs them (12 probes stacked into one
  model, weighted sum of 4 hidden states, its optimiser settings and batch, float16 rows resident on the device) on
  256- and 768-wide features, on 2 CPU cores and on CUDA;
- with --main-job, the main job from empty folders on CUDA (wall time, its summary line, its rows), then the
  convergence certificate of its rows on CUDA (wall time, its pass line), within --budget-s together.
The JSON is rewritten after each part, so a run cut short keeps what it measured. "2 CPU cores" is this machine's
CPU limited to 2 threads (the project's reference machine). Frames are 10-ms frames. Without CUDA it says so and
exits with status 2 before doing anything.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from core.io import atomic_write_json  # noqa: E402
from core.repro import provenance, torch_threads  # noqa: E402
from pretrain.config import DEFAULT_RECIPE, RECIPES  # noqa: E402
from pretrain.masking import mask_batch, masked_l1  # noqa: E402
from pretrain.model import MaskedAcousticModel, compiled, make_optimizer  # noqa: E402
from pretrain.train import model_configs  # noqa: E402

PRETRAIN_SPECS = ("mockingjay:small", "mockingjay:base")
CPU_THREADS = 2  # the reference machine's cores
PROBE_WIDTHS = (256, 768)  # the small and base presets' hidden size
NO_CUDA = ("perf/device_check.py: no CUDA device here (torch {torch}, CUDA build {cuda}; torch.cuda.is_available() is "
           "False): nothing was checked or measured. Run it on a machine with an NVIDIA GPU; on this one the CUDA "
           "tests skip (pytest tests/test_cuda.py -rs).")


def timed(step: Callable[[], None], device: torch.device, steps: int, warmup: int = 1) -> float:
    """Seconds per call of `step` after `warmup` calls (CUDA work waited for)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - t0) / steps


def bf16_matmul_tflops(device: str, n: int = 8192, reps: int = 10) -> float:
    """The chip's measured bfloat16 matrix-product rate: n x n x n products on random data, after 3 warm-ups."""
    dev = torch.device(device)
    a, b = (torch.randn(n, n, device=dev, dtype=torch.bfloat16) for _ in range(2))
    sec = timed(lambda: a @ b, dev, reps, warmup=3)
    return 2 * n ** 3 / sec / 1e12


def train_flops_per_frame(enc, target_dim: int, T: int) -> float:
    """Matrix-product FLOPs of one training step per model frame, as MFU figures count them: per layer the four
    attention projections, the two feed-forward matrices and attention's two T x T products, then the prediction
    head, each 3 x its forward (forward, gradient of the input, gradient of the weights); the input embedding 2 x
    (the features need no gradient). Elementwise work is not counted (it is not what a matmul rate measures)."""
    H, I, L = enc.hidden_size, enc.intermediate_size, enc.num_layers
    embed = enc.input_dim * (enc.embed_dim or H) + (H * enc.embed_dim if enc.embed_dim else 0)
    per_layer = 4 * H * H + 2 * H * I + 2 * T * H
    return 3.0 * 2 * (L * per_layer + H * H + H * target_dim) + 2.0 * 2 * embed


def pretrain_fps(spec: str, device: str, amp: torch.dtype | None, batch: int, steps: int, compile: str = "off",
                 peak_tflops: float | None = None) -> dict:
    """10-ms frames per second of pretraining steps of `spec` in the default recipe's shape, random features;
    compiled as pretrain.model.compiled does (`compile`), with the seconds the first (compiling) step took, the
    model TFLOP/s and, given the chip's bf16 rate, their share of it."""
    dev = torch.device(device)
    recipe = RECIPES[DEFAULT_RECIPE]
    _, feature, enc = model_configs(spec, recipe)
    torch.manual_seed(0)
    model = MaskedAcousticModel(enc, feature.feature_dim).to(dev).train()
    opt = make_optimizer(model, recipe.lr, recipe.betas, recipe.eps, recipe.weight_decay)
    T = recipe.crop_frames
    x = torch.randn(batch, T, feature.feature_dim)  # (B, T, D): normalised features
    lengths = torch.full((batch,), T)
    inp, mask = mask_batch(x, lengths, torch.Generator().manual_seed(0), recipe.mask_proportion, recipe.mask_span)
    x, inp, lengths, mask = (t.to(dev) for t in (x, inp, lengths, mask))

    forward = compiled(model, compile)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def step() -> None:
        with torch.autocast(dev.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            pred = forward(inp, lengths)
        masked_l1(pred, x, mask).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    step()  # compiles, when compiled
    sync()
    first = time.perf_counter() - t0
    sec = timed(step, dev, steps, warmup=2 if compile != "off" else 0)  # CUDA graphs are recorded on a later call
    frames = batch * T * feature.downsample
    tflops = train_flops_per_frame(enc, feature.feature_dim, T) * batch * T / sec / 1e12
    row = {"upstream": spec, "device": device, "dtype": "float32" if amp is None else "bfloat16", "compile": compile,
           "batch": f"{batch} x {T} x R{feature.downsample}", "steps": steps, "first_step_s": round(first, 2),
           "seconds_per_step": round(sec, 5), "frames_per_s": round(frames / sec), "model_tflops": round(tflops, 2)}
    if device == "cpu":
        row["cpu_threads"] = torch.get_num_threads()
    if peak_tflops:
        row["share_of_bf16_peak"] = round(tflops / peak_tflops, 3)
    return row


def probe_fps(width: int, device: str, steps: int, hidden_states: int = 4, probes: int = 12) -> dict:
    """Frames per second of the main job's phone_linear probe (weighted sum) as the engine trains it: `probes`
    probes stacked into one model (downstream.stacked), a minibatch each per step, gathered from rows resident on
    the device (downstream.feeds) in the cache's float16."""
    from benchmark.plan.presets import main_job
    from downstream.groups import StackedModel
    from downstream.loop import Batch
    from downstream.stacked import StackedHeads, StackedOptimizer
    from downstream.tasks import TASKS

    dev = torch.device(device)
    cfg = main_job().probe_config("phone_linear", False)
    mb = cfg.minibatch
    bs = mb.batch_size
    torch.manual_seed(0)
    heads = [TASKS["phone_linear"].head(width, 38) for _ in range(probes)]
    model = StackedHeads(heads, hidden_states, mix=True, device=dev)
    opt = StackedOptimizer.of(mb.optimizer, model)
    engine = StackedModel(model, None, TASKS["phone_linear"], opt)  # the engine's loss (no dev: never scored)
    n = 16 * bs
    x = torch.randn(n, hidden_states, width).half().to(dev)  # (rows, L, D) whitened rows, resident, as stored
    y = torch.randint(38, (n,), device=dev)
    g = torch.Generator(device=dev).manual_seed(0)
    active = torch.ones(probes, dtype=torch.bool, device=dev)
    ok = torch.ones(probes, bs, dtype=torch.bool, device=dev)
    pos = torch.arange(probes, device=dev)

    def step() -> None:
        idx = torch.randint(n, (probes * bs,), device=dev, generator=g)
        batch = Batch((x.index_select(0, idx).view(probes, bs, hidden_states, width), y[idx].view(probes, bs), ok, pos),
                      active)
        engine.zero_grad()
        engine.loss(batch).backward()
        engine.clip(mb.grad_clip)
        opt.step(active)

    sec = timed(step, dev, steps, warmup=3)
    return {"probe": "phone_linear weighted_sum", "width": width, "hidden_states": hidden_states, "device": device,
            "probes": probes, "batch_frames": bs, "steps": steps, "frames_per_s": round(probes * bs / sec)}


def _job(command: list[str], device: str, root: Path, timeout_s: float | None) -> tuple[str, str, int | None, float]:
    """run_benchmark.py `command` on `device` with every folder under `root`: (stdout, stderr, exit status or None
    when `timeout_s` stopped it, seconds)."""
    t0 = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "run_benchmark.py", *command, "--no-progress", "--device", device,
                               "--data-dir", f"{root}/data", "--results-dir", f"{root}/results",
                               "--cache-dir", f"{root}/cache", "--runs-dir", f"{root}/runs"],
                              cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
        out, err, status = done.stdout, done.stderr, done.returncode
    except subprocess.TimeoutExpired as e:
        out, err, status = (e.stdout or b"").decode(), (e.stderr or b"").decode(), None
    print(out[-3000:], err[-2000:], sep="\n", flush=True)
    return out, err, status, time.perf_counter() - t0


def main_job_seconds(device: str, workdir: Path | None = None, timeout_s: float | None = None,
                     certify: bool = True) -> dict:
    """The main job from empty folders (corpus, checkpoints' statistics, extraction, probes, report) on `device`,
    in `workdir` (kept: its results/runs.csv holds the rows) or a temporary directory: its wall time, its own
    summary line and the number of rows it wrote; then (`certify`, when it finished with time left) the
    convergence certificate of its rows, timed the same way. `timeout_s` bounds both together, recorded as such."""
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        root = Path(workdir) if workdir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        root.mkdir(parents=True, exist_ok=True)
        out, _, status, sec = _job([], device, root, timeout_s)
        runs = root / "results" / "runs.csv"
        rows = len(runs.read_text().splitlines()) - 1 if runs.is_file() else 0
        left = None if timeout_s is None else timeout_s - (time.perf_counter() - t0)
        cert = None
        if certify and status == 0 and (left is None or left > 10):
            c_out, _, c_status, c_sec = _job(["certify"], device, root, left)
            cert = {"exit_status": c_status, "timed_out_after_s": left if c_status is None else None,
                    "seconds": round(c_sec, 1), "summary": next((ln for ln in c_out.splitlines() if "rows pass" in ln),
                                                                None)}
    summary = [ln for ln in out.splitlines() if ln.startswith("done:")]
    return {"device": device, "exit_status": status, "timed_out_after_s": timeout_s if status is None else None,
            "seconds": round(sec, 1), "rows": rows, "summary": summary[-1] if summary else None,
            "log_tail": out[-1500:], "certificate": cert}


def run_tests(extra: list[str]) -> dict:
    """pytest tests/test_cuda.py: outcome counts and the differences the tests print."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-rs", "-p", "no:cacheprovider",
                               "tests/test_cuda.py", f"--junitxml={xml}", *extra],
                              cwd=ROOT, capture_output=True, text=True)
        suite = next(ET.parse(xml).getroot().iter("testsuite"), None) if xml.is_file() else None
    print(done.stdout[-4000:], done.stderr[-2000:], sep="\n", flush=True)
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")} if suite is not None else {}
    # -q -s: a test's print can follow pytest's progress dots on the same line
    measured = {m[1]: float(m[2]) for m in re.finditer(r"([A-Za-z][^\n:.]*?): largest (?:loss )?difference "
                                                       r"([-+0-9.e]+\d)", done.stdout)}
    rows = re.search(r"result rows CUDA vs CPU: (\{[^}]*\})", done.stdout)
    return {"exit_status": done.returncode, **counts, "measured_differences": measured,
            "result_rows_differences": json.loads(rows[1].replace("'", '"')) if rows else None}


def pretrain_plan(cuda_steps: int, cpu_steps: int) -> list[tuple[str, str, torch.dtype | None, int, int, str]]:
    """(upstream, device, autocast dtype, batch, steps, compile) of the pretraining rows: the CPU reference, then on
    CUDA eager vs compiled, float32 vs bfloat16, at the recipe's batch and larger (base: the batch that fills the
    chip, the figure the bf16 target is about)."""
    b = RECIPES[DEFAULT_RECIPE].batch_size
    bf = torch.bfloat16
    small, base = PRETRAIN_SPECS
    return [(small, "cpu", None, b, cpu_steps, "off"), (base, "cpu", None, b, max(1, cpu_steps // 2), "off"),
            (small, "cuda", None, b, cuda_steps, "off"), (small, "cuda", bf, b, cuda_steps, "off"),
            (small, "cuda", None, b, cuda_steps, "default"), (small, "cuda", None, b, cuda_steps, "reduce-overhead"),
            (small, "cuda", bf, b, cuda_steps, "reduce-overhead"),
            (base, "cuda", None, 4 * b, cuda_steps, "off"), (base, "cuda", bf, 4 * b, cuda_steps, "off"),
            (base, "cuda", bf, 4 * b, cuda_steps, "reduce-overhead"), (base, "cuda", bf, 16 * b, cuda_steps, "off"),
            (base, "cuda", bf, 16 * b, cuda_steps, "default"), (base, "cuda", bf, 16 * b, cuda_steps, "reduce-overhead")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "device_check.json")
    ap.add_argument("--no-tests", action="store_true", help="measure only")
    ap.add_argument("--cpu-steps", type=int, default=2, help="timed pretraining steps on the CPU (after 1 warm-up)")
    ap.add_argument("--cuda-steps", type=int, default=20, help="timed pretraining steps on CUDA")
    ap.add_argument("--probe-steps", type=int, default=50)
    ap.add_argument("--main-job", action="store_true", help="also time the main job end to end on CUDA")
    ap.add_argument("--main-job-dir", type=Path, help="where the main job writes (kept; default: a temporary folder)")
    ap.add_argument("--budget-s", type=float,
                    help="seconds this check may take in all: the main job is stopped when they are spent")
    ap.add_argument("--skip-pretrain", action="store_true", help="no pretraining rows")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print(NO_CUDA.format(torch=torch.__version__, cuda=torch.version.cuda or "none"), file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    report: dict = {"provenance": provenance("cuda"), "gpu": torch.cuda.get_device_name(0),
                    "gpus": torch.cuda.device_count(), "cuda": torch.version.cuda,
                    "cpu": platform.processor() or platform.machine(), "cpu_threads_reference": CPU_THREADS,
                    "command": " ".join([Path(sys.executable).name, *sys.argv])}

    def write(**parts) -> None:
        report.update(parts, seconds=round(time.perf_counter() - t0, 1))
        atomic_write_json(args.out, report)

    if not args.no_tests:
        write(tests=run_tests([]))
    peak = bf16_matmul_tflops("cuda") if torch.cuda.is_bf16_supported() else None
    write(bf16_matmul_tflops=None if peak is None else round(peak, 1))
    print(f"bf16 matrix products: {peak:.0f} TFLOP/s" if peak else "no bf16 on this GPU", flush=True)
    probes = []
    for width in PROBE_WIDTHS:
        for device in ("cpu", "cuda"):
            with torch_threads(CPU_THREADS):  # a CPU step is ~100x a GPU one: a fifth of the steps suffices
                probes.append(probe_fps(width, device, args.probe_steps if device == "cuda" else args.probe_steps // 5))
            print(json.dumps(probes[-1]), flush=True)
    speedups = {f"probe width {r['width']}": round(r["frames_per_s"] / c["frames_per_s"], 1) for r in probes
                if r["device"] == "cuda" for c in probes if c["device"] == "cpu" and c["width"] == r["width"]}
    write(probes=probes, cuda_over_2_cpu_cores=speedups)
    pre = []
    for spec, device, amp, batch, steps, mode in [] if args.skip_pretrain else pretrain_plan(args.cuda_steps,
                                                                                             args.cpu_steps):
        if amp is not None and not torch.cuda.is_bf16_supported():
            continue
        try:
            with torch_threads(CPU_THREADS) if device == "cpu" else contextlib.nullcontext():
                pre.append(pretrain_fps(spec, device, amp, batch, steps, mode, peak))
        except Exception as e:  # a compile mode that fails here is a finding, not the end of the check
            pre.append({"upstream": spec, "device": device, "dtype": str(amp), "batch": batch, "compile": mode,
                        "error": f"{type(e).__name__}: {str(e)[:500]}"})
        r = pre[-1]
        print(json.dumps(r), flush=True)
        torch.cuda.empty_cache()
        # the plan measures each upstream on the CPU first: its CUDA rows are read against that row
        cpu = next((c for c in pre if c["device"] == "cpu" and c["upstream"] == r["upstream"] and "frames_per_s" in c),
                   None)
        if r["device"] == "cuda" and "frames_per_s" in r and cpu:
            speedups[f"pretrain {r['upstream']} {r['dtype']} {r['compile']} batch {r['batch']}"] = round(
                r["frames_per_s"] / cpu["frames_per_s"], 1)
        write(pretrain=pre, cuda_over_2_cpu_cores=speedups)
    for k, v in speedups.items():
        print(f"CUDA / 2 CPU cores frames/s, {k}: {v}x")
    if args.main_job:
        left = None if args.budget_s is None else max(30.0, args.budget_s - (time.perf_counter() - t0))
        write(main_job=main_job_seconds("cuda", args.main_job_dir, left))
    write()
    print(f"wrote {args.out}")
    failed = report.get("tests", {}).get("exit_status", 0) != 0
    if failed:
        print("perf/device_check.py: the CUDA tests failed (see above and 'tests' in the JSON)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
